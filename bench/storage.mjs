// The storage table (run inside the bench server process): what one user's tokens for N APIs keep in
// Redis, with MRRT (one login, then one refresh-token exchange per further API) and without it (one
// login, then per further API a silent authorization request and its code exchange, each giving
// another refresh token). Every combination gets its own provider under its own key prefix, so every
// key under that prefix is this one user's; each key is counted by model and sized with
// `MEMORY USAGE`, then the prefix is deleted.
import http from 'node:http';

import { Redis } from 'ioredis';
import Provider from 'oidc-provider';

import { RedisAdapter, RedisPolicyStore, withMrrt } from '../dist/index.js';
import { configuration, handler, login } from './provider-setup.mjs';
import {
  DENY_LIST,
  RESOURCE_SERVERS,
  STORAGE_APIS,
  apiScope,
  codeExchangeBody,
  codeFromRedirect,
  deleteByPrefix,
  refreshBody,
  scanKeys,
  silentAuthorizationQuery,
} from './shared.mjs';

/** Models whose entries outlive the requests that wrote them (the rest expire within minutes). */
const KEPT = new Set(['RefreshToken', 'Grant', 'Session', 'grant index', 'Session uid lookup']);

const form = { 'content-type': 'application/x-www-form-urlencoded' };

async function post(url, body) {
  const res = await fetch(`${url}/token`, { method: 'POST', headers: form, body });
  const json = await res.json();
  if (res.status !== 200 || !json.access_token) throw new Error(`storage: token request failed: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** A token for `api` without MRRT: silent authorization with the session cookie, then the code exchange. */
async function silentToken(url, cookie, api) {
  const res = await fetch(`${url}/auth?${silentAuthorizationQuery(api, apiScope(api))}`, { headers: { cookie }, redirect: 'manual' });
  const code = codeFromRedirect(res.headers.get('location'));
  if (res.status !== 303 || !code) throw new Error(`storage: silent authorization for ${api}: ${res.status} ${res.headers.get('location')}`);
  const body = await post(url, codeExchangeBody(code, api));
  if (!body.refresh_token) throw new Error(`storage: the code exchange for ${api} gave no refresh token`);
  return body;
}

function modelOf(key, prefix) {
  const rest = key.slice(prefix.length);
  if (rest.startsWith('grant:')) return 'grant index';
  if (rest.startsWith('uid:Session:')) return 'Session uid lookup';
  return rest.slice(0, rest.indexOf(':'));
}

/** One user's keys, by model, after a login and tokens for `apis` APIs in all. */
async function oneUser({ redisUrl, prefix, jwk, mrrt, rotate, apis }) {
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  const server = http.createServer();
  let store;
  try {
    const servers = {
      ...RESOURCE_SERVERS,
      ...Object.fromEntries(STORAGE_APIS.map((api) => [api, RESOURCE_SERVERS[api] ?? { scope: apiScope(api), accessTokenFormat: 'jwt' }])),
    };
    let ProviderClass = Provider;
    if (mrrt) {
      store = new RedisPolicyStore(redis, { prefix: `${prefix}{policies}:` });
      await store.set(
        'app',
        STORAGE_APIS.slice(1).map((api) => ({ audience: api, scope: apiScope(api).split(' ') })),
      );
      ProviderClass = withMrrt(Provider, { store, allowSkippingConsent: STORAGE_APIS, denyList: DENY_LIST });
    }
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${server.address().port}`;
    const provider = new ProviderClass(
      url,
      configuration({
        adapter: RedisAdapter.factory(redis, { prefix }),
        rotate,
        jwk,
        resourceServers: servers,
        skipConsent: STORAGE_APIS,
      }),
    );
    server.on('request', handler(provider));

    const signedIn = await login(url); // the token for the first API
    let { refreshToken } = signedIn;
    for (const api of STORAGE_APIS.slice(1, apis)) {
      if (mrrt) {
        const body = await post(url, refreshBody(refreshToken, api));
        refreshToken = body.refresh_token ?? refreshToken;
      } else {
        await silentToken(url, signedIn.cookie, api);
      }
    }

    const byModel = {};
    let refreshTokensLive = 0;
    for (const key of await scanKeys(redis, `${prefix}*`)) {
      if (key.startsWith(`${prefix}{policies}:`)) continue;
      const model = modelOf(key, prefix);
      byModel[model] ??= { keys: 0, bytes: 0 };
      byModel[model].keys += 1;
      byModel[model].bytes += Number(await redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0'));
      if (model === 'RefreshToken' && !(await redis.hexists(key, 'consumed'))) refreshTokensLive += 1;
    }
    const sum = (pick) =>
      Object.entries(byModel)
        .filter(([model]) => pick(model))
        .reduce((total, [, v]) => total + v.bytes, 0);
    return {
      rotation: rotate ? 'on' : 'off',
      way: mrrt ? 'mrrt' : 'without',
      apis,
      refresh_tokens: byModel.RefreshToken?.keys ?? 0,
      refresh_tokens_live: refreshTokensLive,
      grants: byModel.Grant?.keys ?? 0,
      sessions: byModel.Session?.keys ?? 0,
      kept_bytes: sum((model) => KEPT.has(model)),
      transient_bytes: sum((model) => !KEPT.has(model)),
      by_model: byModel,
    };
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await store?.close?.();
    await deleteByPrefix(redis, prefix);
    await redis.quit().catch(() => redis.disconnect());
  }
}

/** Rows for rotation off and on, with and without MRRT, for each N in `counts` (N ≤ 10). */
export async function measureStorage({ redisUrl, prefix, counts, jwk }) {
  const rows = [];
  for (const rotate of [false, true]) {
    for (const mrrt of [true, false]) {
      for (const apis of counts) {
        if (apis < 1 || apis > STORAGE_APIS.length) throw new Error(`storage: N must be 1–${STORAGE_APIS.length}`);
        const userPrefix = `${prefix}storage-${rotate ? 'on' : 'off'}-${mrrt ? 'mrrt' : 'without'}-${apis}:`;
        rows.push(await oneUser({ redisUrl, prefix: userPrefix, jwk, mrrt, rotate, apis }));
      }
    }
  }
  return rows;
}
