// The servers that `npm run bench` measures, in their own process (forked by bench/run.mjs, driven
// over IPC). It hosts, per adapter (memory, redis) and rotation mode (off, on), a plain oidc-provider
// and a withMrrt provider with the same configuration, each on its own 127.0.0.1 port. Every
// provider gets one real authorization-code login (through its authorization endpoint and the
// interaction routes below); rotation-on pools are minted from that login's refresh token and Grant
// through the provider's public models.
import { generateKeyPairSync, createHash, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import path from 'node:path';
import http from 'node:http';

import { Redis } from 'ioredis';
import Provider from 'oidc-provider';

import {
  MemoryAdapter, MemoryPolicyStore, MemoryStorage, RedisAdapter, RedisPolicyStore, withMrrt,
} from '../dist/index.js';
import {
  CLIENT, LOGIN_RESOURCE, LOGIN_SCOPE, POLICY, RESOURCE_SERVERS, SKIP_CONSENT, DENY_LIST, scanKeys, unlinkAll,
} from './shared.mjs';
import { TTL, interactionHandler, providerConfiguration } from '../test/support/provider-fixture.mjs';

const MINT_BATCH = 500;

function signingKey(alg) {
  const pair = alg === 'RS256'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : alg === 'EdDSA'
      ? generateKeyPairSync('ed25519')
      : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...pair.privateKey.export({ format: 'jwk' }), kid: `bench-${alg}`, alg, use: 'sig' };
}

/** The shared provider setup (test/support/provider-fixture.mjs) with the bench's APIs, client and key. */
function configuration({ adapter, rotate, jwk }) {
  const resourceServers = Object.fromEntries(Object.entries(RESOURCE_SERVERS).map(([uri, info]) => (
    [uri, { ...info, jwt: { sign: { alg: jwk.alg } } }]
  )));
  return providerConfiguration({
    adapter,
    jwks: { keys: [jwk] },
    clients: [{ ...CLIENT, id_token_signed_response_alg: jwk.alg }],
    resourceServers,
    cookieKeys: ['a-bench-cookie-signing-key'],
    rotate,
    ttl: { ...TTL, AccessToken: 3600 },
    dpop: false,
    introspection: false,
  });
}

/** The interaction routes on plain node:http; everything else goes to the provider. */
function handler(provider) {
  const callback = provider.callback();
  const interactions = interactionHandler(provider);
  return (req, res) => interactions(req, res, () => callback(req, res));
}

/** One real login: authorization endpoint, login and consent interactions, code exchange (PKCE). */
async function login(url) {
  const jar = new Map();
  const step = async (path, init = {}) => {
    const res = await fetch(new URL(path, url), {
      ...init,
      redirect: 'manual',
      headers: { ...init.headers, cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') },
    });
    for (const cookie of res.headers.getSetCookie()) {
      const [pair] = cookie.split(';');
      const eq = pair.indexOf('=');
      jar.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    return res;
  };
  const location = (res) => {
    const value = res.headers.get('location');
    if (res.status !== 303 || !value) throw new Error(`login: expected a 303 redirect, got ${res.status}`);
    const { pathname, search } = new URL(value, url);
    return { pathname, search, href: value };
  };
  const verifier = randomBytes(32).toString('base64url');
  const auth = new URLSearchParams({
    client_id: CLIENT.client_id, response_type: 'code', scope: LOGIN_SCOPE, redirect_uri: CLIENT.redirect_uris[0],
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256',
    prompt: 'consent', state: 'st', resource: LOGIN_RESOURCE,
  });
  let res = await step(`/auth?${auth}`);
  res = await step(`${location(res).pathname}/login?sub=alice`, { method: 'POST' });
  res = await step(location(res).pathname);
  res = await step(`${location(res).pathname}/consent`, { method: 'POST' });
  res = await step(location(res).pathname);
  const code = new URL(location(res).href).searchParams.get('code');
  if (!code) throw new Error('login: no authorization code');
  res = await step('/token', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code, redirect_uri: CLIENT.redirect_uris[0], code_verifier: verifier,
      client_id: CLIENT.client_id, client_secret: CLIENT.client_secret, resource: LOGIN_RESOURCE,
    }).toString(),
  });
  const body = await res.json();
  if (res.status !== 200 || !body.refresh_token) throw new Error(`login: code exchange failed: ${res.status} ${JSON.stringify(body)}`);
  return body.refresh_token;
}

