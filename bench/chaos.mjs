// `npm run chaos`: faults injected under a steady load, one report.
//
// Starts its own redis-server (loopback, free port, AOF with appendfsync everysec, DEBUG enabled) and
// two provider instances (bench/chaos-instance.mjs, compiled package from dist/), signs sessions in
// through the real authorization endpoint, and keeps a steady mix going: refreshes for the granted
// API (rotation on), MRRT exchanges for a policy-only API, and policy writes with If-Match (what the
// admin API does, from an admin connection of its own). Then, in turn, it injects: a Redis restart,
// the pub/sub connections killed (CLIENT KILL TYPE pubsub), a slow Redis (DEBUG SLEEP), a burst of
// policy edits, and an instance killed and started again. Per fault it reports requests, non-OAuth
// errors (no HTTP answer, a timeout, or an answer that is not an OAuth JSON error), the 5xx window,
// the time to recover, the policy staleness after recovery (a policy write → every instance applies
// it), and refresh tokens lost, split into tokens in flight at the fault and the others (which must
// be 0). Exits 1 when any fault produced a non-OAuth error (besides connections cut by killing the
// instance that held them), lost a token not in flight, did not recover, or an instance saw an
// unhandled rejection. Loopback only, bounded in time and in requests.
//
// Options: --quick (CI: short phases), --workers N (default 6), --max-requests N (default 100000),
// --sleep S (DEBUG SLEEP seconds, default 2), --burst N (policy edits, default 200; 100 with --quick),
// --json (the report as JSON on stdout, progress on stderr).
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Redis } from 'ioredis';
import * as jose from 'jose';

import { RedisPolicyStore } from '../dist/index.js';
import { CLIENTS as FIXTURE_CLIENTS } from '../test/support/provider-fixture.mjs';

const { AbortSignal } = globalThis;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const HOST = '127.0.0.1';
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(`--${name}`);
const number = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  if (i === -1) return fallback;
  const value = Number(argv[i + 1]);
  if (!Number.isFinite(value) || value <= 0) throw new TypeError(`--${name} must be a positive number`);
  return value;
};
const QUICK = flag('quick');
const JSON_OUT = flag('json');
const WORKERS = number('workers', 6);
const MAX_REQUESTS = number('max-requests', 100_000);
const SLEEP_SECONDS = number('sleep', 2);
const BURST = number('burst', QUICK ? 100 : 200);
const BASELINE_MS = QUICK ? 2000 : 5000;
const CLEAN_MS = QUICK ? 1500 : 3000;
const GIVE_UP_MS = 45_000;
const REQUEST_TIMEOUT_MS = 5000;
const PAUSE_MS = 5;

const log = (line) => process.stderr.write(`[chaos] ${line}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const API = { A: 'https://api-a.example.com', B: 'https://api-b.example.com', C: 'https://api-c.example.com', ADMIN: 'https://admin.example.com' };
const RESOURCE_SERVERS = {
  [API.A]: { scope: 'a:read a:write', accessTokenFormat: 'jwt' },
  [API.B]: { scope: 'b:read b:write', accessTokenFormat: 'jwt' },
  [API.C]: { scope: 'c:read', accessTokenFormat: 'jwt' },
  [API.ADMIN]: { scope: 'admin:write', accessTokenFormat: 'jwt' },
};
const CLIENTS = {
  app: FIXTURE_CLIENTS.app,
  probe: {
    client_id: 'probe',
    client_secret: 'probe-secret-probe-secret-probe-s',
    first_party: true,
    redirect_uris: ['https://probe.example.com/cb'],
    token_endpoint_auth_method: 'client_secret_post',
  },
};
const APP_POLICIES = [[{ audience: API.B, scope: ['b:read'] }], [{ audience: API.B, scope: ['b:read', 'b:write'] }]];
const PROBE_WITH_C = [
  { audience: API.B, scope: ['b:read'] },
  { audience: API.C, scope: ['c:read'] },
];
const PROBE_WITHOUT_C = [{ audience: API.B, scope: ['b:read'] }];

const freePort = () =>
  new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });

// ---------------------------------------------------------------------------------------------
// Redis and provider processes

const children = new Set();
process.once('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

const redisDir = mkdtempSync(path.join(os.tmpdir(), 'mrrt-chaos-'));
const redisPort = await freePort();
const redisUrl = `redis://${HOST}:${redisPort}`;
let redisChild;

async function redisAnswers() {
  const probe = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0, connectTimeout: 300, retryStrategy: () => null });
  probe.on('error', () => {});
  try {
    await probe.connect();
    return (await probe.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    probe.disconnect();
  }
}

