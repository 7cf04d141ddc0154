// A granted target served "as without MRRT" (an unprotected public client's own API) gets
// oidc-provider's own check of the scope parameter against the refresh token alone.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';

import { MemoryPolicyStore } from '../lib/index.js';
import { API, SKIP_CONSENT, login, refresh, snapshot, startServer, type TestServer } from './support/fixture.js';

describe('a granted target served "as without MRRT" gets oidc-provider\'s own scope check', () => {
  // README "Errors": for a granted target the invalid_target rows (public_client_unprotected among
  // them) do not apply, "the request is served by oidc-provider as without MRRT (without policy
  // scopes)". Without MRRT, oidc-provider refuses a requested scope the refresh token lacks
  // (invalid_scope naming it). The overlay is withdrawn only after oidc-provider checked the scope
  // parameter against the overlaid refresh token (granted ∪ policy), so the exchange repeats the
  // check against the refresh token alone: never a 200 whose token silently lacks a requested scope.
  const store = new MemoryPolicyStore();
  const plainStore = new MemoryPolicyStore();
  let server: TestServer;
  let plain: TestServer;
  beforeAll(async () => {
    await store.set('spa', [{ audience: API.A, scope: ['a:write'] }]);
    await plainStore.set('spa', [{ audience: API.B, scope: ['b:read'] }]);
    server = await startServer({ mrrt: { store, allowSkippingConsent: SKIP_CONSENT }, rotate: false });
    plain = await startServer({ mrrt: { store: plainStore, allowSkippingConsent: SKIP_CONSENT }, rotate: false });
  });
  afterAll(async () => {
    await server.close();
    await plain.close();
  });

  test.each(['a:write', 'a:read a:write'])('scope=%s for the granted API is refused as without MRRT', async (scope) => {
    // what oidc-provider answers without MRRT (spa's policy does not name API.A on this server)
    const control = await refresh(plain, (await login(plain, { client: 'spa' })).refresh_token, { resource: API.A, scope }, { client: 'spa' });
    expect({ status: control.status, error: control.body.error, scope: control.body.scope }).toEqual({ status: 400, error: 'invalid_scope', scope: 'a:write' });

    const tokens = await login(server, { client: 'spa' });
    const before = snapshot(server, tokens.refresh_token);
    const res = await refresh(server, tokens.refresh_token, { resource: API.A, scope }, { client: 'spa' });
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    expect({ status: res.status, error: res.body.error, scope: res.body.scope }).toEqual({ status: 400, error: 'invalid_scope', scope: 'a:write' });
  });
});

describe('with the Auth0 profile, a granted target served as without MRRT', () => {
  test('answers a scope the refresh token lacks as plain oidc-provider does (no scope dropped)', async () => {
    const store = new MemoryPolicyStore();
    await store.set('spa', [{ audience: API.A, scope: ['a:write'] }]);
    const server = await startServer({ mrrt: { store, allowSkippingConsent: SKIP_CONSENT, profile: 'auth0' }, rotate: false });
    try {
      const tokens = await login(server, { client: 'spa' });
      const before = snapshot(server, tokens.refresh_token);
      const res = await refresh(server, tokens.refresh_token, { resource: API.A, scope: 'a:read bogus' }, { client: 'spa' });
      expect({ status: res.status, error: res.body.error, scope: res.body.scope }).toEqual({ status: 400, error: 'invalid_scope', scope: 'bogus' });
      expect(snapshot(server, tokens.refresh_token)).toEqual(before);
      expect((await refresh(server, tokens.refresh_token, { resource: API.A }, { client: 'spa' })).status).toBe(200);
    } finally {
      await server.close();
    }
  });
});
