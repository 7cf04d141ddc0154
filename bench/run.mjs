// `npm run bench`: what an MRRT exchange costs next to plain oidc-provider, in one run.
//
// The servers run in a child process (bench/server.mjs); this process is the load generator
// (autocannon), reads Redis statistics and runs the policy-store scale test. Everything talks to
// 127.0.0.1 only and every loop is bounded. Progress goes to stderr; the results go to stdout (a
// Markdown report, or with --json one JSON document and nothing else).
//
//   node bench/run.mjs [--quick] [--json] [--alg ES256|RS256|EdDSA] [--rounds N] [--duration S]
//                      [--warmup S] [--connections N] [--scale N] [--only memory/off,redis/on]
//                      [--scenarios ABCD] [--cpu-prof]
// --only / --scenarios run a subset (ratios need all four scenarios); --cpu-prof profiles the server
// process during each measured window (not the warm-up, minting or purging) and writes one V8 CPU
// profile per window to bench/profiles/, with bench/profiles/windows.json giving each window's
// scenario and request count: `node bench/profile-summary.mjs bench/profiles` compares scenarios in
// CPU µs per request.
import { execFileSync, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import autocannon from 'autocannon';
import { Redis } from 'ioredis';

import { RedisPolicyStore } from '../dist/index.js';
import { API, SCENARIOS, refreshBody, scanKeys, unlinkAll } from './shared.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    alg: { type: 'string', default: 'ES256' },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    connections: { type: 'string' },
    scale: { type: 'string' },
    only: { type: 'string' },
    scenarios: { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
    pin: { type: 'boolean', default: false },
  },
});

const PRESET = args.quick
  ? { rounds: 3, duration: 1, warmup: 0.5, scale: 10_000, sample: 2_000, count: 100 }
  : { rounds: 8, duration: 3, warmup: 2, scale: 100_000, sample: 10_000, count: 500 };
const positive = (value, fallback, name) => {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number`);
  return n;
};
const settings = {
  mode: args.quick ? 'quick' : 'full',
  alg: args.alg,
  rounds: Math.round(positive(args.rounds, PRESET.rounds, 'rounds')),
  duration_s: positive(args.duration, PRESET.duration, 'duration'),
  warmup_s: positive(args.warmup, PRESET.warmup, 'warmup'),
  connections: Math.round(positive(args.connections, 10, 'connections')),
  scale_clients: Math.round(positive(args.scale, PRESET.scale, 'scale')),
  scale_sample: PRESET.sample,
  count_requests: PRESET.count,
};
if (!['ES256', 'RS256', 'EdDSA'].includes(settings.alg)) throw new Error('--alg must be ES256, RS256 or EdDSA');
if (settings.rounds > 50 || settings.duration_s > 120 || settings.scale_clients > 1_000_000) throw new Error('rounds ≤ 50, duration ≤ 120 s, scale ≤ 1 000 000');

const ALL_VARIANTS = ['memory/off', 'memory/on', 'redis/off', 'redis/on'];
const variants = args.only ? args.only.split(',').map((v) => v.trim()) : ALL_VARIANTS;
for (const v of variants) if (!ALL_VARIANTS.includes(v)) throw new Error(`--only: unknown variant "${v}" (one of ${ALL_VARIANTS.join(', ')})`);
const SCENARIO_NAMES = args.scenarios ? args.scenarios.toUpperCase().split('').filter((s) => s.trim()) : ['A', 'B', 'C', 'D'];
for (const s of SCENARIO_NAMES) if (!SCENARIOS[s]) throw new Error(`--scenarios: unknown scenario "${s}" (letters of ABCD)`);
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const RUN_PREFIX = `mrrt-bench:${process.pid}-${randomBytes(4).toString('hex')}:`;
const PROFILE_DIR = path.join(here, 'profiles');
const profileWindows = [];

const log = (...parts) => process.stderr.write(`bench: ${parts.join(' ')}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// statistics

function percentile(sorted, q) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}
const median = (values) => percentile([...values].sort((a, b) => a - b), 0.5);
/**
 * A 95 % interval for the median of per-round values (percentile bootstrap, 4 000 resamples, fixed
 * seed: the same rounds always give the same interval).
 */
