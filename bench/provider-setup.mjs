// How the bench builds a provider: its configuration (the shared test fixture plus the bench's APIs,
// client and key), its node:http handler with the fixture's interaction routes, and one real login.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

import { MemoryAdapter, MemoryPolicyStore, MemoryStorage, RedisAdapter, RedisPolicyStore, withMrrt } from '../dist/index.js';
import { TTL, interactionHandler, providerConfiguration } from '../test/support/provider-fixture.mjs';
import { CLIENT, DENY_LIST, LOGIN_RESOURCE, LOGIN_SCOPE, POLICY, RESOURCE_SERVERS, SKIP_CONSENT } from './shared.mjs';

/**
 * What a bench provider of `kind` is built from: 'plain' (oidc-provider), 'mrrt' (withMrrt, default
 * options) or 'mrrt-nocache' (withMrrt, `cache: false`). Its adapter keeps everything in Redis under
 * `prefix` (`redis` given) or in a MemoryStorage of its own (`storage`); a withMrrt provider's policy
 * store already holds the bench client's policy, in Redis under `policyPrefix`.
 */
export async function providerParts({ kind, redis, prefix }) {
  const mrrt = kind !== 'plain';
  let adapter;
  let store;
  let storage;
  let policyPrefix;
  if (redis) {
    adapter = RedisAdapter.factory(redis, { prefix });
    if (mrrt) {
      policyPrefix = `${prefix}{policies}:`;
      store = new RedisPolicyStore(redis, { prefix: policyPrefix });
    }
  } else {
    storage = new MemoryStorage();
    adapter = (model) => new MemoryAdapter(model, storage);
    if (mrrt) store = new MemoryPolicyStore();
  }
  if (store) await store.set(CLIENT.client_id, POLICY);
  const ProviderClass = mrrt
    ? withMrrt(Provider, { store, allowSkippingConsent: SKIP_CONSENT, denyList: DENY_LIST, ...(kind === 'mrrt-nocache' ? { cache: false } : {}) })
    : Provider;
  return { adapter, store, storage, policyPrefix, ProviderClass };
}

export function signingKey(alg) {
  const pair =
    alg === 'RS256'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : alg === 'EdDSA'
        ? generateKeyPairSync('ed25519')
        : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...pair.privateKey.export({ format: 'jwk' }), kid: `bench-${alg}`, alg, use: 'sig' };
}

/**
 * The shared provider setup (test/support/provider-fixture.mjs) with the bench's APIs, client and key,
 * and what a deployment without MRRT needs so that its first-party app can get a token for another
 * API silently (scenario E), as Auth0 does for first-party apps:
 * - consent is skipped for the bench's first-party client and the APIs in `skipConsent` (the session's
 *   Grant gets the requested scopes: oidc-provider's `loadExistingGrant` hook, as its documentation
 *   suggests for first-party clients; the MRRT providers skip consent for the same APIs through
 *   `allowSkippingConsent`);
 * - the code exchange issues a refresh token when the user's Grant holds `offline_access`
 *   (oidc-provider drops `offline_access` from a request without `prompt=consent`, so `prompt=none`
 *   alone never yields one).
 * Neither hook runs on a refresh request, so scenarios A–D are untouched by them.
 */
export function configuration({ adapter, rotate, jwk, resourceServers: servers = RESOURCE_SERVERS, skipConsent = SKIP_CONSENT }) {
  const resourceServers = Object.fromEntries(Object.entries(servers).map(([uri, info]) => [uri, { ...info, jwt: { sign: { alg: jwk.alg } } }]));
  const base = providerConfiguration({
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
  return {
    ...base,
    async loadExistingGrant(ctx) {
      const { client, session, resourceServers: requested = {} } = ctx.oidc;
      const grantId = ctx.oidc.result?.consent?.grantId ?? session.grantIdFor(client.clientId);
      const existing = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      const indicators = Object.keys(requested);
      if (client.clientId !== CLIENT.client_id || !session.accountId || !indicators.every((api) => skipConsent.includes(api))) return existing;
      const grant = existing ?? new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      let changed = !existing;
      const oidcScope = [...ctx.oidc.requestParamOIDCScopes].filter((scope) => !grant.getOIDCScope().split(' ').includes(scope));
      if (oidcScope.length) {
        grant.addOIDCScope(oidcScope.join(' '));
        changed = true;
      }
      for (const [indicator, server] of Object.entries(requested)) {
        const held = new Set(grant.getResourceScopeEncountered(indicator).split(' '));
        const scope = [...ctx.oidc.requestParamScopes].filter((value) => server.scopes.has(value) && !held.has(value));
        if (scope.length) {
          grant.addResourceScope(indicator, scope.join(' '));
          changed = true;
        }
      }
      if (changed) await grant.save();
      return grant;
    },
    issueRefreshToken: (ctx, client, code) =>
      client.grantTypeAllowed('refresh_token') &&
      (code.scopes.has('offline_access') ||
        (code.kind === 'AuthorizationCode' && (ctx.oidc.entities.Grant?.getOIDCScope() ?? '').split(' ').includes('offline_access'))),
  };
}

/** The interaction routes on plain node:http; everything else goes to the provider. */
export function handler(provider) {
  const callback = provider.callback();
  const interactions = interactionHandler(provider);
  return (req, res) => interactions(req, res, () => callback(req, res));
}

/**
 * One real login: authorization endpoint, login and consent interactions, code exchange (PKCE).
 * Returns the refresh token and the session's cookies.
 */
export async function login(url) {
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
    client_id: CLIENT.client_id,
    response_type: 'code',
    scope: LOGIN_SCOPE,
    redirect_uri: CLIENT.redirect_uris[0],
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256',
    prompt: 'consent',
    state: 'st',
    resource: LOGIN_RESOURCE,
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
      grant_type: 'authorization_code',
      code,
      redirect_uri: CLIENT.redirect_uris[0],
      code_verifier: verifier,
      client_id: CLIENT.client_id,
      client_secret: CLIENT.client_secret,
      resource: LOGIN_RESOURCE,
    }).toString(),
  });
  const body = await res.json();
  if (res.status !== 200 || !body.refresh_token) throw new Error(`login: code exchange failed: ${res.status} ${JSON.stringify(body)}`);
  const cookie = [...jar]
    .filter(([name]) => name.startsWith('_session'))
    .map(([k, v]) => `${k}=${v}`)
    .join('; ');
  return { refreshToken: body.refresh_token, cookie };
}