async function startRedis() {
  redisChild = spawn(
    'redis-server',
    [
      '--port',
      String(redisPort),
      '--bind',
      HOST,
      '--dir',
      redisDir,
      '--save',
      '',
      '--appendonly',
      'yes',
      '--appendfsync',
      'everysec',
      '--enable-debug-command',
      'local',
      '--protected-mode',
      'yes',
    ],
    { stdio: 'ignore' },
  );
  children.add(redisChild);
  redisChild.once('exit', () => children.delete(redisChild));
  for (let i = 0; i < 200; i += 1) {
    if (await redisAnswers()) return;
    await sleep(25);
  }
  throw new Error('redis-server did not start');
}

/** SHUTDOWN (the AOF is written and fsynced), then the same server again on the same port and data. */
async function restartRedis() {
  const exited = new Promise((resolve) => redisChild.once('exit', resolve));
  await admin.call('SHUTDOWN').catch(() => {});
  await exited;
  await startRedis();
}

const issuer = 'http://chaos.mrrt.test';
const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const jwks = { keys: [{ ...(await jose.exportJWK(privateKey)), kid: 'chaos', alg: 'RS256', use: 'sig' }] };
const run = randomBytes(4).toString('hex');
const instanceConfig = {
  issuer,
  jwks,
  cookieKeys: ['a-chaos-cookie-key'],
  redisUrl,
  adapterPrefix: `chaos-${run}:`,
  storePrefix: `chaos:{${run}}:`,
  clients: Object.values(CLIENTS),
  resourceServers: RESOURCE_SERVERS,
  skipConsent: [API.A, API.B, API.C],
  denyList: [API.ADMIN],
};

/** { name, url, child, alive } */
const instances = [];

function startInstance(name) {
  const child = spawn(process.execPath, [path.join(ROOT, 'bench', 'chaos-instance.mjs')], {
    cwd: ROOT,
    env: { ...process.env, CHAOS_INSTANCE: JSON.stringify({ ...instanceConfig, name }) },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`instance ${name} did not start:\n${stderr}`));
    }, 20_000);
    let out = '';
    const onData = (chunk) => {
      out += chunk;
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (!line) return;
      child.stdout.off('data', onData);
      child.stdout.resume();
      clearTimeout(timer);
      const instance = { name, url: `http://${HOST}:${JSON.parse(line).port}`, child, alive: true };
      child.once('exit', () => {
        instance.alive = false;
        children.delete(child);
      });
      resolve(instance);
    };
    child.stdout.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`instance ${name} exited (${code}):\n${stderr}`));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// HTTP: sign-in and token requests

const pathOf = (location) => {
  const { pathname, search } = new URL(location, issuer);
  return pathname + search;
};