const targets = new Map(); // key "<adapter>/<rotation>/<plain|mrrt>" -> target
const servers = [];
const redisClients = [];
const stores = [];
let signing;
let profiler;

/** `kind`: 'plain' (oidc-provider), 'mrrt' (withMrrt, default options) or 'mrrt-nocache' (withMrrt, `cache: false`). */
async function createTarget({ adapterKind, rotate, kind, redisUrl, prefix }) {
  const mrrt = kind !== 'plain';
  const name = `${adapterKind}/${rotate ? 'on' : 'off'}/${kind}`;
  let adapter;
  let store;
  let storage;
  let redis;
  let keyPrefix;
  if (adapterKind === 'redis') {
    redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect();
    redisClients.push(redis);
    keyPrefix = `${prefix}${adapterKind}-${rotate ? 'on' : 'off'}-${kind}:`;
    adapter = RedisAdapter.factory(redis, { prefix: keyPrefix });
    if (mrrt) store = new RedisPolicyStore(redis, { prefix: `${keyPrefix}{policies}:` });
  } else {
    storage = new MemoryStorage();
    adapter = (model) => new MemoryAdapter(model, storage);
    if (mrrt) store = new MemoryPolicyStore();
  }
  if (store) {
    await store.set(CLIENT.client_id, POLICY);
    stores.push(store);
  }

  const server = http.createServer();
  servers.push(server);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  const ProviderClass = mrrt
    ? withMrrt(Provider, { store, allowSkippingConsent: SKIP_CONSENT, denyList: DENY_LIST, ...(kind === 'mrrt-nocache' ? { cache: false } : {}) })
    : Provider;
  const provider = new ProviderClass(url, configuration({ adapter, rotate, jwk: signing }));
  server.on('request', handler(provider));
  server.keepAliveTimeout = 60_000;

  const refreshToken = await login(url);
  const rt = await provider.RefreshToken.find(refreshToken);
  const grant = await provider.Grant.find(rt.grantId);
  const template = {
    refreshToken: {
      accountId: rt.accountId, acr: rt.acr, amr: rt.amr, authTime: rt.authTime, claims: rt.claims,
      expiresWithSession: rt.expiresWithSession, gty: rt.gty, nonce: rt.nonce, resource: rt.resource,
      scope: rt.scope, sessionUid: rt.sessionUid, sid: rt.sid,
    },
    grant: { accountId: grant.accountId, clientId: grant.clientId, oidcScope: grant.getOIDCScope(), resources: { ...grant.resources } },
  };
  const target = { name, url, provider, storage, redis, keyPrefix, refreshToken, template };
  target.baseline = await snapshotKeys(target);
  targets.set(name, target);
  return { name, url, refreshToken, redisPrefix: keyPrefix, policyPrefix: mrrt && keyPrefix ? `${keyPrefix}{policies}:` : undefined };
}

async function snapshotKeys(target) {
  if (target.storage) {
    const { entries, grants, lookups } = target.storage;
    return { entries: new Set(entries.keys()), grants: new Set(grants.keys()), lookups: new Set(lookups.keys()) };
  }
  return new Set(await scanKeys(target.redis, `${target.keyPrefix}*`));
}

const handlers = {
  async init({ redisUrl, prefix, alg }) {
    signing = signingKey(alg);
    const created = [];
    for (const adapterKind of ['memory', 'redis']) {
      for (const rotate of [false, true]) {
        for (const kind of ['plain', 'mrrt', 'mrrt-nocache']) created.push(await createTarget({ adapterKind, rotate, kind, redisUrl, prefix }));
      }
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
      tokens.push(...await Promise.all(batch));
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

  /** CPU time this process has used so far (µs, user + system). */
  async cpu() {
    const { user, system } = process.cpuUsage();
    return user + system;
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
    await Promise.all(servers.map((server) => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); })));
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
