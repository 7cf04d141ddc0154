// The one provider setup every test server, provider process and benchmark provider is built from:
// the APIs, the clients, the oidc-provider configuration and the interaction routes (login and
// consent without pages). Plain JavaScript, so that child processes (instance.mjs) and the bench
// load it as it is; test/support/fixture.ts types it through provider-fixture.d.mts.
import { errors } from 'oidc-provider';

export const API = Object.freeze({
  A: 'https://api-a.example.com',
  B: 'https://api-b.example.com',
  C: 'https://api-c.example.com',
  ADMIN: 'https://admin.example.com',
  CONSENT: 'https://consent.example.com',
  GONE: 'https://gone.example.com',
});

/** The APIs oidc-provider knows (GONE is in policies only: a resource server that went away). */
export const RESOURCE_SERVERS = Object.freeze({
  [API.A]: { scope: 'a:read a:write', accessTokenFormat: 'jwt' },
  [API.B]: { scope: 'b:read b:write', accessTokenFormat: 'jwt', accessTokenTTL: 300 },
  [API.C]: { scope: 'c:read c:write', accessTokenFormat: 'opaque' },
  [API.ADMIN]: { scope: 'admin:write', accessTokenFormat: 'jwt' },
  [API.CONSENT]: { scope: 'x:read', accessTokenFormat: 'jwt' },
});

export const SKIP_CONSENT = Object.freeze([API.A, API.B, API.C, API.ADMIN, API.GONE]);

export const CLIENTS = Object.freeze({
  app: {
    client_id: 'app',
    client_secret: 'app-secret-app-secret-app-secret',
    first_party: true,
    redirect_uris: ['https://app.example.com/cb'],
    token_endpoint_auth_method: 'client_secret_post',
  },
  spa: { client_id: 'spa', first_party: true, redirect_uris: ['https://spa.example.com/cb'], token_endpoint_auth_method: 'none' },
  partner: {
    client_id: 'partner',
    client_secret: 'partner-secret-partner-secret-ps',
    redirect_uris: ['https://partner.example.com/cb'],
    token_endpoint_auth_method: 'client_secret_post',
  },
  other: {
    client_id: 'other',
    client_secret: 'other-secret-other-secret-other-s',
    first_party: true,
    redirect_uris: ['https://other.example.com/cb'],
    token_endpoint_auth_method: 'client_secret_post',
  },
});

export const TTL = Object.freeze({
  AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 3600,
  AuthorizationCode: 60,
  Grant: 14 * 24 * 3600,
  IdToken: 3600,
  Interaction: 3600,
  RefreshToken: 14 * 24 * 3600,
  Session: 14 * 24 * 3600,
});

/**
 * The oidc-provider configuration of a test or bench provider. Everything but `jwks` has a default;
 * `rotate` undefined keeps oidc-provider's own rotateRefreshToken.
 */
export function providerConfiguration({
  adapter,
  jwks,
  clients = Object.values(CLIENTS),
  resourceServers = RESOURCE_SERVERS,
  cookieKeys = ['a-test-cookie-signing-key'],
  rotate,
  ttl = TTL,
  dpop = true,
  introspection = true,
}) {
  return {
    ...(adapter === undefined ? {} : { adapter }),
    clients: clients.map((client) => ({ grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], ...client })),
    jwks,
    cookies: { keys: cookieKeys },
    findAccount: (_ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    ttl: { ...ttl },
    features: {
      devInteractions: { enabled: false },
      dPoP: { enabled: dpop },
      introspection: { enabled: introspection },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        getResourceServerInfo: (_ctx, resource) => {
          const info = resourceServers[resource];
          if (!info) throw new errors.InvalidTarget();
          return info;
        },
      },
    },
    ...(rotate === undefined ? {} : { rotateRefreshToken: rotate }),
  };
}

/**
 * The interaction routes without pages: `POST /interaction/:uid/login?sub=…` signs `sub` in (default
 * alice), `POST /interaction/:uid/consent` grants every scope and API the prompt asks for. A node:http
 * handler: answers those two and calls `next` (or answers 404) for anything else.
 */
export function interactionHandler(provider) {
  return async (req, res, next) => {
    const { pathname, searchParams } = new URL(req.url, 'http://interaction.invalid');
    const step = req.method === 'POST' ? /^\/interaction\/[^/]+\/(login|consent)$/.exec(pathname)?.[1] : undefined;
    if (!step) {
      if (next) return next();
      res.statusCode = 404;
      return res.end();
    }
    try {
      if (step === 'login') {
        await provider.interactionFinished(req, res, { login: { accountId: searchParams.get('sub') ?? 'alice' } }, { mergeWithLastSubmission: false });
        return undefined;
      }
      const { prompt, params, session, grantId } = await provider.interactionDetails(req, res);
      const grant = grantId ? await provider.Grant.find(grantId) : new provider.Grant({ accountId: session.accountId, clientId: String(params.client_id) });
      const { missingOIDCScope, missingResourceScopes } = prompt.details;
      if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
      for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) grant.addResourceScope(indicator, scopes.join(' '));
      await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
    } catch (err) {
      if (next) return next(err);
      res.statusCode = 500;
      res.end(String(err?.stack ?? err));
    }
    return undefined;
  };
}