/** Signs `sub` in at `base` through the authorization endpoint and the interaction routes (code + PKCE). */
async function signIn(base, client, sub) {
  const jar = new Map();
  const call = async (url, init = {}) => {
    const res = await fetch(`${base}${url}`, {
      ...init,
      redirect: 'manual',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      headers: { ...(init.headers ?? {}), cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') },
    });
    for (const cookie of res.headers.getSetCookie()) {
      const [pair] = cookie.split(';');
      const eq = pair.indexOf('=');
      const value = pair.slice(eq + 1);
      if (value) jar.set(pair.slice(0, eq), value);
      else jar.delete(pair.slice(0, eq));
    }
    return res;
  };
  const expectRedirect = (res, what) => {
    if (res.status !== 303 && res.status !== 302) throw new Error(`${what}: ${res.status}`);
    return pathOf(res.headers.get('location'));
  };
  const verifier = randomBytes(32).toString('base64url');
  const query = new URLSearchParams({
    client_id: client.client_id,
    response_type: 'code',
    scope: 'openid offline_access a:read',
    redirect_uri: client.redirect_uris[0],
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256',
    prompt: 'consent',
    state: 'st',
    resource: API.A,
  });
  let next = expectRedirect(await call(`/auth?${query}`), 'authorization request');
  next = expectRedirect(await call(`${next}/login?sub=${sub}`, { method: 'POST' }), 'login');
  next = expectRedirect(await call(next), 'resume after login');
  next = expectRedirect(await call(`${next}/consent`, { method: 'POST' }), 'consent');
  const callback = (await call(next)).headers.get('location') ?? '';
  const code = new URL(callback, issuer).searchParams.get('code');
  if (!code) throw new Error(`no code in ${callback}`);
  const res = await fetch(`${base}/token`, {
    method: 'POST',
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: client.redirect_uris[0],
      code_verifier: verifier,
      client_id: client.client_id,
      client_secret: client.client_secret,
      resource: API.A,
    }),
  });
  const body = await res.json();
  if (res.status !== 200 || !body.refresh_token) throw new Error(`code exchange: ${res.status} ${JSON.stringify(body)}`);
  return body.refresh_token;
}

/** A refresh-token request. `status` 0: no HTTP answer (connection error or timeout); `oauth`: an OAuth JSON error body. */
async function tokenRequest(base, client, refreshToken, params) {
  try {
    const res = await fetch(`${base}/token`, {
      method: 'POST',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      body: new URLSearchParams({
        grant_type: 'refresh_token',
        refresh_token: refreshToken,
        client_id: client.client_id,
        client_secret: client.client_secret,
        ...params,
      }),
    });
    const text = await res.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    const oauth = res.status === 200 ? typeof body?.refresh_token === 'string' : typeof body?.error === 'string';
    return { status: res.status, error: body?.error ?? '', oauth, body: body ?? {} };
  } catch (err) {
    return { status: 0, error: err.name === 'TimeoutError' ? 'timeout' : (err.cause?.code ?? err.name), oauth: false, body: {} };
  }
}

// ---------------------------------------------------------------------------------------------
// Load

/** Every request of the current phase: { start, end, instance, op, status, error, oauth, cut } */
let samples = [];
let totalRequests = 0;
let stopLoad = false;
/** When the current fault was injected (Infinity before), and which instance it killed. */
let fault = { at: Number.POSITIVE_INFINITY, killed: undefined };
const tokens = { lost: 0, inFlight: 0 };
let cursor = 0;

const aliveInstances = () => instances.filter((instance) => instance.alive);
const pick = () => {
  const alive = aliveInstances();
  cursor = (cursor + 1) % Math.max(alive.length, 1);
  return alive[cursor];
};

async function signInSomewhere(client, sub) {
  for (;;) {
    const instance = pick();
    try {
      if (instance) return await signIn(instance.url, client, sub);
    } catch {
      /* a fault is going on: try again */
    }
    if (stopLoad) throw new Error('stopped');
    await sleep(100);
  }
}

