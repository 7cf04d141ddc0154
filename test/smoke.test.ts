import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { API, claims, login, refresh, startServer, type TestServer } from './helpers/fixture.js';
import { MemoryPolicyStore } from '../lib/index.js';

let server: TestServer;
const store = new MemoryPolicyStore();
beforeAll(async () => {
  await store.set('app', [{ audience: API.B, scope: ['b:read'] }]);
  server = await startServer({ mrrt: { store, allowSkippingConsent: [API.B] }, rotate: true });
});
afterAll(() => server.close());

test('smoke', async () => {
  const tokens = await login(server);
  const res = await refresh(server, tokens.refresh_token, { audience: API.B });
  console.log(res.status, res.body, res.body.access_token && claims(res.body.access_token), server.events, server.providerEvents);
  expect(res.status).toBe(200);
});