function medianInterval(values) {
  let seed = 0x9e3779b9;
  const random = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const medians = [];
  for (let i = 0; i < 4000; i += 1) medians.push(median(values.map(() => values[Math.floor(random() * values.length)])));
  medians.sort((a, b) => a - b);
  return [round(percentile(medians, 0.025), 3), round(percentile(medians, 0.975), 3)];
}
const spread = (values) => ({
  median: round(median(values), 3), min: round(Math.min(...values), 3), max: round(Math.max(...values), 3), ci95: medianInterval(values),
});
/** A target on a median ratio: met or missed only when the whole 95 % interval says so. */
function verdict(ratio, bound, atLeast) {
  const [low, high] = ratio.ci95;
  if (atLeast ? low >= bound : high <= bound) return 'met';
  if (atLeast ? high < bound : low > bound) return 'not met';
  return 'within noise';
}
function round(value, digits) {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

// ---------------------------------------------------------------------------------------------
// the server process

class ServerProcess {
  #child;
  #pending = new Map();
  #next = 0;

  async start() {
    const execArgv = ['--expose-gc'];
    // the child's stdout goes to our stderr: stdout carries nothing but the results
    this.#child = fork(path.join(here, 'server.mjs'), [], { execArgv, stdio: ['ignore', 2, 2, 'ipc'] });
    if (args.pin) {
      // the server on the last CPU, this load generator on the others (Redis is left to the scheduler)
      const last = os.availableParallelism() - 1;
      execFileSync('taskset', ['-a', '-p', '-c', String(last), String(this.#child.pid)], { stdio: 'ignore' });
      execFileSync('taskset', ['-a', '-p', '-c', `0-${Math.max(last - 1, 0)}`, String(process.pid)], { stdio: 'ignore' });
    }
    this.#child.on('error', (err) => log(`bench server: ${err.message}`));
    const ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('bench server did not start within 30 s')), 30_000);
      this.#child.once('message', () => { clearTimeout(timer); resolve(); });
      this.#child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`bench server exited (${code})`)); });
    });
    this.#child.on('message', (msg) => {
      const waiter = msg.id === undefined ? undefined : this.#pending.get(msg.id);
      if (!waiter) return;
      this.#pending.delete(msg.id);
      clearTimeout(waiter.timer);
      if (msg.ok) waiter.resolve(msg.result);
      else waiter.reject(new Error(`bench server: ${msg.error}`));
    });
    this.#child.on('exit', (code, signal) => {
      for (const waiter of this.#pending.values()) waiter.reject(new Error(`bench server exited (${code ?? signal})`));
      this.#pending.clear();
    });
    await ready;
  }

  call(cmd, callArgs = {}, timeoutMs = 300_000) {
    if (!this.#child?.connected) return Promise.reject(new Error(`bench server: "${cmd}": not running`));
    return new Promise((resolve, reject) => {
      const id = ++this.#next;
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`bench server: "${cmd}" did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#child.send({ id, cmd, args: callArgs });
    });
  }

  async stop() {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    try {
      await this.call('close', {}, 10_000);
    } catch (err) {
      log(`closing the bench server: ${err.message}`);
    }
    if (child.connected) child.disconnect(); // the server exits when its IPC channel closes
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// Redis helpers (this process's own connection)

async function deleteByPrefix(redis, prefix) {
  const keys = await scanKeys(redis, `${prefix}*`);
  await unlinkAll(redis, keys);
  return keys.length;
}

function parseInfo(text) {
  const out = {};
  for (const line of text.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon > 0 && !line.startsWith('#')) out[line.slice(0, colon)] = line.slice(colon + 1);
  }
  return out;
}

async function commandCalls(redis) {
  const info = parseInfo(await redis.info('commandstats'));
  const calls = {};
  for (const [key, value] of Object.entries(info)) {
    if (!key.startsWith('cmdstat_')) continue;
    calls[key.slice('cmdstat_'.length)] = Number(/calls=(\d+)/.exec(value)?.[1] ?? 0);
  }
  return calls;
}

// ---------------------------------------------------------------------------------------------
// load generation

const targetName = (variant, scenario) => `${variant}/${SCENARIOS[scenario].provider}`;
const rotating = (variant) => variant.endsWith('/on');

/**
 * Runs one scenario for `seconds` with autocannon and returns requests/s and latency percentiles
 * computed from every response (autocannon's own histogram rounds to whole milliseconds).
 */
async function measure(server, targets, variant, scenario, seconds, poolRps, profileFile) {
  const target = targets.get(targetName(variant, scenario));
  const { resource } = SCENARIOS[scenario];
  const { connections } = settings;
  let tokens;
  if (rotating(variant)) {
    const count = Math.ceil(poolRps * seconds) + 4 * connections + 100;
    tokens = await server.call('mint', { name: target.name, count });
  }
  await server.call('gc');
  await sleep(50);

  const latencies = [];
  const status = {};
  let next = 0;
  let last = 0;
  const options = {
    url: `${target.url}/token`,
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    connections,
    duration: seconds,
    sampleInt: 100,
    timeout: 30,
  };
  if (tokens) {
    // one fresh refresh token per request; never more requests than tokens
    options.requests = [{ setupRequest: (req) => ({ ...req, body: refreshBody(tokens[Math.min(next++, tokens.length - 1)], resource) }) }];
    options.maxOverallRequests = tokens.length - 2 * connections;
  } else {
    options.body = refreshBody(target.refreshToken, resource);
  }

  if (profileFile) await server.call('profileStart');
  const cpuBefore = await server.call('cpu');
  const start = performance.now();
  const instance = autocannon(options);
  instance.on('response', (_client, statusCode, _bytes, responseTime) => {
    status[statusCode] = (status[statusCode] ?? 0) + 1;
    if (statusCode === 200) {
      latencies.push(responseTime);
      last = performance.now();
    }
  });
  const result = await instance;
  await sleep(200); // let requests still in flight drain before anything else runs
  const cpuUs = (await server.call('cpu')) - cpuBefore;
  if (profileFile) await server.call('profileStop', { file: profileFile });
  if (tokens) await server.call('purge', { name: target.name });

  latencies.sort((a, b) => a - b);
  const ok = latencies.length;
  const failed = Object.entries(status).filter(([code]) => code !== '200').reduce((sum, [, n]) => sum + n, 0) + result.errors;
  if (failed) log(`WARNING ${variant} ${scenario}: ${failed} failed requests ${JSON.stringify(status)} errors=${result.errors}`);
  const exhausted = tokens ? next >= tokens.length - 2 * connections : false;
  if (exhausted) log(`note: ${variant} ${scenario} used its whole token pool (${tokens.length}); the window was shorter`);
  return {
    rps: ok / ((last - start) / 1000),
    p50_ms: percentile(latencies, 0.5),
    p99_ms: percentile(latencies, 0.99),
    // the server's CPU time per request: far less disturbed by other work on the machine than req/s
    cpu_us: cpuUs / (ok + failed),
    requests: ok,
    failed,
  };
}

/** One request per scenario: the servers answer as the scenario says before anything is timed. */
async function sanityCheck(server, targets) {
  for (const variant of variants) {
    for (const scenario of SCENARIO_NAMES) {
      const target = targets.get(targetName(variant, scenario));
      const { resource } = SCENARIOS[scenario];
      const [token] = rotating(variant) ? await server.call('mint', { name: target.name, count: 1 }) : [target.refreshToken];
      const res = await fetch(`${target.url}/token`, {
        method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: refreshBody(token, resource),
      });
      const body = await res.json();
      const aud = body.access_token ? JSON.parse(Buffer.from(body.access_token.split('.')[1], 'base64url')).aud : undefined;
      const problems = [];
      if (res.status !== 200) problems.push(`status ${res.status} ${JSON.stringify(body)}`);
      if (aud !== resource) problems.push(`access token audience ${aud}`);
      if (!body.id_token) problems.push('no id_token');
      if (resource === API.C ? body.resource !== API.C : body.resource !== undefined) problems.push(`resource ${body.resource}`);
      if (rotating(variant) === (body.refresh_token === token)) problems.push('refresh token rotation is not as configured');
      if (problems.length) throw new Error(`sanity check ${variant} ${scenario}: ${problems.join('; ')}`);
      if (rotating(variant)) await server.call('purge', { name: target.name });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Redis commands per exchange

async function countCommands(server, targets, redis) {
  const rows = [];
  for (const variant of variants.filter((v) => v.startsWith('redis/'))) {
    for (const scenario of SCENARIO_NAMES) {
      // INFO commandstats counts every client of this Redis: when another client was busy meanwhile
      // (its commands show up in commandstats but not among this run's keys in MONITOR), count again
      let pass;
      for (let attempt = 1; attempt <= 3; attempt += 1) {
        pass = await countPass(server, targets, redis, variant, scenario);
        if (pass.consistent) break;
        log(`command count ${variant} ${scenario}: other Redis clients were active, counting again (${attempt}/3)`);
      }
      const n = settings.count_requests;
      const source = pass.consistent ? pass.commandstats : pass.monitored;
      const perCommand = Object.fromEntries(Object.entries(source).filter(([, calls]) => calls > 0).map(([cmd, calls]) => [cmd, round(calls / n, 2)]));
      rows.push({
        name: scenario, adapter: 'redis', rotation: variant.split('/')[1],
        commands_per_exchange: round(Object.values(source).reduce((a, b) => a + b, 0) / n, 2),
        round_trips_per_exchange: round(pass.sent / n, 2),
        policy_hmget_per_exchange: round(pass.policyReads / n, 2),
        by_command: perCommand,
        source: pass.consistent ? 'INFO commandstats' : 'MONITOR (commandstats had other clients\' commands)',
      });
    }
  }
  return rows;
}

/** The Redis key a command (as MONITOR shows it) works on. */
const keyOf = (cmd) => String(/^eval(sha)?$/i.test(String(cmd[0])) ? cmd[3] : cmd[1]);

async function countPass(server, targets, redis, variant, scenario) {
  const n = settings.count_requests;
  const target = targets.get(targetName(variant, scenario));
  const { resource } = SCENARIOS[scenario];
  const tokens = rotating(variant) ? await server.call('mint', { name: target.name, count: n }) : undefined;
  await sleep(100);

  const monitor = await redis.monitor();
  // MONITOR lines still arriving when the connection closes are no replies: ioredis reports them as errors
  monitor.on('error', () => {});
  const monitored = {};
  let sent = 0;
  let policyReads = 0;
  let counting = false;
  monitor.on('monitor', (_time, cmd, source) => {
    const name = String(cmd[0]).toLowerCase();
    if (!counting || !keyOf(cmd).startsWith(RUN_PREFIX)) return;
    monitored[name] = (monitored[name] ?? 0) + 1;
    if (source !== 'lua') sent += 1;
    if (name === 'hmget' && keyOf(cmd).includes('{policies}:policy:')) policyReads += 1;
  });
  await sleep(100);
  counting = true;
  const before = await commandCalls(redis);
  for (let i = 0; i < n; i += 1) {
    const res = await fetch(`${target.url}/token`, {
      method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: refreshBody(tokens ? tokens[i] : target.refreshToken, resource),
    });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`command count ${variant} ${scenario}: status ${res.status}`);
  }
  await sleep(300);
  const after = await commandCalls(redis);
  counting = false;
  monitor.disconnect();
  if (tokens) await server.call('purge', { name: target.name });

  const commandstats = {};
  for (const [cmd, calls] of Object.entries(after)) {
    const delta = calls - (before[cmd] ?? 0);
    if (delta > 0 && cmd !== 'info' && cmd !== 'monitor') commandstats[cmd] = delta;
  }
  const names = new Set([...Object.keys(commandstats), ...Object.keys(monitored)]);
  const consistent = [...names].every((cmd) => (commandstats[cmd] ?? 0) === (monitored[cmd] ?? 0));
  return { commandstats, monitored, sent, policyReads, consistent };
}

// ---------------------------------------------------------------------------------------------
// policy store at scale

function scalePolicy(i) {
  return [
    { audience: `https://billing-${i % 97}.example.com`, scope: ['read:invoices', 'write:invoices'] },
    { audience: 'https://messages.example.com', scope: ['read:messages', 'write:messages', 'delete:messages'] },
    { audience: 'https://profile.example.com', scope: ['read:profile'] },
  ];
}

/**
 * Lookups answered by the extension's in-process policy cache (what an exchange does in steady
 * state), when the build has one: `dist/policy-cache.js` is internal, so this is best effort.
 */
async function cachedLookups(store, sample, n, id) {
  const { PolicyCache } = await import('../dist/policy-cache.js');
  const cache = new PolicyCache(store, { maxAge: 600_000, maxEntries: sample });
  try {
    const ids = Array.from({ length: sample }, () => id(Math.floor(Math.random() * n)));
    for (const clientId of ids) await cache.get(clientId); // fill (store reads)
    const times = [];
    for (const clientId of ids) {
      const t0 = performance.now();
      await cache.get(clientId);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    return { p50: percentile(times, 0.5), p99: percentile(times, 0.99) };
  } finally {
    cache.close();
    await store.close?.();
  }
}

async function scaleRun(redis) {
  const n = settings.scale_clients;
  const prefix = `${RUN_PREFIX}scale:{policies}:`;
  const writer = new Redis(REDIS_URL, { enableAutoPipelining: true, maxRetriesPerRequest: 1 });
  const reader = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  try {
    const writeStore = new RedisPolicyStore(writer, { prefix });
    const readStore = new RedisPolicyStore(reader, { prefix });
    const id = (i) => `client-${String(i).padStart(7, '0')}`;

    await redis.call('MEMORY', 'PURGE').catch(() => undefined);
    const memBefore = Number(parseInfo(await redis.info('memory')).used_memory);
    const writeStart = performance.now();
    const BATCH = 1000;
    for (let i = 0; i < n; i += BATCH) {
      const batch = [];
      for (let j = i; j < Math.min(n, i + BATCH); j += 1) batch.push(writeStore.set(id(j), scalePolicy(j)));
      await Promise.all(batch);
    }
    const writeSeconds = (performance.now() - writeStart) / 1000;
    const memAfter = Number(parseInfo(await redis.info('memory')).used_memory);
    const stored = await redis.zcard(`${prefix}clients`);
    if (stored !== n) throw new Error(`scale run: ${stored} clients indexed, expected ${n}`);

    // cold lookups: one Redis round trip each, sequential, random clients
    const sample = settings.scale_sample;
    for (let i = 0; i < 200; i += 1) await readStore.get(id(i)); // connection and JIT warm-up
    const times = [];
    for (let i = 0; i < sample; i += 1) {
      const clientId = id(Math.floor(Math.random() * n));
      const t0 = performance.now();
      const record = await readStore.get(clientId);
      times.push(performance.now() - t0);
      if (!record || record.policies.length !== 3) throw new Error(`scale run: ${clientId} has no policy`);
    }
    times.sort((a, b) => a - b);
    const cached = await cachedLookups(readStore, sample, n, id);
    return {
      clients: n,
      write_s: round(writeSeconds, 2),
      writes_per_s: Math.round(n / writeSeconds),
      policy_json_bytes: JSON.stringify(scalePolicy(1)).length,
      get_sample: sample,
      get_p50_ms: round(percentile(times, 0.5), 3),
      get_p99_ms: round(percentile(times, 0.99), 3),
      cached_get_p50_ms: round(cached.p50, 4),
      cached_get_p99_ms: round(cached.p99, 4),
      redis_bytes_per_policy: Math.round((memAfter - memBefore) / n),
    };
  } finally {
    const removed = await deleteByPrefix(redis, prefix);
    log(`scale run: removed ${removed} keys`);
    writer.disconnect();
    reader.disconnect();
  }
}

// ---------------------------------------------------------------------------------------------
// report

/** The commit measured, and whether lib/ had uncommitted changes when dist/ was built. */
function revision() {
  try {
    const git = (...gitArgs) => execFileSync('git', gitArgs, { cwd: path.join(here, '..'), encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = git('status', '--porcelain', '--', 'lib') !== '';
    return `${git('rev-parse', '--short', 'HEAD')}${dirty ? ' + uncommitted lib/ changes' : ''}`;
  } catch {
    return 'unknown';
  }
}

function machine(redisInfo, loadBefore) {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? cpu;
  } catch { /* not Linux */ }
  const pkg = (name) => JSON.parse(readFileSync(path.join(here, '..', 'node_modules', name, 'package.json'), 'utf8')).version;
  return {
    nproc: os.availableParallelism(),
    cpu,
    memory_gib: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    redis: redisInfo.redis_version,
    oidc_provider: pkg('oidc-provider'),
    autocannon: pkg('autocannon'),
    // other work on the machine skews everything: the 1-minute load average before and after
    load_avg: [round(loadBefore, 2), round(os.loadavg()[0], 2)],
  };
}

const fmt = (value, digits = 2) => (Number.isFinite(value) ? value.toFixed(digits) : 'n/a');
const fmtInt = (value) => (Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : 'n/a');
const fmtSpread = (s) => (s ? `${fmt(s.median)} (${fmt(s.min)}–${fmt(s.max)})` : 'n/a');

function markdown(report) {
  const lines = [];
  const m = report.machine;
  lines.push(`Machine: ${m.nproc} cores (nproc), ${m.cpu}, ${m.memory_gib} GiB; Node ${m.node}; Redis ${m.redis}; oidc-provider ${m.oidc_provider}; autocannon ${m.autocannon}; load average ${m.load_avg[0]} before, ${m.load_avg[1]} after; ${report.elapsed_s} s.`);
  const s = report.settings;
  lines.push(`Settings: revision ${s.revision}; ${s.mode}, ${s.rounds} rounds × ${s.duration_s} s per scenario (interleaved, after ${s.warmup_s} s warm-up each), ${s.connections} connections, ${s.alg} signatures (access token JWT + ID token per request).`);
  lines.push('');
  lines.push('| scenario | adapter | rotation | req/s | p50 ms | p99 ms | server CPU µs/req |');
  lines.push('| --- | --- | --- | ---: | ---: | ---: | ---: |');
  for (const row of report.scenarios) {
    lines.push(`| ${row.name}: ${SCENARIOS[row.name].label} | ${row.adapter} | ${row.rotation} | ${fmtInt(row.rps)} | ${fmt(row.p50_ms)} | ${fmt(row.p99_ms)} | ${fmtInt(row.cpu_us_per_req)} |`);
  }
  lines.push('');
  const ratioColumns = (fields) => {
    const present = ['b', 'c', 'd'].filter((x) => Object.values(report.ratios).some((r) => r[`${x}_a_rps`]));
    return fields.flatMap(([suffix, title]) => present.map((x) => [`${x}_a_${suffix}`, `${x.toUpperCase()}/A ${title}`]));
  };
  const ratioTable = (columns) => {
    lines.push(`| adapter | rotation | ${columns.map(([, title]) => title).join(' | ')} |`);
    lines.push(`| --- | --- | ${columns.map(() => '---').join(' | ')} |`);
    for (const [key, r] of Object.entries(report.ratios)) {
      const [adapter, rotation] = key.split('/');
      lines.push(`| ${adapter} | ${rotation} | ${columns.map(([k]) => fmtSpread(r[k])).join(' | ')} |`);
    }
  };
  if (Object.keys(report.ratios).length) {
    lines.push('Ratios per round (median, min–max over rounds):');
    lines.push('');
    ratioTable(ratioColumns([['rps', 'req/s'], ['p99', 'p99']]));
    lines.push('');
    lines.push('Throughput ratio implied by server CPU per request (A\'s CPU µs/req ÷ the scenario\'s; robust to other load on the machine):');
    lines.push('');
    ratioTable(ratioColumns([['cpu', '']]).map(([k, title]) => [k, title.trim()]));
  }
  if (report.targets.length) {
    lines.push('');
    lines.push('Targets (Redis adapter, medians over rounds with a 95 % bootstrap interval): "met" or "not met" only when the whole interval says so, otherwise "within noise".');
    lines.push('');
    lines.push('| rotation | target | median | 95 % interval | verdict |');
    lines.push('| --- | --- | ---: | --- | --- |');
    for (const t of report.targets) lines.push(`| ${t.rotation} | ${t.target} | ${fmt(t.measured)} | ${fmt(t.ci95[0])}–${fmt(t.ci95[1])} | ${t.verdict} |`);
  }
  if (report.redis_commands.length) {
    lines.push('');
    lines.push(`Redis commands per exchange (INFO commandstats delta ÷ ${s.count_requests} sequential requests, checked against MONITOR; commands run inside Lua scripts count too; round trips = commands the server sent, from MONITOR):`);
    lines.push('');
    lines.push('| scenario | rotation | commands | round trips | policy-store HMGET | by command |');
    lines.push('| --- | --- | ---: | ---: | ---: | --- |');
    for (const row of report.redis_commands) {
      const by = Object.entries(row.by_command).sort(([a], [b]) => a.localeCompare(b)).map(([cmd, v]) => `${cmd} ${v}`).join(', ');
      const note = row.source === 'INFO commandstats' ? '' : ' (from MONITOR: other clients were busy)';
      lines.push(`| ${row.name} | ${row.rotation} | ${fmt(row.commands_per_exchange)} | ${fmt(row.round_trips_per_exchange)} | ${fmt(row.policy_hmget_per_exchange)} | ${by}${note} |`);
    }
  }
  if (report.policy_store) {
    const p = report.policy_store;
    lines.push('');
    lines.push(`Policy store at scale (RedisPolicyStore, ${fmtInt(p.clients)} clients, 3-entry policies of ${p.policy_json_bytes} bytes JSON):`);
    lines.push('');
    lines.push('| clients | write (autopipelined, 1000 in flight) | get p50 (cold) | get p99 (cold) | get (cached, PolicyCache hit) | Redis memory per policy |');
    lines.push('| ---: | --- | ---: | ---: | --- | ---: |');
    const cachedCell = `p50 ${fmt(p.cached_get_p50_ms, 4)} ms, p99 ${fmt(p.cached_get_p99_ms, 4)} ms`;
    lines.push(`| ${fmtInt(p.clients)} | ${fmt(p.write_s)} s (${fmtInt(p.writes_per_s)}/s) | ${fmt(p.get_p50_ms, 3)} ms | ${fmt(p.get_p99_ms, 3)} ms | ${cachedCell} | ${fmtInt(p.redis_bytes_per_policy)} B |`);
  }
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const started = performance.now();
  const loadBefore = os.loadavg()[0];
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, connectTimeout: 5000, retryStrategy: () => null, lazyConnect: true });
  try {
    await redis.connect();
  } catch (err) {
    throw new Error(`no Redis at ${REDIS_URL} (set REDIS_URL): ${err.message}`);
  }
  const server = new ServerProcess();
  let cleaning;
  const cleanup = () => {
    // once, whoever asks first (the end of the run, a signal or a crash)
    cleaning ??= (async () => {
      await server.stop().catch((err) => log(`stopping the bench server: ${err.message}`));
      const removed = await deleteByPrefix(redis, RUN_PREFIX).catch((err) => { log(`cleanup failed: ${err.message}`); return 0; });
      log(`removed ${removed} Redis keys under ${RUN_PREFIX}`);
      redis.disconnect();
    })();
    return cleaning;
  };
  const onSignal = () => { cleanup().finally(() => process.exit(130)); };
  const onCrash = (err) => {
    log(`failed: ${err?.stack ?? err}`);
    cleanup().finally(() => process.exit(1));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('uncaughtException', onCrash);

  try {
    const redisInfo = parseInfo(await redis.info('server'));
    if (args['cpu-prof']) {
      // this run's profiles only
      mkdirSync(PROFILE_DIR, { recursive: true });
      for (const file of readdirSync(PROFILE_DIR)) if (file.endsWith('.cpuprofile') || file === 'windows.json') rmSync(path.join(PROFILE_DIR, file));
    }
    await server.start();
    const created = await server.call('init', { redisUrl: REDIS_URL, prefix: RUN_PREFIX, alg: settings.alg });
    const targets = new Map(created.map((t) => [t.name, t]));
    log(`servers up (${created.length} providers, one real login each); sanity checks`);
    await sanityCheck(server, targets);

    const GUESS_RPS = 5000; // pool size for the warm-up of rotating scenarios
    // the highest rate seen so far per scenario: rotating scenarios get twice that many tokens per second
    const peakRps = new Map();
    for (const variant of variants) {
      for (const scenario of SCENARIO_NAMES) {
        const r = await measure(server, targets, variant, scenario, settings.warmup_s, GUESS_RPS);
        peakRps.set(`${variant}/${scenario}`, r.rps);
        log(`warm-up ${variant} ${scenario}: ${fmtInt(r.rps)} req/s`);
      }
    }

    const results = new Map(); // "<variant>/<scenario>" -> per-round results
    for (let round_ = 0; round_ < settings.rounds; round_ += 1) {
      for (const variant of variants) {
        // rotate the order every round so that no scenario always runs first or last
        const order = SCENARIO_NAMES.map((_, i) => SCENARIO_NAMES[(i + round_) % SCENARIO_NAMES.length]);
        for (const scenario of order) {
          const key = `${variant}/${scenario}`;
          const profileFile = args['cpu-prof'] ? path.join(PROFILE_DIR, `${variant.replace('/', '-')}-${scenario}-round${round_ + 1}.cpuprofile`) : undefined;
          const r = await measure(server, targets, variant, scenario, settings.duration_s, 2 * Math.max(peakRps.get(key), 1000), profileFile);
          if (profileFile) profileWindows.push({ file: path.basename(profileFile), variant, scenario, round: round_ + 1, requests: r.requests + r.failed });
          peakRps.set(key, Math.max(peakRps.get(key), r.rps));
          if (!results.has(key)) results.set(key, []);
          results.get(key).push(r);
          log(`round ${round_ + 1}/${settings.rounds} ${variant} ${scenario}: ${fmtInt(r.rps)} req/s, p50 ${fmt(r.p50_ms)} ms, p99 ${fmt(r.p99_ms)} ms, ${fmtInt(r.cpu_us)} µs CPU/req`);
        }
      }
    }

    if (args['cpu-prof']) {
      writeFileSync(path.join(PROFILE_DIR, 'windows.json'), `${JSON.stringify({ revision: revision(), windows: profileWindows }, null, 2)}\n`);
      log(`CPU profiles of ${profileWindows.length} measured windows in ${PROFILE_DIR}; compare with: node bench/profile-summary.mjs ${path.relative(process.cwd(), PROFILE_DIR) || '.'}`);
    }

    const scenarios = [];
    const ratios = {};
    const targetsMet = [];
    for (const variant of variants) {
      const [adapter, rotation] = variant.split('/');
      const byScenario = Object.fromEntries(SCENARIO_NAMES.map((s) => [s, results.get(`${variant}/${s}`)]));
      for (const s of SCENARIO_NAMES) {
        const rounds = byScenario[s];
        scenarios.push({
          name: s, adapter, rotation,
          rps: round(median(rounds.map((r) => r.rps)), 1),
          p50_ms: round(median(rounds.map((r) => r.p50_ms)), 3),
          p99_ms: round(median(rounds.map((r) => r.p99_ms)), 3),
          cpu_us_per_req: round(median(rounds.map((r) => r.cpu_us)), 1),
          failed: rounds.reduce((sum, r) => sum + r.failed, 0),
        });
      }
      if (!byScenario.A) continue; // ratios are against A
      const others = SCENARIO_NAMES.filter((n) => n !== 'A');
      const per = (s, field) => byScenario[s].map((r, i) => r[field] / byScenario.A[i][field]);
      // throughput ratio implied by server CPU per request (A's CPU ÷ the scenario's)
      const perCpu = (s) => byScenario[s].map((r, i) => byScenario.A[i].cpu_us / r.cpu_us);
      const r = {};
      for (const n of others) {
        const x = n.toLowerCase();
        r[`${x}_a_rps`] = spread(per(n, 'rps'));
        r[`${x}_a_p99`] = spread(per(n, 'p99_ms'));
        r[`${x}_a_cpu`] = spread(perCpu(n));
      }
      ratios[variant] = r;
      if (adapter === 'redis') {
        const target = (name, ratio, bound, atLeast) => {
          if (ratio) targetsMet.push({ rotation, target: name, measured: ratio.median, ci95: ratio.ci95, verdict: verdict(ratio, bound, atLeast) });
        };
        target('C/A req/s ≥ 0.95', r.c_a_rps, 0.95, true);
        target('B/A req/s ≥ 0.98', r.b_a_rps, 0.98, true);
        target('C/A p99 ≤ 1.10', r.c_a_p99, 1.10, false);
        target('C/A from CPU per request ≥ 0.95', r.c_a_cpu, 0.95, true);
        target('B/A from CPU per request ≥ 0.98', r.b_a_cpu, 0.98, true);
        target('D/A req/s ≥ 0.95 (cache: false)', r.d_a_rps, 0.95, true);
      }
    }

    log('counting Redis commands per exchange');
    const redisCommands = await countCommands(server, targets, redis);
    await server.stop();

    log(`policy-store scale run: ${fmtInt(settings.scale_clients)} clients`);
    const policyStore = await scaleRun(redis);

    const report = {
      scenarios,
      ratios,
      targets: targetsMet,
      redis_commands: redisCommands,
      policy_store: policyStore,
      machine: machine(redisInfo, loadBefore),
      settings: { ...settings, revision: revision() },
      elapsed_s: 0,
    };
    report.elapsed_s = round((performance.now() - started) / 1000, 1);
    log(`done in ${report.elapsed_s} s`);
    process.stdout.write(args.json ? `${JSON.stringify(report, null, 2)}\n` : markdown(report));
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('uncaughtException', onCrash);
    await cleanup();
  }
}

main().catch((err) => {
  log(`failed: ${err?.stack ?? err}`);
  process.exitCode = 1;
});
