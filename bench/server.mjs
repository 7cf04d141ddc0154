// The servers that `npm run bench` measures, in their own process (forked by bench/run.mjs, driven
// over IPC). It hosts the providers the runner asks for (bench/run.mjs asks for one: one scenario's
// kind for one adapter/rotation variant), each on its own 127.0.0.1 port. Every
// provider gets one real authorization-code login (through its authorization endpoint and the
// fixture's interaction routes, bench/provider-setup.mjs); rotation-on pools are minted from that login's refresh token and Grant
// through the provider's public models. Scenario E's plain provider also keeps a pool of signed-in
// sessions (real logins) for its silent authorization requests. The storage table's providers are
// built on demand (bench/storage.mjs).
import { mkdirSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import path from 'node:path';
import http from 'node:http';

import { Redis } from 'ioredis';

import { configuration, handler, login, providerParts, signingKey } from './provider-setup.mjs';
import { CLIENT, scanKeys, unlinkAll } from './shared.mjs';
import { measureStorage } from './storage.mjs';

const MINT_BATCH = 500;

const targets = new Map(); // key "<adapter>/<rotation>/<plain|mrrt|mrrt-nocache>" -> target
const servers = [];
const redisClients = [];
const stores = [];
let signing;
let profiler;

// server CPU per request of the interleaved measurement, by the scenario its `x-bench-scenario` header names
const requestCpu = new Map(); // scenario -> { us, requests }

/**
 * Counts the server's CPU time from a request's arrival to its response's end, for requests that
 * name their scenario. The interleaved measurement sends one request at a time, so nothing else
 * runs meanwhile but what that request causes (a garbage collection falls on whichever request it
 * interrupts). Requests without the header (every throughput window) are not touched.
 */
function accounted(handle) {
  return (req, res) => {
    const scenario = req.headers['x-bench-scenario'];
    if (typeof scenario !== 'string') return handle(req, res);
    const before = process.cpuUsage();
    res.once('finish', () => {
      const { user, system } = process.cpuUsage(before);
      const entry = requestCpu.get(scenario) ?? { us: 0, requests: 0 };
      entry.us += user + system;
      entry.requests += 1;
      requestCpu.set(scenario, entry);
    });
    return handle(req, res);
  };
}

/** `kind`: 'plain' (oidc-provider), 'mrrt' (withMrrt, default options) or 'mrrt-nocache' (withMrrt, `cache: false`). */
async function createTarget({ adapterKind, rotate, kind, redisUrl, prefix, sessionCount }) {
  const name = `${adapterKind}/${rotate ? 'on' : 'off'}/${kind}`;
  let redis;
  let keyPrefix;
  if (adapterKind === 'redis') {
    redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect();
    redisClients.push(redis);
    keyPrefix = `${prefix}${adapterKind}-${rotate ? 'on' : 'off'}-${kind}:`;
  }
  const { adapter, store, storage, policyPrefix, ProviderClass } = await providerParts({ kind, redis, prefix: keyPrefix });
  if (store) stores.push(store);

  const server = http.createServer();
  servers.push(server);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  const provider = new ProviderClass(url, configuration({ adapter, rotate, jwk: signing }));
  server.on('request', accounted(handler(provider)));
  server.keepAliveTimeout = 60_000;

  const { refreshToken } = await login(url);
  // scenario E's signed-in sessions (its silent requests write codes and refresh tokens, purged
  // after each window; the sessions themselves stay, as part of the baseline)
  const sessions = [];
  if (kind === 'plain') for (let i = 0; i < sessionCount; i += 1) sessions.push((await login(url)).cookie);
  const rt = await provider.RefreshToken.find(refreshToken);
  const grant = await provider.Grant.find(rt.grantId);
  const template = {
    refreshToken: {
      accountId: rt.accountId,
      acr: rt.acr,
      amr: rt.amr,
      authTime: rt.authTime,
      claims: rt.claims,
      expiresWithSession: rt.expiresWithSession,
      gty: rt.gty,
      nonce: rt.nonce,
      resource: rt.resource,
      scope: rt.scope,
      sessionUid: rt.sessionUid,
      sid: rt.sid,
    },
    grant: { accountId: grant.accountId, clientId: grant.clientId, oidcScope: grant.getOIDCScope(), resources: { ...grant.resources } },
  };
  const target = { name, url, provider, storage, redis, keyPrefix, refreshToken, template };
  target.baseline = await snapshotKeys(target);
  targets.set(name, target);
  return { name, url, refreshToken, sessions, redisPrefix: keyPrefix, policyPrefix };
}

async function snapshotKeys(target) {
  if (target.storage) {
    const { entries, grants, lookups } = target.storage;
    return { entries: new Set(entries.keys()), grants: new Set(grants.keys()), lookups: new Set(lookups.keys()) };
  }
  return new Set(await scanKeys(target.redis, `${target.keyPrefix}*`));
}

const handlers = {
  /**
   * `sessions`: how many signed-in sessions each plain provider keeps (scenario E's); `variants`:
   * the adapter/rotation combinations ("redis/on", …) to host a provider of each `kind` for (none:
   * a process for the storage table only).
   */
  async init({ redisUrl, prefix, alg, sessions: sessionCount, kinds = ['plain', 'mrrt', 'mrrt-nocache'], variants = [] }) {
    signing = signingKey(alg);
    const created = [];
    for (const variant of variants) {
      const [adapterKind, rotation] = variant.split('/');
      for (const kind of kinds) created.push(await createTarget({ adapterKind, rotate: rotation === 'on', kind, redisUrl, prefix, sessionCount }));
    }
    return created;
  },

  /** `count` fresh refresh tokens (each with its own Grant), cloned from the target's login. */
  async mint({ name, count }) {
    const { provider, template } = targets.get(name);
    const client = await provider.Client.find(CLIENT.client_id);
    const one = async () => {
      const grant = new provider.Grant({ accountId: template.grant.accountId, clientId: template.grant.clientId });
      if (template.grant.oidcScope) grant.addOIDCScope(template.grant.oidcScope);
      for (const [indicator, scope] of Object.entries(template.grant.resources)) grant.addResourceScope(indicator, scope);
      const grantId = await grant.save();
      return new provider.RefreshToken({ ...template.refreshToken, client, grantId, rotations: 0 }).save();
    };
    const tokens = [];
    for (let i = 0; i < count; i += MINT_BATCH) {
      const batch = Array.from({ length: Math.min(MINT_BATCH, count - i) }, one);
      tokens.push(...(await Promise.all(batch)));
    }
    return tokens;
  },

  /** Deletes everything written since the target's login (minted and rotated tokens, grants). */
  async purge({ name }) {
    const target = targets.get(name);
    const { baseline } = target;
    if (target.storage) {
      for (const map of ['entries', 'grants', 'lookups']) {
        for (const key of target.storage[map].keys()) if (!baseline[map].has(key)) target.storage[map].delete(key);
      }
      return 0;
    }
    const keys = (await scanKeys(target.redis, `${target.keyPrefix}*`)).filter((key) => !baseline.has(key));
    await unlinkAll(target.redis, keys);
    return keys.length;
  },

  /** The storage table: what one user's tokens for N APIs keep in Redis, with and without MRRT. */
  async storage({ redisUrl, prefix, counts }) {
    return measureStorage({ redisUrl, prefix, counts, jwk: signing });
  },

  /** CPU time this process has used so far (µs, user + system). */
  async cpu() {
    const { user, system } = process.cpuUsage();
    return user + system;
  },

  /** The interleaved measurement's CPU per scenario since the last call (and starts counting afresh). */
  async requestCpu() {
    const taken = Object.fromEntries(requestCpu);
    requestCpu.clear();
    return taken;
  },

  /** Starts the V8 CPU profiler (measurement windows only: minting, purging and IPC stay out). */
  async profileStart() {
    if (!profiler) {
      profiler = new Session();
      profiler.connect();
      await profiler.post('Profiler.enable');
    }
    await profiler.post('Profiler.start');
    return true;
  },

  /** Stops the profiler and writes the window's profile to `file`. */
  async profileStop({ file }) {
    const { profile } = await profiler.post('Profiler.stop');
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, JSON.stringify(profile));
    return file;
  },

  async gc() {
    globalThis.gc?.();
    return Boolean(globalThis.gc);
  },

  async close() {
    await Promise.all(
      servers.map(
        (server) =>
          new Promise((resolve) => {
            server.closeAllConnections();
            server.close(() => resolve());
          }),
      ),
    );
    await Promise.all(stores.map((store) => store.close?.()));
    await Promise.all(redisClients.map((redis) => redis.quit().catch(() => redis.disconnect())));
    return true;
  },
};

process.on('message', async ({ id, cmd, args }) => {
  try {
    const result = await handlers[cmd](args ?? {});
    process.send({ id, ok: true, result });
  } catch (err) {
    process.send({ id, ok: false, error: String(err?.stack ?? err) });
  }
});
// the runner owns this process: when it goes, so do we
process.on('disconnect', () => process.exit(0));
process.send({ ready: true, pid: process.pid });
