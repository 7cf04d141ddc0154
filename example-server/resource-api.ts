import express, { type Request, type RequestHandler, type Response, type Router } from 'express';
import * as jose from 'jose';
import type { ResourceServer } from 'oidc-provider';

import type { DemoApi, ExampleConfig } from './config.js';

/** The verified access token of a request, in `res.locals.accessToken`. */
/** What the provider issues for a demo API (its `getResourceServerInfo` answer): RS256 JWTs. */
export const resourceServerOf = (api: DemoApi): ResourceServer => ({
  scope: api.scopes.join(' '),
  audience: api.audience,
  accessTokenFormat: 'jwt',
  accessTokenTTL: api.accessTokenTTL,
  jwt: { sign: { alg: 'RS256' } },
});

export interface VerifiedToken extends jose.JWTPayload {
  readonly scope?: string;
  readonly client_id?: string;
}

export interface ResourceServerOptions {
  /** The provider's public signing keys (jose `createLocalJWKSet`). */
  readonly keys: jose.JWTVerifyGetKey;
  readonly issuer: string;
  /** This API's own audience; a token for any other audience is refused. */
  readonly audience: string;
  /** The scopes a request must carry (all of them). */
  readonly scopes: readonly string[];
  /** The `realm` of the `WWW-Authenticate` challenge. */
  readonly realm: string;
}

const quote = (value: string): string => `"${value.replace(/["\\]/g, '')}"`;

function challenge(res: Response, status: 401 | 403, realm: string, error: string | undefined, description: string, scope?: string): void {
  const params = [`realm=${quote(realm)}`];
  if (error) params.push(`error=${quote(error)}`, `error_description=${quote(description)}`);
  if (scope) params.push(`scope=${quote(scope)}`);
  res.set('WWW-Authenticate', `Bearer ${params.join(', ')}`);
  res.status(status).json({ error: error ?? 'invalid_request', error_description: description });
}

function describe(err: unknown): string {
  if (err instanceof jose.errors.JWTExpired) return 'the access token has expired';
  if (err instanceof jose.errors.JWTClaimValidationFailed) {
    if (err.claim === 'aud') return 'the access token is not for this API (aud mismatch)';
    if (err.claim === 'iss') return 'the access token was not issued by this server (iss mismatch)';
    if (err.claim === 'typ') return 'not a JWT access token (typ must be at+jwt)';
    return `the access token's "${err.claim}" claim is invalid`;
  }
  if (err instanceof jose.errors.JWSSignatureVerificationFailed || err instanceof jose.errors.JWKSNoMatchingKey) {
    return 'the access token signature does not verify';
  }
  return 'the access token is malformed or invalid';
}

/**
 * Express middleware of a resource server: verifies `Authorization: Bearer <JWT access token>` with
 * jose against the provider's keys, requiring this API's `aud`, the provider's `iss`, `typ: at+jwt`
 * and every scope in `scopes`. Refuses with RFC 6750 errors: 401 `invalid_token` (or no error code
 * when no token was sent), 403 `insufficient_scope`.
 */
export function requireAccessToken(options: ResourceServerOptions): RequestHandler {
  const { keys, issuer, audience, scopes, realm } = options;
  return async (req: Request, res: Response, next) => {
    const header = req.get('authorization');
    if (!header) {
      challenge(res, 401, realm, undefined, 'an access token is required (Authorization: Bearer <token>)');
      return;
    }
    const match = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header);
    if (!match) {
      challenge(res, 401, realm, 'invalid_token', 'the Authorization header must be "Bearer <token>"');
      return;
    }
    let payload: VerifiedToken;
    try {
      ({ payload } = await jose.jwtVerify<VerifiedToken>(match[1]!, keys, {
        issuer,
        audience,
        typ: 'at+jwt',
        algorithms: ['RS256'],
      }));
    } catch (err) {
      challenge(res, 401, realm, 'invalid_token', describe(err));
      return;
    }
    const granted = new Set(typeof payload.scope === 'string' ? payload.scope.split(' ') : []);
    const missing = scopes.filter((scope) => !granted.has(scope));
    if (missing.length) {
      challenge(res, 403, realm, 'insufficient_scope', `the access token lacks the scope ${missing.join(' ')}`, scopes.join(' '));
      return;
    }
    res.locals.accessToken = payload;
    next();
  };
}

const apiOf = (config: ExampleConfig, audience: string): DemoApi => {
  const api = config.apis.find((candidate) => candidate.audience === audience);
  if (!api) throw new Error(`example config: no API ${audience}`);
  return api;
};

/** The two demo APIs: `GET /messages` (messages:read) and `GET /billing` (billing:read), each accepting only its own audience. */
export function demoApis(config: ExampleConfig, keys: jose.JWTVerifyGetKey, issuer: string, audiences: { messages: string; billing: string }): Router {
  const router = express.Router();
  const messages = apiOf(config, audiences.messages);
  const billing = apiOf(config, audiences.billing);
  const common = (token: VerifiedToken) => ({ subject: token.sub, client_id: token.client_id, scope: token.scope });

  router.get(
    '/messages',
    requireAccessToken({ keys, issuer, audience: messages.audience, scopes: ['messages:read'], realm: messages.audience }),
    (_req, res) => {
      const token = res.locals.accessToken as VerifiedToken;
      res.json({ api: messages.name, audience: messages.audience, ...common(token), messages: config.data.messages[token.sub ?? ''] ?? [] });
    },
  );
  router.get('/billing', requireAccessToken({ keys, issuer, audience: billing.audience, scopes: ['billing:read'], realm: billing.audience }), (_req, res) => {
    const token = res.locals.accessToken as VerifiedToken;
    res.json({ api: billing.name, audience: billing.audience, ...common(token), invoices: config.data.invoices[token.sub ?? ''] ?? [] });
  });
  return router;
}