async function worker(id) {
  let token = await signInSomewhere(CLIENTS.app, `user-${id}`);
  let uncertain = false;
  for (let i = 0; !stopLoad && totalRequests < MAX_REQUESTS; i += 1) {
    const instance = pick();
    if (!instance) {
      await sleep(20);
      continue;
    }
    const op = i % 2 === 0 ? 'mrrt' : 'refresh';
    const start = Date.now();
    const res = await tokenRequest(instance.url, CLIENTS.app, token, op === 'mrrt' ? { audience: API.B } : { resource: API.A });
    const end = Date.now();
    totalRequests += 1;
    const cut = res.status === 0 && fault.killed === instance;
    samples.push({ start, end, instance: instance.name, op, status: res.status, error: res.error, oauth: res.oauth, cut });
    if (start <= fault.at && end >= fault.at) uncertain = true;
    if (res.status === 200) {
      token = res.body.refresh_token;
      uncertain = false;
    } else if (res.status === 400 && res.error === 'invalid_grant') {
      if (uncertain) tokens.inFlight += 1;
      else tokens.lost += 1;
      token = await signInSomewhere(CLIENTS.app, `user-${id}`).catch(() => token);
      uncertain = false;
    } else if (res.status >= 500 || res.status === 0) {
      uncertain = true;
    }
    await sleep(PAUSE_MS);
  }
}

// policy writes with If-Match, as the admin API makes them, from a connection of their own
const adminOptions = { maxRetriesPerRequest: 1, commandTimeout: 1000, connectTimeout: 1000, retryStrategy: (n) => Math.min(n * 100, 1000) };
let admin;
let adminStore;
const adminWrites = { ok: 0, conflict: 0, failed: 0 };
async function adminWriter() {
  for (let i = 0; !stopLoad; i += 1) {
    try {
      const current = await adminStore.get('app');
      await adminStore.set('app', APP_POLICIES[i % 2], current ? { ifMatch: current.version } : {});
      adminWrites.ok += 1;
    } catch (err) {
      if (err?.name === 'PolicyConflictError') adminWrites.conflict += 1;
      else adminWrites.failed += 1;
    }
    await sleep(200);
  }
}

// ---------------------------------------------------------------------------------------------
// Policy staleness: a write → every live instance applies it to an MRRT exchange

const probes = new Map(); // instance name -> refresh token of client probe
let probeHasC = false;

async function probeOnce(instance) {
  let token = probes.get(instance.name);
  if (!token) {
    token = await signIn(instance.url, CLIENTS.probe, 'probe');
    probes.set(instance.name, token);
  }
  const res = await tokenRequest(instance.url, CLIENTS.probe, token, { audience: API.C });
  if (res.status === 200) probes.set(instance.name, res.body.refresh_token);
  if (res.status === 400 && res.error === 'invalid_grant') probes.delete(instance.name);
  return res;
}

/** Writes the other probe policy and returns how long until every live instance applied it (ms, the worst). */
async function staleness() {
  probeHasC = !probeHasC;
  const written = Date.now();
  await adminStore.set('probe', probeHasC ? PROBE_WITH_C : PROBE_WITHOUT_C);
  return applied(written);
}

async function applied(written) {
  const expected = probeHasC ? 200 : 400;
  let worst = 0;
  for (const instance of aliveInstances()) {
    for (;;) {
      const res = await probeOnce(instance).catch(() => ({ status: -1 }));
      if (res.status === expected && (expected === 200 || res.error === 'invalid_target')) break;
      if (Date.now() - written > GIVE_UP_MS) return Number.POSITIVE_INFINITY;
      await sleep(10);
    }
    worst = Math.max(worst, Date.now() - written);
  }
  return worst;
}

// ---------------------------------------------------------------------------------------------
// Faults

