// The Auth0-SDK recipe (docs/auth0.md) against a real oidc-provider over HTTP: auth0Configuration,
// auth0LogoutParameters and withMrrt's Auth0 profile, requested the way Auth0's SDKs request them,
// and Auth0's own Node SDK (@auth0/auth0-auth-js) doing the MRRT exchange. The tenant answers as
// https://tenant.test/ behind a TLS-terminating proxy; every request really goes to 127.0.0.1.
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { AuthClient } from '@auth0/auth0-auth-js';
import express from 'express';
import * as jose from 'jose';
import Provider, { errors, type Configuration } from 'oidc-provider';

import { AUTH0_ROUTES, MemoryPolicyStore, auth0Configuration, auth0LogoutParameters, withMrrt } from '../lib/index.js';

const DOMAIN = 'tenant.test';
const ISSUER = `https://${DOMAIN}/`;
const MESSAGES = 'https://messages.example.com';
const BILLING = 'https://billing.example.com';
const CONSENT_API = 'https://consent.example.com';
const APIS: Record<string, string> = { [MESSAGES]: 'read:messages write:messages', [BILLING]: 'read:invoices write:invoices', [CONSENT_API]: 'read:x' };
const SPA = { client_id: 'spa', redirect_uri: 'https://app.test/callback', origin: 'https://app.test' };
const SERVER_APP = { client_id: 'server-app', client_secret: 'server-app-secret-server-app-secret', redirect_uri: 'https://server.test/callback' };
const SDK_SCOPE = 'openid profile email offline_access';

let server: http.Server;
let loopback: string;
let provider: Provider;
const tokenRequests: string[] = [];

/** fetch as if https://tenant.test/ were reachable: the request goes to the loopback server, with the proxy headers. */
const tenantFetch = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
  const request = new Request(input, init);
  const url = new URL(request.url);
  if (url.host !== DOMAIN) throw new Error(`only ${DOMAIN} is reachable in this test, not ${url.host}`);
  const headers = new Headers(request.headers);
  headers.set('x-forwarded-proto', 'https');
  headers.set('x-forwarded-host', DOMAIN);
  return fetch(new URL(url.pathname + url.search, loopback), {
    method: request.method,
    headers,
    body: request.body,
    redirect: 'manual',
    ...(request.body ? { duplex: 'half' } : {}),
  } as RequestInit);
};

/** A browser's cookie jar for the tenant, and redirects followed by hand until one leaves the tenant. */
class Browser {
  readonly cookies = new Map<string, string>();

  async get(url: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.cookies.size) headers.set('cookie', [...this.cookies].map(([name, value]) => `${name}=${value}`).join('; '));
    const res = await tenantFetch(url, { ...init, headers });
    for (const cookie of res.headers.getSetCookie()) {
      const [pair] = cookie.split(';');
      const [name, value] = pair!.split('=') as [string, string];
      if (/expires=Thu, 01 Jan 1970/i.test(cookie)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    return res;
  }

  /** Follows redirects within the tenant; returns the first response that is not one, or the URL it redirects out to. */
  async follow(url: string, init?: RequestInit): Promise<{ res: Response; outside?: URL }> {
    let res = await this.get(url, init);
    for (let hops = 0; hops < 10 && res.status >= 300 && res.status < 400; hops += 1) {
      const next = new URL(res.headers.get('location')!, url);
      if (next.host !== DOMAIN) return { res, outside: next };
      url = next.href;
      res = await this.get(url);
    }
    return { res };
  }
}

const pkce = () => {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
};

/** What auth0-spa-js sends to /authorize (less its telemetry), with overrides. */
function authorizeUrl(params: Record<string, string | undefined>): { url: string; verifier: string } {
  const { verifier, challenge } = pkce();
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries({
    client_id: SPA.client_id,
    scope: `${SDK_SCOPE} read:messages`,
    audience: MESSAGES,
    redirect_uri: SPA.redirect_uri,
    response_type: 'code',
    response_mode: 'query',
    state: randomBytes(8).toString('hex'),
    nonce: randomBytes(8).toString('hex'),
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...params,
  }))
    if (value !== undefined) query.set(name, value);
  return { url: `${ISSUER}authorize?${query}`, verifier };
}

