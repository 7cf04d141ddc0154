// The example server end to end, over HTTP on 127.0.0.1: sign-in through its own login and consent
// pages, the demo APIs, the MRRT exchange, the home page story and the admin API with access tokens
// from the same provider. Once with in-memory stores (the `npm start` default), once on real Redis.
import { createHash, randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import * as jose from 'jose';
import request from 'supertest';

import { ADMIN_API, BILLING_API, MESSAGES_API, config } from '../example-server/config.js';
import { generateJwks, startExampleServer, type RunningExample } from '../example-server/server.js';
import { deleteKeys } from './support/redis-keys.js';

const DEMO = config.clients.find((client) => client.client_id === 'demo-app')!;
const ADMIN = config.clients.find((client) => client.client_id === 'admin-cli')!;
const basic = (client: { client_id: string; client_secret: string }): string =>
  `Basic ${Buffer.from(`${client.client_id}:${client.client_secret}`).toString('base64')}`;
const JWT = /eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/;

const pathOf = (location: string | undefined): string => {
  if (!location) throw new Error('expected a redirect');
  const { pathname, search } = new URL(location, 'http://placeholder');
  return pathname + search;
};
const unescapeHtml = (value: string): string =>
  value
    .replace(/&amp;/g, '&')
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>');
const formAction = (page: string, suffix: string): string => {
  const match = new RegExp(`<form[^>]*action="([^"]*/${suffix})"`).exec(page);
  if (!match) throw new Error(`no form posting to */${suffix} in:\n${page}`);
  return unescapeHtml(match[1]!);
};

type Agent = ReturnType<typeof request.agent>;

/**
 * From an authorization request (a path on the server) through the example's real login form and
 * consent page, like a browser: returns the redirect to the client's redirect URI (with the code).
 */
async function throughLoginAndConsent(agent: Agent, authorizationPath: string, username: string, password: string): Promise<string> {
  let res = await agent.get(authorizationPath);
  expect(res.status).toBe(303);
  res = await agent.get(pathOf(res.headers.location));
  expect(res.status).toBe(200);
  expect(res.text).toContain('Sign in');
  expect(res.text).toContain('name="username"');
  expect(res.text).toContain('name="password"');
  res = await agent.post(formAction(res.text, 'login')).type('form').send({ username, password });
  expect(res.status).toBe(303);
  res = await agent.get(pathOf(res.headers.location));
  expect(res.status).toBe(303);
  res = await agent.get(pathOf(res.headers.location));
  expect(res.status).toBe(200);
  expect(res.text).toContain('Allow access?');
  expect(res.text).toContain(MESSAGES_API);
  res = await agent.post(formAction(res.text, 'confirm')).type('form').send({});
  expect(res.status).toBe(303);
  res = await agent.get(pathOf(res.headers.location));
  expect(res.status).toBe(303);
  return res.headers.location!;
}

const MODES: [string, string | undefined][] = [
  ['in-memory stores', undefined],
  ['Redis (RedisAdapter + RedisPolicyStore)', process.env.MRRT_TEST_REDIS_URL],
];

describe.each(MODES)('example server with %s', (mode, redisUrl) => {
  const redisPrefix = `mrrt-test:example-${randomBytes(6).toString('hex')}:`;
  const logs: Record<string, unknown>[] = [];
  let server: RunningExample;
  let jwks: { keys: jose.JWK[] };
  let redis: Redis | undefined;

  beforeAll(async () => {
    if (redisUrl === undefined && mode.startsWith('Redis')) throw new Error('MRRT_TEST_REDIS_URL is not set (test/setup/global-setup.js sets it)');
    jwks = await generateJwks();
    server = await startExampleServer({
      jwks,
      logSink: (entry) => logs.push({ ...entry }),
      ...(redisUrl ? { redisUrl, redisPrefix } : {}),
    });
    if (redisUrl) redis = new Redis(redisUrl);
  });

  afterAll(async () => {
    await server?.close();
    if (redis) {
      await deleteKeys(redis, redisPrefix);
      await redis.quit();
    }
  });

  const tokenRequest = (params: Record<string, string>, client: { client_id: string; client_secret: string } = DEMO) =>
    request(server.url).post('/oidc/token').set('Authorization', basic(client)).type('form').send(new URLSearchParams(params).toString());
  const api = (path: string, token?: string) => {
    const req = request(server.url).get(path);
    return token === undefined ? req : req.set('Authorization', `Bearer ${token}`);
  };

  /** Signs `username` in as the demo-app client (code + PKCE), the test acting as the client. */
  async function signInAsClient(
    username = 'alice',
    password = 'wonderland',
  ): Promise<{ access_token: string; refresh_token: string; id_token: string; scope: string }> {
    const agent = request.agent(server.url);
    const verifier = randomBytes(32).toString('base64url');
    const params = new URLSearchParams({
      client_id: DEMO.client_id,
      response_type: 'code',
      redirect_uri: `${server.url}/callback`,
      scope: config.demoApp.loginScope,
      resource: MESSAGES_API,
      code_challenge: createHash('sha256').update(verifier).digest('base64url'),
      code_challenge_method: 'S256',
      state: 'test-state',
      nonce: 'test-nonce',
      prompt: 'consent',
    });
    const callback = new URL(await throughLoginAndConsent(agent, `/oidc/auth?${params}`, username, password));
    expect(callback.origin + callback.pathname).toBe(`${server.url}/callback`);
    expect(callback.searchParams.get('state')).toBe('test-state');
    const res = await tokenRequest({
      grant_type: 'authorization_code',
      code: callback.searchParams.get('code')!,
      redirect_uri: `${server.url}/callback`,
      code_verifier: verifier,
      resource: MESSAGES_API,
    });
    expect(res.status).toBe(200);
    return res.body;
  }

  async function adminToken(extra: Record<string, string> = { scope: 'mrrt:admin', resource: ADMIN_API }): Promise<string> {
    const res = await tokenRequest({ grant_type: 'client_credentials', ...extra }, ADMIN);
    expect(res.status).toBe(200);
    return res.body.access_token as string;
  }

  /** A JWT access token signed with the server's own key (the test supplied its JWKS). */
  async function forgeWithServerKey(claims: jose.JWTPayload): Promise<string> {
    const jwk = jwks.keys[0]!;
    return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: jwk.kid!, typ: 'at+jwt' }).sign(await jose.importJWK(jwk, 'RS256'));
  }

  test('serves the discovery document with its own keys, not the development keys', async () => {
    const res = await request(server.url).get('/oidc/.well-known/openid-configuration');
    expect(res.status).toBe(200);
    expect(res.body.issuer).toBe(`${server.url}/oidc`);
    const keys = await request(server.url).get('/oidc/jwks');
    expect(keys.body.keys.map((key: jose.JWK) => key.kid)).toEqual([jwks.keys[0]!.kid]);
    expect(keys.body.keys[0].d).toBeUndefined();
    const health = await request(server.url).get('/healthz');
    expect(health.body).toEqual({ status: 'ok', mode: redisUrl ? 'redis' : 'memory' });
  });

  test('the login page refuses a wrong password and stays on the login step', async () => {
    const agent = request.agent(server.url);
    let res = await agent.post('/signin');
    expect(res.status).toBe(303);
    res = await agent.get(pathOf(res.headers.location));
    res = await agent.get(pathOf(res.headers.location));
    expect(res.text).toContain('alice'); // demo credentials are shown
    expect(res.text).toContain('wonderland');
    const action = formAction(res.text, 'login');
    res = await agent.post(action).type('form').send({ username: 'alice', password: 'wrong' });
    expect(res.status).toBe(401);
    expect(res.text).toContain('Unknown username or wrong password.');
    expect(res.headers.location).toBeUndefined();
  });

  test('home page story: sign in, messages API, MRRT exchange for billing, billing API, audience mix-up refused', async () => {
    const agent = request.agent(server.url);
    let res = await agent.get('/');
    expect(res.status).toBe(200);
    expect(res.text).toContain('action="/signin"');

    res = await agent.post('/signin');
    expect(res.status).toBe(303);
    const authorization = new URL(res.headers.location!);
    expect(authorization.pathname).toBe('/oidc/auth');
    expect(authorization.searchParams.get('code_challenge_method')).toBe('S256');
    expect(authorization.searchParams.get('resource')).toBe(MESSAGES_API);

    const callback = await throughLoginAndConsent(agent, pathOf(res.headers.location), 'bob', 'builder');
    res = await agent.get(pathOf(callback));
    expect(res.status).toBe(303);
    expect(res.headers.location).toBe('/');

    res = await agent.get('/');
    expect(res.text).toContain('Signed in as <strong>Bob Builder</strong>');
    expect(res.text).toContain(`&quot;aud&quot;: &quot;${MESSAGES_API}&quot;`);

    // each action comes back to its own step of the page, where the user is looking
    expect((await agent.post('/demo/messages').expect(303)).headers.location).toBe('/#step-2');
    res = await agent.get('/');
    expect(res.text).toContain('id="step-2"');
    expect(res.text).toMatch(/with the messages access token →\s*<strong class="ok">200<\/strong>/);
    expect(res.text).toContain('Can you fix the garden wall?');

    expect((await agent.post('/demo/exchange').expect(303)).headers.location).toBe('/#step-3');
    res = await agent.get('/');
    expect(res.text).toMatch(/response <strong class="ok">200<\/strong>/);
    expect(res.text).toContain(`&quot;aud&quot;: &quot;${BILLING_API}&quot;`);
    expect(res.text).toContain(`&quot;resource&quot;: &quot;${BILLING_API}&quot;`);
    expect(res.text).toContain('(the same refresh token, still valid)');

    await agent.post('/demo/billing').expect(303);
    res = await agent.get('/');
    expect(res.text).toMatch(/billing access token \(from the MRRT exchange\) →\s*<strong class="ok">200<\/strong>/);
    expect(res.text).toContain('INV-2001');

    await agent.post('/demo/mixup').expect(303);
    res = await agent.get('/');
    expect(res.text).toMatch(/messages access token \(wrong audience\) →\s*<strong class="bad">401<\/strong>/);
    expect(res.text).toContain('error=&quot;invalid_token&quot;');
    expect(res.text).toContain('aud mismatch');

    // the browser never sees a token, only decoded contents and fingerprints
    expect(res.text).not.toMatch(JWT);

    // signing out ends the app session and, through the provider's RP-initiated logout, the provider session
    res = await agent.post('/signout').expect(303);
    const logout = new URL(res.headers.location!);
    expect(logout.pathname).toBe('/oidc/session/end');
    expect(logout.searchParams.get('post_logout_redirect_uri')).toBe(`${server.url}/`);
    expect(logout.searchParams.get('id_token_hint')).toMatch(JWT);
    res = await agent.get(pathOf(res.headers.location));
    expect(res.status).toBe(200);
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(res.text)?.[1];
    const confirm = /action="([^"]+)"/.exec(res.text)?.[1];
    expect(xsrf && confirm).toBeTruthy();
    res = await agent.post(pathOf(confirm!)).type('form').send({ xsrf: xsrf!, logout: 'yes' });
    expect(res.status).toBe(303);
    expect(res.headers.location).toBe(`${server.url}/`);
    res = await agent.get('/');
    expect(res.text).toContain('action="/signin"');
    expect(res.text).not.toContain('Signed in as');
    // the next sign-in asks who you are again (another user can sign in)
    res = await agent.post('/signin');
    res = await agent.get(pathOf(res.headers.location));
    res = await agent.get(pathOf(res.headers.location));
    expect(res.status).toBe(200);
    expect(res.text).toContain('name="username"');
  });

  test('denying consent says so on the home page', async () => {
    const agent = request.agent(server.url);
    let res = await agent.post('/signin');
    res = await agent.get(pathOf(res.headers.location));
    res = await agent.get(pathOf(res.headers.location));
    res = await agent.post(formAction(res.text, 'login')).type('form').send({ username: 'alice', password: 'wonderland' });
    res = await agent.get(pathOf(res.headers.location));
    res = await agent.get(pathOf(res.headers.location));
    expect(res.text).toContain('Allow access?');
    res = await agent.post(formAction(res.text, 'deny')).type('form').send({});
    expect(res.status).toBe(303);
    res = await agent.get(pathOf(res.headers.location));
    res = await agent.get(pathOf(res.headers.location));
    expect(res.headers.location).toBe('/#step-1');
    res = await agent.get('/');
    expect(res.text).toContain('Sign-in denied: the user denied the app access');
  });

  test('protocol: messages token for the messages API, MRRT exchange of the same refresh token for billing, each API accepts only its own audience', async () => {
    const tokens = await signInAsClient();
    const messagesClaims = jose.decodeJwt(tokens.access_token);
    expect(messagesClaims).toMatchObject({
      aud: MESSAGES_API,
      iss: `${server.url}/oidc`,
      sub: 'alice',
      client_id: 'demo-app',
      scope: 'messages:read messages:write',
    });
    expect(jose.decodeProtectedHeader(tokens.access_token)).toMatchObject({ alg: 'RS256', typ: 'at+jwt', kid: jwks.keys[0]!.kid });

    let res = await api('/api/messages', tokens.access_token);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ subject: 'alice', audience: MESSAGES_API, messages: config.data.messages.alice });

    const exchange = await tokenRequest({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, audience: BILLING_API });
    expect(exchange.status).toBe(200);
    expect(exchange.body).toMatchObject({ resource: BILLING_API, scope: 'billing:read', token_type: 'Bearer' });
    const billingToken = exchange.body.access_token as string;
    expect(jose.decodeJwt(billingToken)).toMatchObject({ aud: BILLING_API, sub: 'alice', client_id: 'demo-app', scope: 'billing:read' });

    res = await api('/api/billing', billingToken);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ subject: 'alice', audience: BILLING_API, invoices: config.data.invoices.alice });

    // each API refuses the other's token
    res = await api('/api/billing', tokens.access_token);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toMatch(/^Bearer realm="https:\/\/billing\.example\.com", error="invalid_token"/);
    expect(res.body.error).toBe('invalid_token');
    res = await api('/api/messages', billingToken);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toContain('error="invalid_token"');

    // no token, a garbage token, a token from another issuer
    res = await api('/api/billing');
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Bearer realm="https://billing.example.com"');
    res = await api('/api/billing', 'not-a-jwt');
    expect(res.status).toBe(401);
    const foreign = await forgeWithServerKey({
      iss: 'https://evil.example',
      aud: BILLING_API,
      sub: 'alice',
      scope: 'billing:read',
      exp: Math.floor(Date.now() / 1000) + 60,
    });
    res = await api('/api/billing', foreign);
    expect(res.status).toBe(401);
    expect(res.body.error_description).toContain('iss');
    // a billing token without billing:read: 403 insufficient_scope
    const noScope = await forgeWithServerKey({
      iss: server.issuer,
      aud: BILLING_API,
      sub: 'alice',
      scope: 'billing:write',
      exp: Math.floor(Date.now() / 1000) + 60,
    });
    res = await api('/api/billing', noScope);
    expect(res.status).toBe(403);
    expect(res.headers['www-authenticate']).toContain('error="insufficient_scope"');
    expect(res.headers['www-authenticate']).toContain('scope="billing:read"');

    // the same refresh token still works: for billing again, and for the original API
    const again = await tokenRequest({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, audience: BILLING_API });
    expect(again.status).toBe(200);
    const plain = await tokenRequest({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, resource: MESSAGES_API });
    expect(plain.status).toBe(200);
    expect(jose.decodeJwt(plain.body.access_token)).toMatchObject({ aud: MESSAGES_API, scope: 'messages:read messages:write' });

    // the admin API is deny-listed for MRRT (and not an API demo-app may use at all)
    const denied = await tokenRequest({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, audience: ADMIN_API });
    expect(denied.status).toBe(400);
    expect(denied.body.error).toBe('invalid_target');

    // one structured log line per MRRT exchange, with no token value in any log line
    const exchanges = logs.filter((entry) => entry.event === 'mrrt.exchange');
    expect(exchanges).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          level: 'info',
          outcome: 'issued',
          clientId: 'demo-app',
          subject: 'alice',
          requestedAudience: BILLING_API,
          resolvedAudience: BILLING_API,
          grantedScope: 'billing:read',
        }),
        expect.objectContaining({ outcome: 'refused', clientId: 'demo-app', requestedAudience: ADMIN_API, error: 'invalid_target' }),
      ]),
    );
    expect(logs.filter((entry) => entry.event === 'http.request' && entry.path === '/api/billing').map((entry) => entry.status)).toEqual(
      expect.arrayContaining([200, 401, 403]),
    );
    const logText = logs.map((entry) => JSON.stringify(entry)).join('\n');
    for (const secret of [tokens.access_token, tokens.refresh_token, tokens.id_token, billingToken, DEMO.client_secret]) expect(logText).not.toContain(secret);
    expect(logText).not.toMatch(JWT);

    // exchange counters for a metrics system
    const metrics = await request(server.url).get('/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.text).toMatch(/^mrrt_exchanges_total\{outcome="issued",reason="policy"\} [1-9]/m);
    expect(metrics.text).toMatch(/^mrrt_exchanges_total\{outcome="refused",reason="[a-z_]+"\} [1-9]/m);

    if (redis) {
      // it really runs on Redis: the refresh token and the policy are stored under the prefix
      expect(await redis.exists(`${redisPrefix}oidc:RefreshToken:${tokens.refresh_token}`)).toBe(1);
      expect(await redis.exists(`${redisPrefix}{policies}:policy:demo-app`)).toBe(1);
    }
  });

  describe('admin API', () => {
    const policyPath = '/admin/clients/demo-app/policy';
    const seeded = config.policies.find((policy) => policy.clientId === 'demo-app')!.policies;

    const stored = async (): Promise<unknown> => {
      const record = await server.store.get('demo-app');
      return record && { policies: record.policies, version: record.version };
    };
    /** Runs a refused request and checks that the stored policy is exactly as before. */
    async function refused(run: () => Promise<request.Response>, status: number, error: string): Promise<request.Response> {
      const before = await stored();
      const res = await run();
      expect({ status: res.status, error: res.body.error }).toEqual({ status, error });
      expect(await stored()).toEqual(before);
      return res;
    }

    test('admin-cli gets an admin token with client credentials; GET lists and reads the seeded policy', async () => {
      const token = await adminToken();
      expect(jose.decodeJwt(token)).toMatchObject({ aud: ADMIN_API, scope: 'mrrt:admin', client_id: 'admin-cli', iss: server.issuer });
      // without `resource`, admin-cli's tokens default to the admin API
      expect(jose.decodeJwt(await adminToken({ scope: 'mrrt:admin' }))).toMatchObject({ aud: ADMIN_API, scope: 'mrrt:admin' });

      let res = await request(server.url).get('/admin/clients').set('Authorization', `Bearer ${token}`);
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ clients: ['demo-app'] });
      res = await request(server.url).get(policyPath).set('Authorization', `Bearer ${token}`);
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ client_id: 'demo-app', policies: seeded, version: expect.any(String) });
      expect(res.headers.etag).toBe(`"${res.body.version}"`);
    });

    test('admin-cli cannot get tokens for the demo APIs, and demo-app cannot get admin tokens', async () => {
      let res = await tokenRequest({ grant_type: 'client_credentials', scope: 'messages:read', resource: MESSAGES_API }, ADMIN);
      expect(res.status).toBe(400);
      expect(res.body.error).toBe('invalid_target');
      res = await tokenRequest({ grant_type: 'client_credentials', scope: 'mrrt:admin', resource: ADMIN_API });
      expect(res.status).toBe(400);
      expect(res.body.error_description).toBe('requested grant type is not allowed for this client');
      // a user cannot sign demo-app in for the admin API either
      const params = new URLSearchParams({
        client_id: DEMO.client_id,
        response_type: 'code',
        redirect_uri: `${server.url}/callback`,
        scope: 'openid mrrt:admin',
        resource: ADMIN_API,
        code_challenge: createHash('sha256').update('x'.repeat(43)).digest('base64url'),
        code_challenge_method: 'S256',
        state: 's',
      });
      res = await request(server.url).get(`/oidc/auth?${params}`);
      expect(res.status).toBe(303);
      const redirect = new URL(res.headers.location!);
      expect(redirect.origin + redirect.pathname).toBe(`${server.url}/callback`);
      expect(redirect.searchParams.get('error')).toBe('invalid_target');
    });

    test('refused: no token, a messages token, a token without the admin scope, an expired token; nothing changes', async () => {
      const body = { policies: [{ audience: BILLING_API, scope: ['billing:read'] }] };
      const put = (token?: string) => {
        const req = request(server.url).put(policyPath).type('json').send(body);
        return token === undefined ? req : req.set('Authorization', `Bearer ${token}`);
      };

      let res = await refused(() => put(), 401, 'invalid_token');
      expect(res.headers['www-authenticate']).toContain('Bearer');
      await refused(() => request(server.url).get(policyPath), 401, 'invalid_token');
      await refused(() => request(server.url).delete(policyPath), 401, 'invalid_token');

      // an access token this provider issued, for the messages API
      const user = await signInAsClient('bob', 'builder');
      await refused(() => put(user.access_token), 401, 'invalid_token');
      await refused(() => request(server.url).delete(policyPath).set('Authorization', `Bearer ${user.access_token}`), 401, 'invalid_token');

      // admin-cli's own token for the admin API, but without the mrrt:admin scope
      const unscoped = await adminToken({ resource: ADMIN_API });
      expect(jose.decodeJwt(unscoped).aud).toBe(ADMIN_API);
      expect(jose.decodeJwt(unscoped).scope).toBeUndefined();
      res = await refused(() => put(unscoped), 403, 'insufficient_scope');
      await refused(() => request(server.url).delete(policyPath).set('Authorization', `Bearer ${unscoped}`), 403, 'insufficient_scope');

      // expired: signed with the server's key (the test supplied the JWKS), valid in every other respect
      const now = Math.floor(Date.now() / 1000);
      const claims = { iss: server.issuer, aud: ADMIN_API, client_id: 'admin-cli', sub: 'admin-cli', scope: 'mrrt:admin', jti: randomBytes(8).toString('hex') };
      const expired = await forgeWithServerKey({ ...claims, iat: now - 600, exp: now - 300 });
      await refused(() => put(expired), 401, 'invalid_token');
      // control: the same token with a future exp is accepted, so the expiry alone was the reason
      const fresh = await forgeWithServerKey({ ...claims, iat: now, exp: now + 300 });
      res = await request(server.url).get(policyPath).set('Authorization', `Bearer ${fresh}`);
      expect(res.status).toBe(200);
    });

    test('PUT validates against the provider and reports every problem with its JSON path; a stale If-Match is 412; nothing changes', async () => {
      const token = await adminToken();
      const current = await request(server.url).get(policyPath).set('Authorization', `Bearer ${token}`);
      const etag = current.headers.etag!;
      const put = (body: unknown, ifMatch = etag) =>
        request(server.url).put(policyPath).set('Authorization', `Bearer ${token}`).set('If-Match', ifMatch).type('json').send(JSON.stringify(body));

      let res = await refused(() => put({ policies: [{ audience: 'billing', scope: [] }] }), 400, 'invalid_request');
      expect(res.body.issues.map((issue: { path: string }) => issue.path)).toEqual(expect.arrayContaining(['$.policies[0].audience', '$.policies[0].scope']));

      res = await refused(
        () =>
          put({
            policies: [
              { audience: ADMIN_API, scope: ['mrrt:admin'] },
              { audience: BILLING_API, scope: ['billing:read', 'billing:write'] },
            ],
          }),
        400,
        'invalid_request',
      );
      expect(res.body.issues).toEqual(
        expect.arrayContaining([
          { path: '$.policies[0].audience', message: expect.stringContaining('deny-listed') },
          { path: '$.policies[1].scope[1]', message: expect.stringContaining('billing:write') },
        ]),
      );

      // a policy for a client that is not first-party
      res = await request(server.url)
        .put('/admin/clients/admin-cli/policy')
        .set('Authorization', `Bearer ${token}`)
        .type('json')
        .send({ policies: [{ audience: BILLING_API, scope: ['billing:read'] }] });
      expect(res.status).toBe(400);
      expect(res.body.issues).toEqual([{ path: 'client_id', message: expect.stringContaining('first-party') }]);
      expect(await server.store.get('admin-cli')).toBeUndefined();

      await refused(() => put({ policies: [{ audience: BILLING_API, scope: ['billing:read'] }] }, '"stale-version"'), 412, 'precondition_failed');
      await refused(
        () => request(server.url).delete(policyPath).set('Authorization', `Bearer ${token}`).set('If-Match', '"stale-version"'),
        412,
        'precondition_failed',
      );
    });

    test('PUT / DELETE with If-Match change what the next MRRT exchange may do', async () => {
      const token = await adminToken();
      const auth = `Bearer ${token}`;
      const tokens = await signInAsClient();
      const exchange = () => tokenRequest({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, audience: BILLING_API });
      expect((await exchange()).status).toBe(200);

      let res = await request(server.url).get(policyPath).set('Authorization', auth);
      const etag = res.headers.etag!;

      // DELETE with the current ETag: demo-app loses MRRT for billing at the next exchange
      res = await request(server.url).delete(policyPath).set('Authorization', auth).set('If-Match', etag);
      expect(res.status).toBe(204);
      expect(await server.store.get('demo-app')).toBeUndefined();
      res = await request(server.url).get(policyPath).set('Authorization', auth);
      expect(res.status).toBe(404);
      res = await exchange();
      expect(res.status).toBe(400);
      expect(res.body.error).toBe('invalid_target');
      // the refused exchange did not burn the refresh token
      expect((await tokenRequest({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, resource: MESSAGES_API })).status).toBe(200);

      // PUT it back (only if absent), then replace it with the returned ETag
      res = await request(server.url)
        .put(policyPath)
        .set('Authorization', auth)
        .set('If-None-Match', '*')
        .type('json')
        .send({ policies: [{ audience: BILLING_API, scope: ['billing:read'] }] });
      expect(res.status).toBe(201);
      const created = res.headers.etag!;
      expect((await exchange()).status).toBe(200);

      res = await request(server.url)
        .put(policyPath)
        .set('Authorization', auth)
        .set('If-Match', created)
        .type('json')
        .send({
          policies: [
            { audience: BILLING_API, scope: ['billing:read'] },
            { audience: MESSAGES_API, scope: ['messages:read'] },
          ],
        });
      expect(res.status).toBe(200);
      expect(res.headers.etag).not.toBe(created);
      expect((await server.store.get('demo-app'))?.policies).toEqual([
        { audience: BILLING_API, scope: ['billing:read'] },
        { audience: MESSAGES_API, scope: ['messages:read'] },
      ]);
      // the old ETag is now stale
      res = await request(server.url).put(policyPath).set('Authorization', auth).set('If-Match', created).type('json').send({ policies: seeded });
      expect(res.status).toBe(412);

      // restore the seed for the other tests
      res = await request(server.url).put(policyPath).set('Authorization', auth).type('json').send({ policies: seeded });
      expect(res.status).toBe(200);

      const audits = logs.filter((entry) => entry.event === 'mrrt.policy_changed');
      expect(audits.map((entry) => [entry.action, entry.client_id, entry.actor])).toEqual(
        expect.arrayContaining([
          ['delete', 'demo-app', 'admin-cli'],
          ['put', 'demo-app', 'admin-cli'],
        ]),
      );
    });
  });
});
