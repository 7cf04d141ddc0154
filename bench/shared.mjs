// What the bench server and the runner agree on: APIs, the client, its MRRT policy; Redis key helpers.

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

/** The refresh request body of each scenario (the refresh token goes first, see run.mjs). */
export const SCENARIOS = {
  A: { provider: 'plain', resource: API.A, label: 'plain oidc-provider, granted API' },
  B: { provider: 'mrrt', resource: API.A, label: 'withMrrt, granted API (pass-through)' },
  C: { provider: 'mrrt', resource: API.C, label: 'withMrrt, policy-only API (MRRT exchange)' },
  D: { provider: 'mrrt-nocache', resource: API.C, label: 'as C with `cache: false` (store read per exchange)' },
};

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
