import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import * as jose from 'jose';
import type { Response } from 'supertest';

import { MemoryPolicyStore } from '../lib/index.js';
import { API, SKIP_CONSENT, login, refresh, startServer, type ClientName, type TestServer } from './support/fixture.js';

interface Step {
  name: string;
  params?: Record<string, string | string[]>;
  client?: ClientName;
  token?: (current: string) => string;
}

// ordinary refresh requests: none of them asks for a target outside the grant
const STEPS: Step[] = [
  { name: 'no target' },
  { name: 'the granted resource', params: { resource: API.A } },
  { name: 'the granted resource, narrowed', params: { resource: API.A, scope: 'a:read' } },
  { name: 'OpenID scopes only', params: { scope: 'openid' } },
  { name: 'the granted resource with openid', params: { resource: API.A, scope: 'openid a:read' } },
  { name: 'a scope not in the refresh token', params: { resource: API.A, scope: 'a:write' } },
  { name: 'an unknown refresh token', token: () => 'not-a-refresh-token-value-of-any-kind' },
  { name: 'a missing refresh token', token: () => '' },
  { name: 'another client presenting it', client: 'other' },
  { name: 'the granted resource again', params: { resource: API.A } },
];

/** What a client can observe of a token response, with per-run values (token strings, times, ids) removed. */
async function observe(server: TestServer, res: Response): Promise<unknown> {
  const body = res.body as Record<string, unknown>;
  const view: Record<string, unknown> = {
    status: res.status,
    keys: Object.keys(body).sort(),
    error: body.error,
    error_description: body.error_description,
    scope: body.scope,
    token_type: body.token_type,
    expires_in: body.expires_in,
    cache: res.headers['cache-control'],
  };
  if (typeof body.access_token === 'string') {
    try {
      const { jti: _jti, iat: _iat, exp: _exp, iss, ...rest } = jose.decodeJwt(body.access_token);
      view.jwt = { ...rest, issIsServer: iss === server.url };
    } catch {
      view.opaque = true;
    }
  }
  if (typeof body.id_token === 'string') {
    const { sub, aud } = jose.decodeJwt(body.id_token);
    view.idToken = { sub, aud };
  }
  return view;
}

describe.each([
  ['rotation on', true],
  ['rotation off', false],
])('requests that do not use MRRT behave exactly as on plain oidc-provider (%s)', (_label, rotate) => {
  let plain: TestServer;
  let mrrt: TestServer;

  beforeAll(async () => {
    const store = new MemoryPolicyStore();
    await store.set('app', [
      { audience: API.B, scope: ['b:read'] },
      { audience: API.C, scope: ['c:read'] },
    ]);
    plain = await startServer({ mrrt: false, rotate });
    mrrt = await startServer({ mrrt: { store, allowSkippingConsent: SKIP_CONSENT }, rotate });
  });
  afterAll(async () => {
    await plain.close();
    await mrrt.close();
  });

  test('the same sequence of refresh requests gets the same responses', async () => {
    const observed: { plain: unknown[]; mrrt: unknown[] } = { plain: [], mrrt: [] };
    for (const [name, server] of [
      ['plain', plain],
      ['mrrt', mrrt],
    ] as const) {
      let current = (await login(server)).refresh_token;
      for (const step of STEPS) {
        const token = step.token ? step.token(current) : current;
        const res = await refresh(server, token, step.params, { client: step.client ?? 'app' });
        observed[name].push({ step: step.name, ...((await observe(server, res)) as object) });
        if (res.status === 200 && typeof res.body.refresh_token === 'string') current = res.body.refresh_token;
      }
    }
    expect(observed.mrrt).toEqual(observed.plain);
    // the sequence exercised both outcomes
    expect(observed.plain.filter((o) => (o as { status: number }).status === 200).length).toBeGreaterThanOrEqual(5);
    expect(observed.plain.filter((o) => (o as { status: number }).status === 400).length).toBeGreaterThanOrEqual(3);
    expect(mrrt.events).toEqual([]);
  });
});