const FAULTS = [
  {
    name: 'Redis restart (SHUTDOWN, AOF, start again)',
    inject: restartRedis,
  },
  {
    name: 'pub/sub connections killed (CLIENT KILL TYPE pubsub)',
    inject: async () => {
      await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
    },
  },
  {
    name: `slow Redis (DEBUG SLEEP ${SLEEP_SECONDS})`,
    inject: async () => {
      const sleeper = new Redis(redisUrl, { maxRetriesPerRequest: 0, retryStrategy: () => null });
      sleeper.on('error', () => {});
      await sleeper.call('DEBUG', 'SLEEP', String(SLEEP_SECONDS)).catch(() => {});
      sleeper.disconnect();
    },
  },
  {
    name: `burst of ${BURST} policy edits`,
    inject: async () => {
      let n = 0;
      await Promise.all(
        Array.from({ length: 4 }, async (_, writer) => {
          while (n < BURST - 1) {
            n += 1;
            await adminStore.set('probe', (n + writer) % 2 ? PROBE_WITH_C : PROBE_WITHOUT_C).catch(() => {});
          }
        }),
      );
      // the burst's last edit, alone, so that its content is known
      probeHasC = !probeHasC;
      const written = Date.now();
      await adminStore.set('probe', probeHasC ? PROBE_WITH_C : PROBE_WITHOUT_C);
      return written;
    },
    /** staleness of the burst's last write, measured right away */
    afterInject: (written) => applied(written),
  },
  {
    name: 'instance killed (SIGKILL) and started again',
    inject: async () => {
      const victim = instances[1];
      fault.killed = victim;
      victim.child.kill('SIGKILL');
      await new Promise((resolve) => (victim.alive ? victim.child.once('exit', resolve) : resolve()));
      await sleep(1000);
      instances[1] = await startInstance(victim.name);
    },
  },
];

