// What the bench server and the runner agree on: APIs, the client, its MRRT policy, the requests of
// each scenario; Redis helpers.
import { createHash } from 'node:crypto';

export const API = {
  A: 'https://api-a.example.com', // granted at login: scenarios A and B refresh for it
  C: 'https://api-c.example.com', // only in the client's MRRT policy: scenario C exchanges for it
  D: 'https://api-d.example.com',
  E: 'https://api-e.example.com',
  ADMIN: 'https://admin.example.com',
};

/** Every API issues JWT access tokens, so A and C sign the same kind of token. */
export const RESOURCE_SERVERS = {
  [API.A]: { scope: 'a:read a:write', accessTokenFormat: 'jwt' },
  [API.C]: { scope: 'c:read c:write', accessTokenFormat: 'jwt' },
  [API.D]: { scope: 'd:read d:write', accessTokenFormat: 'jwt' },
  [API.E]: { scope: 'e:read', accessTokenFormat: 'jwt' },
  [API.ADMIN]: { scope: 'admin:write', accessTokenFormat: 'jwt' },
};

export const SKIP_CONSENT = [API.A, API.C, API.D, API.E];
export const DENY_LIST = [API.ADMIN];

/** A confidential first-party client (client_secret_post). */
export const CLIENT = {
  client_id: 'app',
  client_secret: 'app-secret-app-secret-app-secret',
  first_party: true,
  redirect_uris: ['https://app.example.com/cb'],
  token_endpoint_auth_method: 'client_secret_post',
};

export const LOGIN_SCOPE = 'openid offline_access a:read';
export const LOGIN_RESOURCE = API.A;

/** The client's policy: three APIs, none of them granted at login. */
export const POLICY = [
  { audience: API.C, scope: ['c:read', 'c:write'] },
  { audience: API.D, scope: ['d:read', 'd:write'] },
  { audience: API.E, scope: ['e:read'] },
];

/**
 * The scenarios: the provider each runs on and the API it asks for. A–D are one refresh request
 * each; E obtains a token for a new API without MRRT, as an app must today: a silent authorization
 * request (`prompt=none`, PKCE, the user's session cookie) and the code exchange for that API.
 */
export const SCENARIOS = {
  A: { provider: 'plain', resource: API.A, label: 'plain oidc-provider, granted API' },
  B: { provider: 'mrrt', resource: API.A, label: 'withMrrt, granted API (pass-through)' },
  C: { provider: 'mrrt', resource: API.C, label: 'withMrrt, policy-only API (MRRT exchange)' },
  D: { provider: 'mrrt-nocache', resource: API.C, label: 'as C with `cache: false` (store read per exchange)' },
  E: { provider: 'plain', resource: API.C, silent: true, label: 'plain oidc-provider, new API without MRRT (silent authorization + code exchange)' },
  F: { provider: 'plain', resource: API.A, label: "as A in processes of its own (A′: the method's resolution)" },
};

/** Scenario E's PKCE pair: one verifier for every request (the server hashes it each time all the same). */
export const SILENT_VERIFIER = 'bench-silent-authorization-pkce-verifier-0123456789abcdef';
const SILENT_CHALLENGE = createHash('sha256').update(SILENT_VERIFIER).digest('base64url');

/** Scenario E's first request: `GET /auth?` this, with the session cookie. */
export function silentAuthorizationQuery(resource, scope) {
  return new URLSearchParams({
    client_id: CLIENT.client_id,
    response_type: 'code',
    scope: `openid offline_access ${scope}`,
    redirect_uri: CLIENT.redirect_uris[0],
    code_challenge: SILENT_CHALLENGE,
    code_challenge_method: 'S256',
    prompt: 'none',
    state: 'bench',
    resource,
  }).toString();
}

/** The code in the redirect that answers a silent authorization request (undefined for an error). */
export function codeFromRedirect(location) {
  if (typeof location !== 'string') return undefined;
  return new URL(location, CLIENT.redirect_uris[0]).searchParams.get('code') ?? undefined;
}

/** Scenario E's second request: the code exchange for the API. */
export function codeExchangeBody(code, resource) {
  return new URLSearchParams({
    grant_type: 'authorization_code',
    code: code ?? '',
    redirect_uri: CLIENT.redirect_uris[0],
    code_verifier: SILENT_VERIFIER,
    client_id: CLIENT.client_id,
    client_secret: CLIENT.client_secret,
    resource,
  }).toString();
}

/** The storage table's APIs: the login's, then the nine others an app gets tokens for (N ≤ 10). */
export const STORAGE_APIS = [API.A, API.C, API.D, API.E, ...Array.from({ length: 6 }, (_, i) => `https://api-s${i + 1}.example.com`)];

/** The scopes of an API the bench knows (RESOURCE_SERVERS, or a storage-table API). */
export const apiScope = (api) => RESOURCE_SERVERS[api]?.scope ?? `${new URL(api).hostname.split('.')[0]}:read`;

/** The adapter/rotation combinations a run measures. */
export const VARIANTS = ['memory/off', 'memory/on', 'redis/off', 'redis/on'];

/** The variants an `--only` list names (all of them without one). */
export function parseVariants(only) {
  if (only === undefined) return VARIANTS;
  const named = [...new Set(only.split(',').map((v) => v.trim()))];
  for (const v of named) if (!VARIANTS.includes(v)) throw new Error(`--only: unknown variant "${v}" (one of ${VARIANTS.join(', ')})`);
  return named;
}

/** The bench server's name for the provider a scenario runs on in a variant ("memory/off", …). */
export const targetName = (variant, scenario) => `${variant}/${SCENARIOS[scenario].provider}`;

/** Whether the variant rotates refresh tokens (a fresh token per request). */
export const rotating = (variant) => variant.endsWith('/on');

export function refreshBody(refreshToken, resource) {
  return new URLSearchParams({
    grant_type: 'refresh_token',
    refresh_token: refreshToken,
    client_id: CLIENT.client_id,
    client_secret: CLIENT.client_secret,
    resource,
  }).toString();
}

const SCAN_LIMIT = 1_000_000; // SCAN iterations; far more than any run needs

/** Every key matching `pattern` (SCAN, bounded). */
export async function scanKeys(redis, pattern) {
  const keys = [];
  let cursor = '0';
  for (let i = 0; i < SCAN_LIMIT; i += 1) {
    const [next, batch] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    keys.push(...batch);
    cursor = next;
    if (cursor === '0') return keys;
  }
  throw new Error(`SCAN ${pattern} did not finish`);
}

/** Deletes `keys`, 1 000 per UNLINK. */
export async function unlinkAll(redis, keys) {
  for (let i = 0; i < keys.length; i += 1000) await redis.unlink(...keys.slice(i, i + 1000));
}

/** Deletes every key under `prefix`; returns how many there were. */
export async function deleteByPrefix(redis, prefix) {
  const keys = await scanKeys(redis, `${prefix}*`);
  await unlinkAll(redis, keys);
  return keys.length;
}

/** Waits until Redis has freed what UNLINK handed to its background thread (at most `ms`). */
export async function lazyFreed(redis, ms = 5000) {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    if (parseInfo(await redis.info('memory')).lazyfree_pending_objects === '0') return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The fields of an `INFO` answer. */
export function parseInfo(text) {
  const out = {};
  for (const line of text.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon > 0 && !line.startsWith('#')) out[line.slice(0, colon)] = line.slice(colon + 1);
  }
  return out;
}
