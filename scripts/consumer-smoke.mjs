// Runs inside the consumer project scripts/check-readme-snippets.mjs makes from the packed tarball,
// with node --enable-source-maps: the package as installed from its tarball must serve an MRRT
// exchange over HTTP, load its Express entry, and map a stack trace to its own TypeScript sources.
// The user's Grant and refresh token are made directly through oidc-provider's models (as after a
// login); everything else goes through the token endpoint on 127.0.0.1.
/* global fetch, URLSearchParams, clearTimeout */
import assert from 'node:assert/strict';
import http from 'node:http';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';
import { MemoryPolicyStore, MrrtMetrics, withMrrt } from 'oidc-provider-mrrt';
import { createPolicyRouter } from 'oidc-provider-mrrt/express';

const API_A = 'https://api-a.example.com';
const API_B = 'https://billing.example.com';
const RESOURCE_SERVERS = {
  [API_A]: { scope: 'a:read', accessTokenFormat: 'jwt' },
  [API_B]: { scope: 'read:invoices write:invoices', accessTokenFormat: 'jwt' },
};
const CLIENT = { client_id: 'app', client_secret: 'a-long-enough-client-secret-for-hs256' };

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;
const timer = setTimeout(() => {
  console.error('consumer smoke: no answer within 30 s');
  process.exit(1);
}, 30_000);

try {
  const store = new MemoryPolicyStore();
  await store.set('app', [{ audience: API_B, scope: ['read:invoices'] }]);
  const MrrtProvider = withMrrt(Provider, { store, allowSkippingConsent: [API_A, API_B], denyList: ['https://admin.example.com'] });
  const provider = new MrrtProvider(issuer, {
    clients: [
      {
        ...CLIENT,
        first_party: true,
        redirect_uris: ['https://app.example.com/cb'],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_post',
      },
    ],
    findAccount: (_ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
    features: {
      resourceIndicators: {
        enabled: true,
        getResourceServerInfo: (_ctx, resource) => {
          if (!RESOURCE_SERVERS[resource]) throw new errors.InvalidTarget();
          return RESOURCE_SERVERS[resource];
        },
      },
    },
  });
  const metrics = new MrrtMetrics();
  metrics.attach(provider);
  const events = [];
  provider.on('mrrt.exchange', (_ctx, event) => events.push(event));
  server.on('request', provider.callback());

  // What a login for API A leaves behind: a Grant and a refresh token for API A only.
  const grant = new provider.Grant({ accountId: 'alice', clientId: 'app' });
  grant.addOIDCScope('openid offline_access');
  grant.addResourceScope(API_A, 'a:read');
  const grantId = await grant.save();
  const client = await provider.Client.find('app');
  const refreshToken = await new provider.RefreshToken({
    accountId: 'alice',
    client,
    grantId,
    gty: 'authorization_code',
    resource: API_A,
    scope: 'openid offline_access a:read',
    authTime: Math.floor(Date.now() / 1000),
    rotations: 0,
  }).save();

  const token = async (params) => {
    const response = await fetch(`${issuer}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, ...CLIENT, ...params }),
    });
    return { status: response.status, body: await response.json() };
  };

  const exchange = await token({ audience: API_B });
  assert.equal(exchange.status, 200, JSON.stringify(exchange.body));
  assert.equal(exchange.body.scope, 'read:invoices');
  assert.equal(exchange.body.resource, API_B);
  const claims = jose.decodeJwt(exchange.body.access_token);
  assert.equal(claims.aud, API_B);
  assert.equal(claims.sub, 'alice');
  assert.deepEqual(
    events.map(({ outcome, reason }) => `${outcome}:${reason}`),
    ['issued:policy'],
  );

  const refused = await token({ audience: 'https://admin.example.com' });
  assert.equal(refused.status, 400);
  assert.equal(refused.body.error, 'invalid_target');
  assert.match(metrics.toPrometheus(), /^mrrt_exchanges_total\{outcome="refused",reason="deny_listed"\} 1$/m);
  console.log(
    `consumer smoke: MRRT exchange over HTTP: 200, aud ${claims.aud}, scope "${exchange.body.scope}"; deny-listed audience: 400 ${refused.body.error}`,
  );

  assert.equal(typeof createPolicyRouter, 'function');
  let stack = '';
  try {
    withMrrt(Provider, { store, denyList: 'not-a-list' });
  } catch (err) {
    stack = err.stack;
  }
  assert.match(stack, /node_modules\/oidc-provider-mrrt\/lib\/[\w/-]+\.ts:\d+:\d+/, `a stack trace through the package maps to lib/*.ts:\n${stack}`);
  console.log(`consumer smoke: a stack trace through the package maps to ${/node_modules\/(oidc-provider-mrrt\/lib\/[\w/-]+\.ts:\d+)/.exec(stack)[1]}`);
} finally {
  clearTimeout(timer);
  server.closeAllConnections();
  server.close();
}