function percentile(values, p) {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

function summarize(name, phaseSamples, injectedAt, recoveredAt, stalenessMs, extra) {
  const outcomes = {};
  for (const s of phaseSamples) {
    const key = s.status === 0 ? `no answer (${s.error})` : `${s.status}${s.error ? ` ${s.error}` : ''}`;
    outcomes[key] = (outcomes[key] ?? 0) + 1;
  }
  const fivexx = phaseSamples.filter((s) => s.status >= 500);
  const nonOAuth = phaseSamples.filter((s) => !s.oauth && !s.cut);
  const cut = phaseSamples.filter((s) => s.cut);
  return {
    fault: name,
    requests: phaseSamples.length,
    ok: phaseSamples.filter((s) => s.status === 200).length,
    outcomes,
    nonOAuthErrors: nonOAuth.length,
    connectionsCut: cut.length,
    fivexx: fivexx.length,
    fivexxWindowMs: fivexx.length ? Math.max(...fivexx.map((s) => s.end)) - Math.min(...fivexx.map((s) => s.start)) : 0,
    p99Ms: percentile(
      phaseSamples.map((s) => s.end - s.start),
      0.99,
    ),
    maxMs: Math.max(0, ...phaseSamples.map((s) => s.end - s.start)),
    recoveryMs: recoveredAt === undefined ? null : Math.max(0, recoveredAt - injectedAt),
    stalenessMs,
    ...extra,
  };
}

// ---------------------------------------------------------------------------------------------

const started = Date.now();
const report = { settings: { quick: QUICK, workers: WORKERS, instances: 2, sleepSeconds: SLEEP_SECONDS, burst: BURST, node: process.version }, faults: [] };
let failed = false;
try {
  await startRedis();
  admin = new Redis(redisUrl, adminOptions);
  admin.on('error', () => {});
  adminStore = new RedisPolicyStore(admin, { prefix: instanceConfig.storePrefix });
  await adminStore.set('app', APP_POLICIES[0]);
  await adminStore.set('probe', PROBE_WITHOUT_C);
  instances.push(await startInstance('i1'), await startInstance('i2'));
  log(`redis ${redisUrl} (AOF), instances ${instances.map((i) => i.url).join(' ')}, ${WORKERS} workers`);

  const load = Promise.all([...Array.from({ length: WORKERS }, (_, id) => worker(id)), adminWriter()]);
  await sleep(BASELINE_MS);

  for (const f of FAULTS) {
    samples = [];
    const before = { ...tokens };
    const writesBefore = { ...adminWrites };
    await sleep(BASELINE_MS);
    fault = { at: Date.now(), killed: undefined };
    log(`injecting: ${f.name}`);
    const injected = await f.inject();
    const burstStaleness = f.afterInject ? await f.afterInject(injected) : undefined;

    // recovered: CLEAN_MS without a 5xx or a request without answer, and answers served since
    let recoveredAt;
    while (Date.now() - fault.at < GIVE_UP_MS) {
      const bad = samples.filter((s) => s.end >= fault.at && (s.status >= 500 || s.status === 0));
      const last = bad.length ? Math.max(...bad.map((s) => s.end)) : fault.at;
      const good = samples.filter((s) => s.start > last && s.status === 200).length;
      if (Date.now() - last >= CLEAN_MS && good >= 10) {
        recoveredAt = last;
        break;
      }
      await sleep(100);
    }
    const stalenessMs = burstStaleness ?? (await staleness());
    const phase = samples;
    samples = [];
    const entry = summarize(f.name, phase, fault.at, recoveredAt, stalenessMs, {
      tokensLost: tokens.lost - before.lost,
      tokensInFlight: tokens.inFlight - before.inFlight,
      adminWrites: {
        ok: adminWrites.ok - writesBefore.ok,
        conflict: adminWrites.conflict - writesBefore.conflict,
        failed: adminWrites.failed - writesBefore.failed,
      },
    });
    report.faults.push(entry);
    log(`${f.name}: ${JSON.stringify(entry)}`);
    if (entry.nonOAuthErrors > 0 || entry.tokensLost > 0 || entry.recoveryMs === null || !Number.isFinite(stalenessMs)) failed = true;
    fault = { at: Number.POSITIVE_INFINITY, killed: undefined };
  }

  stopLoad = true;
  await load;
  const stats = await Promise.all(aliveInstances().map(async (instance) => (await fetch(`${instance.url}/__chaos/stats`)).json()));
  report.instances = stats;
  report.totalRequests = totalRequests;
  report.seconds = Math.round((Date.now() - started) / 1000);
  if (stats.some((s) => s.unhandled.length > 0)) failed = true;
} catch (err) {
  failed = true;
  log(`run failed: ${err.stack ?? err}`);
} finally {
  stopLoad = true;
  for (const instance of instances) instance.child.kill('SIGTERM');
  admin?.disconnect();
  redisChild?.kill('SIGKILL');
  await sleep(200);
  rmSync(redisDir, { recursive: true, force: true });
}

if (JSON_OUT) {
  process.stdout.write(`${JSON.stringify({ ...report, passed: !failed }, null, 2)}\n`);
} else {
  const ms = (value) => (value === null || value === undefined ? '—' : !Number.isFinite(value) ? 'never' : `${value}`);
  const lines = [
    `npm run chaos${QUICK ? ' -- --quick' : ''}: ${report.totalRequests ?? '?'} requests in ${report.seconds ?? '?'} s, ${WORKERS} workers, 2 instances, Node ${process.version}`,
    '',
    '| fault | requests | non-OAuth errors | 5xx | 5xx window ms | recovered after ms | p99 / max ms | policy staleness after recovery ms | refresh tokens lost (not in flight) | in flight at the fault | admin writes ok / conflict / failed | outcomes |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |',
    ...report.faults.map(
      (f) =>
        `| ${f.fault} | ${f.requests} | ${f.nonOAuthErrors}${f.connectionsCut ? ` (+${f.connectionsCut} cut with the killed instance)` : ''} | ${f.fivexx} | ${f.fivexxWindowMs} | ${ms(f.recoveryMs)} | ${f.p99Ms} / ${f.maxMs} | ${ms(f.stalenessMs)} | ${f.tokensLost} | ${f.tokensInFlight} | ${f.adminWrites.ok} / ${f.adminWrites.conflict} / ${f.adminWrites.failed} | ${Object.entries(
          f.outcomes,
        )
          .map(([k, v]) => `${k}: ${v}`)
          .join(', ')} |`,
    ),
    '',
    `instances: ${(report.instances ?? []).map((s) => `${s.name} server_error events ${s.serverErrors}, store errors ${s.storeErrors}, unhandled rejections ${s.unhandled.length}`).join('; ')}`,
    `chaos: ${failed ? 'FAILED' : 'OK'}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
process.exit(failed ? 1 : 0);