async function tokenRequest(params: Record<string, string>, headers: Record<string, string> = {}): Promise<Response> {
  tokenRequests.push(params.grant_type!);
  return tenantFetch(`${ISSUER}oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(params),
  });
}

interface Tokens {
  access_token: string;
  refresh_token?: string;
  id_token?: string;
  scope?: string;
  resource?: string;
}

/** Signs alice in as the SPA does and redeems the code as the SPA does (no resource, no audience). */
async function spaLogin(params: Record<string, string | undefined> = {}): Promise<{ tokens: Tokens; nonce: string }> {
  const { url, verifier } = authorizeUrl(params);
  const { outside } = await new Browser().follow(url);
  expect(outside?.origin).toBe(SPA.origin);
  const code = outside!.searchParams.get('code');
  expect(code).toBeTruthy();
  const res = await tokenRequest({
    grant_type: 'authorization_code',
    client_id: SPA.client_id,
    code: code!,
    code_verifier: verifier,
    redirect_uri: SPA.redirect_uri,
  });
  expect(res.status).toBe(200);
  return { tokens: (await res.json()) as Tokens, nonce: new URL(url).searchParams.get('nonce')! };
}

const claims = (jwt: string) => jose.decodeJwt(jwt);

beforeAll(async () => {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await jose.exportJWK(privateKey)), kid: 'tenant-rs256', alg: 'RS256', use: 'sig' };
  const { privateKey: ecKey } = await jose.generateKeyPair('ES256', { extractable: true });
  // an EC key listed first: the ID token must still be RS256
  const ecJwk = { ...(await jose.exportJWK(ecKey)), kid: 'tenant-es256', alg: 'ES256', use: 'sig' };

  const store = new MemoryPolicyStore();
  await store.set(SPA.client_id, [{ audience: BILLING, scope: ['read:invoices'] }]);
  await store.set(SERVER_APP.client_id, [{ audience: BILLING, scope: ['read:invoices'] }]);
  const MrrtProvider = withMrrt(Provider, { store, allowSkippingConsent: [MESSAGES, BILLING], profile: 'auth0' });

  const configuration: Configuration = {
    clients: [
      {
        client_id: SPA.client_id,
        first_party: true,
        application_type: 'web',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: [SPA.redirect_uri],
        post_logout_redirect_uris: [`${SPA.origin}/`],
      },
      {
        client_id: 'partner',
        application_type: 'web',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: ['https://partner.test/callback'],
      },
      {
        client_id: SERVER_APP.client_id,
        client_secret: SERVER_APP.client_secret,
        first_party: true,
        token_endpoint_auth_method: 'client_secret_post',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: [SERVER_APP.redirect_uri],
      },
    ] as Configuration['clients'],
    jwks: { keys: [ecJwk, jwk] } as Configuration['jwks'],
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    claims: { openid: ['sub'], profile: ['name'], email: ['email', 'email_verified'] },
    findAccount: (_ctx, sub) => ({ accountId: sub, claims: () => ({ sub, name: 'Alice', email: 'alice@example.com', email_verified: true }) }),
    interactions: { url: (_ctx, interaction) => `/u/${interaction.uid}` },
    rotateRefreshToken: true,
    ttl: { AccessToken: 600, AuthorizationCode: 60, Grant: 3600, IdToken: 3600, Interaction: 600, RefreshToken: 3600, Session: 3600 },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        getResourceServerInfo: (_ctx, resource) => {
          const scope = APIS[resource];
          if (!scope) throw new errors.InvalidTarget();
          return { scope, audience: resource, accessTokenFormat: 'jwt', accessTokenTTL: 600, jwt: { sign: { alg: 'RS256' } } };
        },
      },
    },
  };
  provider = new MrrtProvider(ISSUER, auth0Configuration(configuration, { allowSkippingConsent: [MESSAGES, BILLING] }));
  provider.proxy = true;
  provider.use(auth0LogoutParameters());

  const app = express();
  app.set('trust proxy', true);
  // the login page signs alice in at once; any other prompt (consent) is shown as a page the test can see
  app.get('/u/:uid', async (req, res) => {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name === 'login') {
      await provider.interactionFinished(req, res, { login: { accountId: 'alice' } }, { mergeWithLastSubmission: false });
      return;
    }
    res.type('text').send(`prompt: ${details.prompt.name}`);
  });
  app.use(provider.callback());
  server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  loopback = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  });
});

describe('auth0Configuration: the tenant as Auth0 SDKs find it', () => {
  test("discovery: the issuer with its trailing slash and Auth0's endpoint paths", async () => {
    const res = await tenantFetch(`${ISSUER}.well-known/openid-configuration`);
    const metadata = (await res.json()) as Record<string, unknown>;
    expect(metadata).toMatchObject({
      issuer: ISSUER,
      authorization_endpoint: `${ISSUER}authorize`,
      token_endpoint: `${ISSUER}oauth/token`,
      end_session_endpoint: `${ISSUER}v2/logout`,
      revocation_endpoint: `${ISSUER}oauth/revoke`,
      userinfo_endpoint: `${ISSUER}userinfo`,
      jwks_uri: `${ISSUER}.well-known/jwks.json`,
    });
    expect(AUTH0_ROUTES.token).toBe('/oauth/token');
  });

  test('audience at /authorize, no consent for a first-party app, a refresh token without prompt=consent, the granted API at the code exchange, an RS256 ID token', async () => {
    const { tokens, nonce } = await spaLogin();
    expect(claims(tokens.access_token)).toMatchObject({ aud: MESSAGES, scope: 'read:messages', client_id: SPA.client_id, iss: ISSUER });
    expect(tokens.refresh_token).toBeTruthy();
    expect(tokens.scope).toBe('read:messages'); // oidc-provider answers the access token's scope here; the SDKs do not compare it
    expect(jose.decodeProtectedHeader(tokens.id_token!).alg).toBe('RS256');
    expect(claims(tokens.id_token!)).toMatchObject({ iss: ISSUER, aud: SPA.client_id, sub: 'alice', nonce, email: 'alice@example.com', name: 'Alice' });
  });

  test('a plain refresh (no audience, no scope) is for the granted API and carries an ID token', async () => {
    const { tokens } = await spaLogin();
    const res = await tokenRequest({
      grant_type: 'refresh_token',
      client_id: SPA.client_id,
      refresh_token: tokens.refresh_token!,
      redirect_uri: SPA.redirect_uri,
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Tokens;
    expect(claims(body.access_token)).toMatchObject({ aud: MESSAGES, scope: 'read:messages' });
    expect(claims(body.id_token!)).toMatchObject({ iss: ISSUER, aud: SPA.client_id, sub: 'alice' });
    expect(body.refresh_token).not.toBe(tokens.refresh_token);
  });

  test('the MRRT exchange as auth0-spa-js sends it: every requested scope back in the response, an ID token, the billing token', async () => {
    const { tokens } = await spaLogin();
    const scope = `${SDK_SCOPE} read:invoices`;
    const res = await tokenRequest(
      {
        grant_type: 'refresh_token',
        client_id: SPA.client_id,
        refresh_token: tokens.refresh_token!,
        redirect_uri: SPA.redirect_uri,
        audience: BILLING,
        scope,
      },
      { 'auth0-client': Buffer.from('{"name":"auth0-spa-js","version":"2.28.3"}').toString('base64'), origin: SPA.origin },
    );
    expect(res.status).toBe(200);
    expect(res.headers.get('access-control-allow-origin')).toBe(SPA.origin);
    const body = (await res.json()) as Tokens;
    expect(body.scope!.split(' ').sort()).toEqual(scope.split(' ').sort());
    expect(body.resource).toBe(BILLING);
    expect(claims(body.access_token)).toMatchObject({ aud: BILLING, scope: 'read:invoices', client_id: SPA.client_id, sub: 'alice' });
    expect(claims(body.id_token!)).toMatchObject({ iss: ISSUER, aud: SPA.client_id });
  });

  test("CORS: a preflight with Auth0-Client passes; a token request from an origin that is none of the client's redirect URIs is refused", async () => {
    const preflight = await tenantFetch(`${ISSUER}oauth/token`, {
      method: 'OPTIONS',
      headers: { origin: SPA.origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'auth0-client,content-type' },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get('access-control-allow-headers')).toContain('auth0-client');
    const { tokens } = await spaLogin();
    const refused = await tokenRequest(
      { grant_type: 'refresh_token', client_id: SPA.client_id, refresh_token: tokens.refresh_token! },
      { origin: 'https://elsewhere.test' },
    );
    expect(refused.status).toBe(400);
    expect(await refused.json()).toMatchObject({ error: 'invalid_request' });
    const still = await tokenRequest({ grant_type: 'refresh_token', client_id: SPA.client_id, refresh_token: tokens.refresh_token! }, { origin: SPA.origin });
    expect(still.status).toBe(200);
  });

  test('audience and resource naming different APIs at /authorize is invalid_request; the same API twice is fine', async () => {
    const { outside } = await new Browser().follow(authorizeUrl({ resource: BILLING }).url);
    expect(outside?.searchParams.get('error')).toBe('invalid_request');
    expect(outside?.searchParams.get('error_description')).toMatch(/audience and resource/);
    const same = await spaLogin({ resource: MESSAGES });
    expect(claims(same.tokens.access_token).aud).toBe(MESSAGES);
  });

  test('an unknown audience at /authorize is invalid_target, as for resource', async () => {
    const { outside } = await new Browser().follow(authorizeUrl({ audience: 'https://unknown.example.com' }).url);
    expect(outside?.searchParams.get('error')).toBe('invalid_target');
  });

  test('a third-party client gets the consent prompt and no offline_access without prompt=consent, as on plain oidc-provider', async () => {
    const { res } = await new Browser().follow(authorizeUrl({ client_id: 'partner', redirect_uri: 'https://partner.test/callback' }).url);
    expect(await res.text()).toBe('prompt: consent');
  });

  test('a first-party client still gets the consent prompt for an API that does not allow skipping it', async () => {
    const { res } = await new Browser().follow(authorizeUrl({ audience: CONSENT_API, scope: `${SDK_SCOPE} read:x` }).url);
    expect(await res.text()).toBe('prompt: consent');
  });

  test('/v2/logout with client_id and returnTo: no confirmation page to click, back at returnTo; an unregistered returnTo is refused', async () => {
    const browser = new Browser();
    const { url } = authorizeUrl({});
    await browser.follow(url);
    const page = await browser.get(`${ISSUER}v2/logout?client_id=${SPA.client_id}&returnTo=${encodeURIComponent(`${SPA.origin}/`)}&auth0Client=e30`);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain("document.getElementById('op.logoutForm').submit()");
    const action = /action="([^"]+)"/.exec(html)![1]!;
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(html)![1]!;
    expect(html).toContain('name="logout" value="yes"');
    const confirmed = await browser.follow(action, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ xsrf, logout: 'yes' }),
    });
    expect(confirmed.outside?.href).toBe(`${SPA.origin}/`);
    // signed out: the next authorization asks to sign in again (the login page signs in at once, so a new session cookie appears)
    expect([...browser.cookies.keys()]).not.toContain('_session');

    const refused = await browser.get(`${ISSUER}v2/logout?client_id=${SPA.client_id}&returnTo=${encodeURIComponent('https://elsewhere.test/')}`);
    expect(refused.status).toBe(400);
  });

  test("the operator's own hooks win: routes, logoutSource, clientBasedCORS; extraParams kept; defaultResource asked when no audience is given", async () => {
    const logoutSource = () => undefined;
    const clientBasedCORS = () => true;
    const asked: unknown[] = [];
    const merged = auth0Configuration({
      routes: { token: '/token' },
      extraParams: ['ui_hint'],
      clientBasedCORS,
      features: {
        rpInitiatedLogout: { logoutSource },
        resourceIndicators: {
          defaultResource: (_ctx, _client, oneOf) => {
            asked.push(oneOf);
            return 'https://default.example.com';
          },
        },
      },
    });
    expect(merged.routes).toMatchObject({ token: '/token', authorization: '/authorize', end_session: '/v2/logout' });
    expect(merged.features?.rpInitiatedLogout?.logoutSource).toBe(logoutSource);
    expect(merged.clientBasedCORS).toBe(clientBasedCORS);
    expect(Object.keys(merged.extraParams as object).sort()).toEqual(['audience', 'ui_hint']);
    const ctx = (route: string, audience?: string) => ({ oidc: { route, params: { audience } } }) as never;
    const defaultResource = merged.features!.resourceIndicators!.defaultResource!;
    expect(await defaultResource(ctx('authorization', MESSAGES), {} as never)).toBe(MESSAGES);
    expect(await defaultResource(ctx('authorization'), {} as never)).toBe('https://default.example.com');
    expect(await defaultResource(ctx('token', MESSAGES), {} as never)).toBe('https://default.example.com');
    expect(asked).toEqual([undefined, undefined]);
    expect(() => auth0LogoutParameters('v2/logout')).toThrow('path must be a path starting with "/"');
  });

  test('option errors name the option', () => {
    expect(() => auth0Configuration({}, { allowSkippingConsent: 'x' as never })).toThrow('"allowSkippingConsent" option must be');
    expect(() => auth0Configuration({}, { isFirstParty: true as never })).toThrow('"isFirstParty" option must be a function');
    expect(() => auth0Configuration({}, { other: 1 } as never)).toThrow('unknown option "other"');
  });
});

describe('@auth0/auth0-auth-js (Node) against the tenant', () => {
  test('sign in, redeem the code, then the same refresh token for the billing API through MRRT', async () => {
    const auth = new AuthClient({
      domain: DOMAIN,
      clientId: SERVER_APP.client_id,
      clientSecret: SERVER_APP.client_secret,
      customFetch: tenantFetch as typeof fetch,
    });
    const { authorizationUrl, codeVerifier } = await auth.buildAuthorizationUrl({
      authorizationParams: { redirect_uri: SERVER_APP.redirect_uri, scope: `${SDK_SCOPE} read:messages`, audience: MESSAGES },
    });
    const { outside } = await new Browser().follow(authorizationUrl.href);
    expect(outside?.origin).toBe('https://server.test');
    const login = await auth.getTokenByCode(outside!, { codeVerifier });
    expect(claims(login.accessToken)).toMatchObject({ aud: MESSAGES, scope: 'read:messages', iss: ISSUER });
    expect(login.refreshToken).toBeTruthy();

    const before = tokenRequests.length;
    const billing = await auth.getTokenByRefreshToken({ refreshToken: login.refreshToken!, audience: BILLING, scope: `${SDK_SCOPE} read:invoices` });
    expect(claims(billing.accessToken)).toMatchObject({ aud: BILLING, scope: 'read:invoices', client_id: SERVER_APP.client_id, sub: 'alice' });
    expect(billing.idToken).toBeTruthy();
    expect(tokenRequests.length).toBe(before); // auth0-auth-js made the requests, not this test's helper

    const refused = auth.getTokenByRefreshToken({ refreshToken: billing.refreshToken ?? login.refreshToken!, audience: 'https://unknown.example.com' });
    await expect(refused).rejects.toMatchObject({ cause: expect.objectContaining({ error: 'invalid_target' }) });
  });
});
