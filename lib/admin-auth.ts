import type { Request } from 'express';
import { errors as joseErrors, jwtVerify, type CryptoKey, type JWTVerifyGetKey, type KeyObject } from 'jose';

import type { AdminAuthorize, AdminDenial, AdminGrant } from './admin-router.js';
import { MrrtTypeError } from './errors.js';

/** Options of {@link jwtAuthorizer}. */
export interface JwtAuthorizerOptions {
  /** The issuer's verification key(s): a jose key set such as `createLocalJWKSet(jwks)` / `createRemoteJWKSet(url)`, or one key. */
  key: JWTVerifyGetKey | CryptoKey | KeyObject;
  /** Expected `iss`. */
  issuer: string;
  /** Expected `aud`: the admin API's own resource indicator. */
  audience: string;
  /** The scope a token must carry. */
  scope: string;
  /** Accepted algorithms. Default `['RS256', 'PS256', 'ES256', 'EdDSA']`; never `none`. */
  algorithms?: string[];
}

const deny = (status: 401 | 403, error: string, description: string): AdminDenial => ({ status, error, error_description: description });

/**
 * An {@link AdminAuthorize} function accepting only a bearer JWT access token (RFC 9068,
 * `typ: at+jwt`) from `issuer`, for `audience`, carrying `scope`, verified with jose.
 *
 * @example
 * ```ts
 * authorize: jwtAuthorizer({ key: createLocalJWKSet(publicJwks), issuer, audience: 'https://admin.example.com', scope: 'mrrt:admin' })
 * ```
 */
export function jwtAuthorizer(options: JwtAuthorizerOptions): AdminAuthorize {
  if (typeof options !== 'object' || options === null) throw new MrrtTypeError('jwtAuthorizer options must be an object');
  const { key, issuer, audience, scope, algorithms = ['RS256', 'PS256', 'ES256', 'EdDSA'] } = options;
  if (key === undefined || key === null || (typeof key !== 'function' && typeof key !== 'object'))
    throw new MrrtTypeError('"key" option must be a jose key or key set');
  for (const [name, value] of [
    ['issuer', issuer],
    ['audience', audience],
    ['scope', scope],
  ] as const) {
    if (typeof value !== 'string' || value.length === 0) throw new MrrtTypeError(`"${name}" option must be a non-empty string`);
  }
  if (!Array.isArray(algorithms) || algorithms.length === 0 || algorithms.some((alg) => typeof alg !== 'string' || alg.toLowerCase() === 'none')) {
    throw new MrrtTypeError('"algorithms" option must be a non-empty list of algorithms, without "none"');
  }

  return async function authorizeAdminToken(req: Request): Promise<AdminGrant | AdminDenial> {
    const header = req.get('authorization');
    // the scheme is case-insensitive (RFC 7235 §2.1), the token is RFC 6750's b64token
    const match = header === undefined ? null : /^bearer ([A-Za-z0-9._~+/-]+=*)$/i.exec(header);
    if (!match) return deny(401, 'invalid_token', 'a bearer access token is required');
    try {
      const { payload } = await jwtVerify(match[1]!, key as JWTVerifyGetKey, { issuer, audience, algorithms, typ: 'at+jwt' });
      const scopes = typeof payload.scope === 'string' ? payload.scope.split(' ') : [];
      if (!scopes.includes(scope)) return deny(403, 'insufficient_scope', `the token lacks the "${scope}" scope`);
      const actor = typeof payload.client_id === 'string' ? payload.client_id : payload.sub;
      return { actor: actor ?? 'unknown' };
    } catch (err) {
      if (err instanceof joseErrors.JOSEError) return deny(401, 'invalid_token', 'the access token is invalid, expired or not for this API');
      throw err;
    }
  };
}
