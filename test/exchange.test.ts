import { randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import * as jose from 'jose';
import { Redis } from 'ioredis';
import request from 'supertest';

import Provider, { type Configuration } from 'oidc-provider';

import { MemoryPolicyStore, RedisPolicyStore, mrrtConfiguration, withMrrt, type MrrtReason, type Policy, type PolicyStore } from '../lib/index.js';
import { API, CLIENTS, SKIP_CONSENT, claims, dpopKey, login, refresh, snapshot, startServer, type TestServer, type TokenSet } from './support/fixture.js';
import { deleteKeys } from './support/redis-keys.js';

const APP_POLICY: Policy = [
  { audience: API.A, scope: ['a:write'] },
  { audience: API.B, scope: ['b:read'] },
  { audience: API.C, scope: ['c:read'] },
  { audience: API.CONSENT, scope: ['x:read'] },
  { audience: API.ADMIN, scope: ['admin:write'] },
  { audience: API.GONE, scope: ['g:read'] },
];

const redis = new Redis(process.env.MRRT_TEST_REDIS_URL!);
const prefix = `mrrt-test:{exchange-${randomBytes(6).toString('hex')}}:`;
const store = new RedisPolicyStore(redis, { prefix });

afterAll(async () => {
  await store.close();
  await deleteKeys(redis, prefix);
  await redis.quit();
});

/** Announces a change made behind the store's back, and waits until the store's listeners (the cache) saw it. */
async function announce(clientId: string): Promise<void> {
  let unsubscribe = (): void => {};
  const seen = new Promise<void>((resolve) => {
    unsubscribe = store.subscribe((id) => {
      if (id === clientId) resolve();
    });
  });
  await redis.publish(store.channel, clientId);
  await seen;
  unsubscribe();
}

async function introspect(server: TestServer, token: string): Promise<Record<string, unknown>> {
  const res = await request(server.url)
    .post('/token/introspection')
    .type('form')
    .send({ token, client_id: CLIENTS.app.client_id, client_secret: CLIENTS.app.client_secret });
  expect(res.status).toBe(200);
  return res.body as Record<string, unknown>;
}

describe.each([
  ['rotation on', true],
  ['rotation off', false],
])('MRRT exchange, %s', (_label, rotate) => {
  let server: TestServer;

  beforeAll(async () => {
    await store.set('app', APP_POLICY);
    await store.set('spa', [{ audience: API.B, scope: ['b:read'] }]);
    await store.set('partner', [{ audience: API.B, scope: ['b:read'] }]);
    await store.delete('other');
    server = await startServer({ mrrt: { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] }, rotate });
  });
  afterAll(() => server.close());

  /** Proves the refresh token still refreshes for its granted API, then returns the response. */
  async function expectUsable(refreshToken: string, client: 'app' | 'other' | 'partner' | 'spa' = 'app', dpop?: Awaited<ReturnType<typeof dpopKey>>) {
    const res = await refresh(server, refreshToken, { resource: API.A }, { client, dpop });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token).aud).toBe(API.A);
    return res;
  }

  function expectRotation(tokens: TokenSet, body: Record<string, unknown>, before: ReturnType<typeof snapshot>) {
    if (rotate) {
      expect(body.refresh_token).not.toBe(tokens.refresh_token);
      const rotated = JSON.parse(snapshot(server, body.refresh_token as string).refreshToken) as Record<string, unknown>;
      const original = JSON.parse(before.refreshToken) as Record<string, unknown>;
      expect(rotated.resource).toEqual(original.resource);
      expect(rotated.scope).toBe(original.scope);
      expect(JSON.parse(snapshot(server, tokens.refresh_token).refreshToken).consumed).toEqual(expect.any(Number));
    } else {
      expect(body.refresh_token).toBe(tokens.refresh_token);
      expect(snapshot(server, tokens.refresh_token).refreshToken).toBe(before.refreshToken);
    }
    expect(snapshot(server, tokens.refresh_token).grant).toBe(before.grant);
  }

  test('a granted target without a policy passes through to oidc-provider', async () => {
    const tokens = await login(server, { client: 'other' });
    const res = await refresh(server, tokens.refresh_token, { resource: API.A }, { client: 'other' });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read', client_id: 'other', sub: 'alice' });
    expect(res.body.scope).toBe('a:read');
    expect(res.body).not.toHaveProperty('resource');
    expect(server.events.filter((e) => e.clientId === 'other')).toEqual([]);
  });

  test.each([
    ['audience', { audience: API.B }],
    ['resource', { resource: API.B }],
    ['audience and resource with the same value', { audience: API.B, resource: API.B }],
  ])('a policy-only target named by %s gets a token for that API only', async (_name, params) => {
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);
    const res = await refresh(server, tokens.refresh_token, params);
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read', client_id: 'app', sub: 'alice' });
    expect(res.body).toMatchObject({ scope: 'b:read', resource: API.B, token_type: 'Bearer', expires_in: 300 });
    expect(res.body.id_token).toEqual(expect.any(String));
    expectRotation(tokens, res.body, before);
    expect(server.events.at(-1)).toMatchObject({
      outcome: 'issued',
      reason: 'policy',
      clientId: 'app',
      subject: 'alice',
      grantId: before.grantId,
      requestedAudience: API.B,
      resolvedAudience: API.B,
      grantedScope: 'b:read',
    });
    expect(JSON.stringify(server.events.at(-1))).not.toContain(tokens.refresh_token);
  });

  test('the originally granted target gets the granted and the policy scopes', async () => {
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);
    const res = await refresh(server, tokens.refresh_token, { resource: API.A });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read a:write', client_id: 'app' });
    expect(res.body).toMatchObject({ scope: 'a:read a:write', resource: API.A });
    expectRotation(tokens, res.body, before);
  });

  test('without a target, oidc-provider picks the token as it always does', async () => {
    const tokens = await login(server);
    const res = await refresh(server, tokens.refresh_token);
    expect(res.status).toBe(200);
    expect(res.body.scope).toBe('openid offline_access');
    expect(res.body).not.toHaveProperty('resource');
    expect(() => jose.decodeJwt(res.body.access_token)).toThrow();
    expect(await introspect(server, res.body.access_token)).toMatchObject({ active: true, scope: 'openid offline_access', client_id: 'app' });
  });

  test('an opaque-format target is issued opaque and introspects with its audience and scope', async () => {
    const tokens = await login(server);
    const res = await refresh(server, tokens.refresh_token, { audience: API.C });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ scope: 'c:read', resource: API.C });
    expect(() => jose.decodeJwt(res.body.access_token)).toThrow();
    expect(await introspect(server, res.body.access_token)).toMatchObject({
      active: true,
      aud: API.C,
      scope: 'c:read',
      client_id: 'app',
      sub: 'alice',
    });
  });

  test('a scope parameter narrows the token; openid stays out of the API token but still yields an ID token', async () => {
    const tokens = await login(server);
    const res = await refresh(server, tokens.refresh_token, { audience: API.B, scope: 'openid b:read' });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
    expect(res.body.scope).toBe('b:read');
    expect(res.body.id_token).toEqual(expect.any(String));
  });

  test('chained exchanges keep working and never widen the stored refresh token', async () => {
    const tokens = await login(server);
    const original = snapshot(server, tokens.refresh_token);
    let current = tokens.refresh_token;
    for (const [audience, scope] of [
      [API.B, 'b:read'],
      [API.C, 'c:read'],
      [API.A, 'a:read a:write'],
      [API.B, 'b:read'],
    ] as const) {
      const res = await refresh(server, current, { audience });
      expect(res.status).toBe(200);
      expect(res.body.scope).toBe(scope);
      current = res.body.refresh_token;
      const stored = JSON.parse(snapshot(server, current).refreshToken) as Record<string, unknown>;
      expect(stored.resource).toEqual(JSON.parse(original.refreshToken).resource);
      expect(stored.scope).toBe(JSON.parse(original.refreshToken).scope);
    }
    expect(snapshot(server, current).grant).toBe(original.grant);
  });

  if (rotate) {
    test('reusing a rotated refresh token after an MRRT exchange revokes the grant, as upstream does', async () => {
      const tokens = await login(server);
      const { grantId } = snapshot(server, tokens.refresh_token);
      const first = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect(first.status).toBe(200);
      const reuse = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect(reuse.status).toBe(400);
      expect(reuse.body.error).toBe('invalid_grant');
      const next = await refresh(server, first.body.refresh_token, { resource: API.A });
      expect(next.status).toBe(400);
      expect(next.body.error).toBe('invalid_grant');
      expect(server.storage.entries.has(`Grant:${grantId}`)).toBe(false);
      expect(server.providerEvents).toContain('grant.revoked');
    });
  } else {
    test('without rotation the same refresh token serves repeated exchanges', async () => {
      const tokens = await login(server);
      for (const audience of [API.B, API.C, API.B]) {
        const res = await refresh(server, tokens.refresh_token, { audience });
        expect(res.status).toBe(200);
        expect(res.body.refresh_token).toBe(tokens.refresh_token);
      }
    });
  }

  describe('a DPoP-bound refresh token', () => {
    test('is exchanged with a proof of its key, and the token is bound to it', async () => {
      const key = await dpopKey();
      const tokens = await login(server, { client: 'spa', dpop: key });
      expect(JSON.parse(snapshot(server, tokens.refresh_token).refreshToken).jkt).toEqual(expect.any(String));
      const res = await refresh(server, tokens.refresh_token, { audience: API.B }, { client: 'spa', dpop: key });
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ token_type: 'DPoP', scope: 'b:read', resource: API.B });
      expect(claims(res.body.access_token)).toMatchObject({
        aud: API.B,
        client_id: 'spa',
        cnf: { jkt: await jose.calculateJwkThumbprint(key.publicJwk) },
      });
    });

    test.each([
      ['no proof', undefined],
      ['a proof of another key', 'other'],
    ])('with %s is refused by oidc-provider, whose check wins, and stays usable', async (_name, which) => {
      const key = await dpopKey();
      const tokens = await login(server, { client: 'spa', dpop: key });
      const before = snapshot(server, tokens.refresh_token);
      const proofKey = which ? await dpopKey() : undefined;
      for (const audience of [API.B, API.ADMIN]) {
        const res = await refresh(server, tokens.refresh_token, { audience }, { client: 'spa', dpop: proofKey });
        expect(res.status).toBe(400);
        expect(res.body.error).toBe('invalid_grant');
      }
      expect(snapshot(server, tokens.refresh_token)).toEqual(before);
      await expectUsable(tokens.refresh_token, 'spa', key);
    });
  });

  const refusals: Array<[string, 'app' | 'other' | 'partner', Record<string, string | string[]>, number, string, MrrtReason | undefined, string | undefined]> =
    [
      ['a third-party client', 'partner', { audience: API.B }, 400, 'invalid_target', 'not_first_party', undefined],
      ['a deny-listed audience', 'app', { audience: API.ADMIN }, 400, 'invalid_target', 'deny_listed', undefined],
      ['an API that does not allow skipping consent', 'app', { audience: API.CONSENT }, 400, 'invalid_target', 'consent_required', undefined],
      ['an audience in the policy that is no longer a known API', 'app', { audience: API.GONE }, 400, 'invalid_target', 'unknown_resource', undefined],
      ['an audience outside the policy', 'app', { audience: 'https://api-x.example.com' }, 400, 'invalid_target', 'not_in_policy', undefined],
      ['a client without a policy', 'other', { audience: API.B }, 400, 'invalid_target', 'no_policy', undefined],
      ['two resource values', 'app', { resource: [API.B, API.C] }, 400, 'invalid_target', 'multiple_targets', undefined],
      ['two audience values', 'app', { audience: [API.B, API.C] }, 400, 'invalid_target', 'multiple_targets', undefined],
      ['the granted resource twice', 'app', { resource: [API.A, API.A] }, 400, 'invalid_target', 'multiple_targets', undefined],
      ['audience different from resource', 'app', { audience: API.B, resource: API.C }, 400, 'invalid_request', undefined, undefined],
      ['a scope outside the refresh token and the policy', 'app', { audience: API.B, scope: 'b:write' }, 400, 'invalid_scope', 'scope_not_allowed', 'b:write'],
      ['a scope of another API', 'app', { audience: API.B, scope: 'b:read a:write' }, 400, 'invalid_scope', 'scope_not_allowed', 'a:write'],
      [
        'a scope outside the policy on the granted API',
        'app',
        { resource: API.A, scope: 'a:read b:write' },
        400,
        'invalid_scope',
        'scope_not_allowed',
        'b:write',
      ],
      ['a request leaving no API scope', 'app', { audience: API.B, scope: 'openid' }, 400, 'invalid_scope', 'empty_scope', undefined],
    ];

  test.each(refusals)('%s is refused before anything is rotated or stored', async (_name, client, params, status, error, reason, scope) => {
    const tokens = await login(server, { client });
    const before = snapshot(server, tokens.refresh_token);
    const eventsBefore = server.events.length;
    const providerEventsBefore = server.providerEvents.length;

    const res = await refresh(server, tokens.refresh_token, params, { client });
    expect(res.status).toBe(status);
    expect(res.body.error).toBe(error);
    expect(res.body.error_description).toEqual(expect.any(String));
    expect(res.body).not.toHaveProperty('access_token');
    if (scope) expect(res.body.scope).toBe(scope);

    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    expect(server.providerEvents.slice(providerEventsBefore)).toEqual([]);
    const emitted = server.events.slice(eventsBefore);
    if (reason) {
      // more than one target is refused before the refresh token is even read: the event names no subject or grant
      const read = reason !== 'multiple_targets';
      expect(emitted).toEqual([
        expect.objectContaining({
          outcome: 'refused',
          reason,
          error,
          clientId: client,
          subject: read ? 'alice' : undefined,
          grantId: read ? before.grantId : undefined,
        }),
      ]);
    } else {
      expect(emitted).toEqual([]);
    }
    await expectUsable(tokens.refresh_token, client);
  });

  test('a policy change applies to the next exchange: widen, narrow, delete', async () => {
    const tokens = await login(server, { client: 'other' });
    const current = () => tokens.refresh_token;
    const exchange = async () => {
      const res = await refresh(server, current(), { audience: API.B }, { client: 'other' });
      if (res.body.refresh_token) tokens.refresh_token = res.body.refresh_token;
      return res;
    };
    try {
      await store.set('other', [{ audience: API.B, scope: ['b:read', 'b:write'] }]);
      expect((await exchange()).body.scope).toBe('b:read b:write');
      await store.set('other', [{ audience: API.B, scope: ['b:read'] }]);
      expect((await exchange()).body.scope).toBe('b:read');
      await store.delete('other');
      const refused = await exchange();
      expect(refused.status).toBe(400);
      expect(refused.body.error).toBe('invalid_target');
      await expectUsable(current(), 'other');
    } finally {
      await store.delete('other');
    }
  });

  test('corrupted policy data fails closed with server_error, and granted refreshes keep working', async () => {
    const tokens = await login(server, { client: 'spa' });
    const before = snapshot(server, tokens.refresh_token);
    const key = store.keyFor('spa');
    try {
      const corruptions = [
        '{not json',
        JSON.stringify([{ audience: API.B, scope: ['b:read'], extra: true }]),
        JSON.stringify({ __proto__: null }),
        // a million bad items: reported by their first problems, not walked to the end
        JSON.stringify(new Array(1_000_000).fill(0)),
      ];
      for (const corrupt of corruptions) {
        await redis.hset(key, 'p', corrupt);
        await announce('spa');
        const res = await refresh(server, tokens.refresh_token, { audience: API.B }, { client: 'spa' });
        expect(res.status).toBe(500);
        expect(res.body.error).toBe('server_error');
        expect(res.body).not.toHaveProperty('access_token');
        expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'store_corrupt', clientId: 'spa' });
        expect(snapshot(server, tokens.refresh_token)).toEqual(before);
      }
      await expectUsable(tokens.refresh_token, 'spa');
    } finally {
      await store.set('spa', [{ audience: API.B, scope: ['b:read'] }]);
    }
  });
});

describe('MRRT exchange with an unreachable policy store', () => {
  let server: TestServer;
  let dead: Redis;
  let deadStore: RedisPolicyStore;

  beforeAll(async () => {
    dead = new Redis({
      host: '127.0.0.1',
      port: 1,
      connectTimeout: 200,
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    dead.on('error', () => {});
    deadStore = new RedisPolicyStore(dead, { prefix });
    server = await startServer({
      mrrt: { store: deadStore, allowSkippingConsent: SKIP_CONSENT, storeTimeout: 500 },
      rotate: true,
    });
  });
  afterAll(async () => {
    dead.disconnect();
    await deadStore.close();
    await server.close();
  });

  test('policy-only targets fail closed with a 503, granted ones keep working', async () => {
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);
    const res = await refresh(server, tokens.refresh_token, { audience: API.B });
    expect(res.status).toBe(503);
    expect(res.body.error).toBe('temporarily_unavailable');
    expect(res.body).not.toHaveProperty('access_token');
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'store_unavailable' });

    const granted = await refresh(server, tokens.refresh_token, { resource: API.A });
    expect(granted.status).toBe(200);
    expect(claims(granted.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });
  });
});

describe('MRRT exchange with a policy store that does not answer in time', () => {
  test('fails closed after storeTimeout with a 503', async () => {
    const slow = new MemoryPolicyStore();
    await slow.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    const realGet = slow.get.bind(slow);
    slow.get = (clientId: string) =>
      new Promise((resolve) => {
        setTimeout(() => resolve(realGet(clientId)), 1_000).unref();
      });
    const server = await startServer({ mrrt: { store: slow, allowSkippingConsent: SKIP_CONSENT, storeTimeout: 100 }, rotate: true });
    try {
      const tokens = await login(server);
      const before = snapshot(server, tokens.refresh_token);
      const res = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect(res.status).toBe(503);
      expect(res.body.error).toBe('temporarily_unavailable');
      expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    } finally {
      await server.close();
    }
  });
});

describe("a policy store of the deployment's own", () => {
  const GOOD = { clientId: 'app', policies: [{ audience: API.B, scope: ['b:read'] }], version: 'v1' };
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const server of servers) await server.close();
  });
  /** A server whose store's `get` answers with `answer()` for every client; `cache: false` when `cached` is false. */
  const start = async (answer: () => unknown, cached: boolean) => {
    const custom = { get: answer } as unknown as PolicyStore;
    const server = await startServer({ mrrt: { store: custom, allowSkippingConsent: SKIP_CONSENT, ...(cached ? {} : { cache: false }) }, rotate: true });
    servers.push(server);
    const storeErrors: unknown[] = [];
    server.provider.on('mrrt.store_error', (_ctx, err) => storeErrors.push(err));
    return { server, storeErrors };
  };

  const BROKEN: Record<string, () => unknown> = {
    'policies: null': async () => ({ ...GOOD, policies: null }),
    'a null entry': async () => ({ ...GOOD, policies: [null] }),
    'an entry with an audience that is no URI': async () => ({ ...GOOD, policies: [{ audience: 'b', scope: ['b:read'] }] }),
    'a string': async () => 'app',
    "another client's record": async () => ({ ...GOOD, clientId: 'other' }),
    'a record without a version': async () => ({ clientId: 'app', policies: GOOD.policies }),
    'a record whose policies cannot be read': async () => ({
      ...GOOD,
      get policies(): never {
        throw new Error('unreadable');
      },
    }),
    'a policy larger than any configuration allows (1001 entries)': async () => ({
      ...GOOD,
      policies: Array.from({ length: 1001 }, (_, i) => ({ audience: `https://api-${i}.example.com`, scope: ['x'] })),
    }),
    'a sparse array of ten million entries': async () => ({ ...GOOD, policies: new Array(10_000_000) }),
    'a thousand entries sharing one sparse array of scopes': async () => {
      const scope = new Array(2 ** 32 - 1);
      return { ...GOOD, policies: Array.from({ length: 1000 }, (_, i) => ({ audience: `https://api-${i}.example.com`, scope })) };
    },
    "a built-in store's record of another client": async () => {
      const other = new MemoryPolicyStore();
      return other.set('other', [{ audience: API.B, scope: ['b:read', 'b:write'] }]);
    },
  };
  for (const cached of [true, false]) {
    for (const [answer, get] of Object.entries(BROKEN)) {
      test(`${answer} (${cached ? 'cached' : 'cache: false'}) fails closed as corrupt data; the granted target and the refresh token keep working`, async () => {
        const { server, storeErrors } = await start(get, cached);
        const tokens = await login(server);
        const before = snapshot(server, tokens.refresh_token);
        const seen = server.providerEvents.length;

        const res = await refresh(server, tokens.refresh_token, { audience: API.B });
        expect(res.status).toBe(500);
        expect(res.body.error).toBe('server_error');
        expect(res.body).not.toHaveProperty('access_token');
        expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'store_corrupt', clientId: 'app' });
        expect(storeErrors).toEqual([expect.objectContaining({ code: 'ERR_MRRT_STORE_CORRUPT' })]);
        expect(snapshot(server, tokens.refresh_token)).toEqual(before);
        // oidc-provider reports the 500; nothing was saved, consumed or revoked
        expect(server.providerEvents.slice(seen)).toEqual(['server_error']);

        const granted = await refresh(server, tokens.refresh_token, { resource: API.A });
        expect(granted.status).toBe(200);
        expect(claims(granted.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });
      });
    }

    test(`a built-in store whose get is replaced after start-up is checked all the same (${cached ? 'cached' : 'cache: false'})`, async () => {
      const memory = new MemoryPolicyStore();
      await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
      const server = await startServer({ mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT, ...(cached ? {} : { cache: false }) }, rotate: true });
      servers.push(server);
      const tokens = await login(server);
      const before = snapshot(server, tokens.refresh_token);
      const seen = server.providerEvents.length;
      // e.g. a test stub or instrumentation: another client's record, wider, without a version
      memory.get = async () => ({ clientId: 'other', version: '', policies: [{ audience: API.B, scope: ['b:read', 'b:write'] }] });

      const res = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect(res.status).toBe(500);
      expect(res.body.error).toBe('server_error');
      expect(res.body).not.toHaveProperty('access_token');
      expect(server.providerEvents.slice(seen)).toEqual(['server_error']);
      expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'store_corrupt' });
      expect(snapshot(server, tokens.refresh_token)).toEqual(before);
      const granted = await refresh(server, tokens.refresh_token, { resource: API.A });
      expect(granted.status).toBe(200);
      expect(claims(granted.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });
    });

    const ANSWERS: [string, () => unknown, { status: number; scope?: string; error?: string }][] = [
      ['a record, not a promise', () => GOOD, { status: 200, scope: 'b:read' }],
      ['a thenable that calls back at once', () => ({ then: (resolve: (value: unknown) => void) => resolve(GOOD) }), { status: 200, scope: 'b:read' }],
      ['null', async () => null, { status: 400, error: 'invalid_target' }],
    ];
    for (const [answer, get, expected] of ANSWERS) {
      test(`${answer} (${cached ? 'cached' : 'cache: false'}) is read as the record it settles to`, async () => {
        const { server, storeErrors } = await start(get, cached);
        const tokens = await login(server);
        const res = await refresh(server, tokens.refresh_token, { audience: API.B });
        expect(res.status).toBe(expected.status);
        if (expected.scope) expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: expected.scope });
        else expect(res.body.error).toBe(expected.error);
        expect(storeErrors).toEqual([]);
      });
    }
  }
});

describe("a policy store of the deployment's own that announces changes", () => {
  test('a change it announces reaches the policy cache (its subscribe is called on the store)', async () => {
    class AnnouncingStore {
      readonly #listeners = new Set<(clientId: string | undefined) => void>();
      policies: unknown = [{ audience: API.B, scope: ['b:read'] }];
      reads = 0;
      async get(clientId: string) {
        this.reads += 1;
        return { clientId, policies: this.policies, version: String(this.reads) };
      }
      subscribe(listener: (clientId: string | undefined) => void) {
        this.#listeners.add(listener);
        return () => this.#listeners.delete(listener);
      }
      change(policies: unknown) {
        this.policies = policies;
        for (const listener of this.#listeners) listener('app');
      }
    }
    const custom = new AnnouncingStore();
    const server = await startServer({ mrrt: { store: custom as unknown as PolicyStore, allowSkippingConsent: SKIP_CONSENT }, rotate: false });
    try {
      const tokens = await login(server);
      expect((await refresh(server, tokens.refresh_token, { audience: API.B })).status).toBe(200);
      expect((await refresh(server, tokens.refresh_token, { audience: API.B })).status).toBe(200);
      expect(custom.reads).toBe(1);

      custom.change([{ audience: API.C, scope: ['c:read'] }]);
      const refused = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect(refused.status).toBe(400);
      expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'not_in_policy' });
      expect(custom.reads).toBe(2);
    } finally {
      await server.close();
    }
  });
});

describe('public clients (RFC 9700 §2.2.2)', () => {
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.close();
  });
  const start = async (rotate: boolean, publicClients?: 'any') => {
    const memory = new MemoryPolicyStore();
    await memory.set('spa', [{ audience: API.B, scope: ['b:read'] }]);
    const server = await startServer({ mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT, ...(publicClients ? { publicClients } : {}) }, rotate });
    servers.push(server);
    return server;
  };

  test('without rotation and without DPoP, MRRT is refused by default and the token stays usable', async () => {
    const server = await start(false);
    const tokens = await login(server, { client: 'spa' });
    const before = snapshot(server, tokens.refresh_token);
    const res = await refresh(server, tokens.refresh_token, { audience: API.B }, { client: 'spa' });
    expect(res.status).toBe(400);
    expect(res.body.error).toBe('invalid_target');
    expect(res.body.error_description).toMatch(/rotation or a DPoP-bound/);
    expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'public_client_unprotected', clientId: 'spa' });
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    const granted = await refresh(server, tokens.refresh_token, { resource: API.A }, { client: 'spa' });
    expect(granted.status).toBe(200);
  });

  test('without rotation but with a DPoP-bound refresh token, MRRT is allowed', async () => {
    const server = await start(false);
    const key = await dpopKey();
    const tokens = await login(server, { client: 'spa', dpop: key });
    const res = await refresh(server, tokens.refresh_token, { audience: API.B }, { client: 'spa', dpop: key });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
  });

  test('with rotation, MRRT is allowed', async () => {
    const server = await start(true);
    const tokens = await login(server, { client: 'spa' });
    const res = await refresh(server, tokens.refresh_token, { audience: API.B }, { client: 'spa' });
    expect(res.status).toBe(200);
    expect(res.body.refresh_token).not.toBe(tokens.refresh_token);
  });

  test('publicClients: "any" allows it without rotation or DPoP', async () => {
    const server = await start(false, 'any');
    const tokens = await login(server, { client: 'spa' });
    const res = await refresh(server, tokens.refresh_token, { audience: API.B }, { client: 'spa' });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, client_id: 'spa' });
  });
});

describe("the deployment's getResourceServerInfo", () => {
  // A deployment may answer per user (TTL, format, audience, refusal): the exchange asks once, with the
  // refresh token, Grant and account loaded, checks its rules against that answer and issues from it.
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.close();
  });

  test.each([
    ['rotation off', false],
    ['rotation on', true],
  ])('is asked at issuance with the refresh token and account loaded, and issues from that answer (%s)', async (_label, rotate) => {
    const memory = new MemoryPolicyStore();
    await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    const asked: Array<[string, string | undefined]> = [];
    const perUser = (configuration: Parameters<NonNullable<Parameters<typeof startServer>[0]['configure']>>[0]) => {
      const original = configuration.features!.resourceIndicators!.getResourceServerInfo!;
      configuration.features!.resourceIndicators!.getResourceServerInfo = async (ctx, resource, client) => {
        const account = ctx.oidc.entities.Account?.accountId;
        asked.push([resource, account]);
        const info = await original(ctx, resource, client);
        // a per-user answer: known users get a 120 s access token, anything else 600 s
        return { ...info, accessTokenTTL: account === undefined ? 600 : 120 };
      };
    };
    const mrrt = await startServer({ mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT }, rotate, configure: perUser });
    const plain = await startServer({ mrrt: false, rotate, configure: perUser });
    servers.push(mrrt, plain);

    const during = async (server: TestServer, params: Record<string, string>) => {
      const tokens = await login(server);
      asked.length = 0;
      const res = await refresh(server, tokens.refresh_token, params);
      expect(res.status).toBe(200);
      return { asked: [...asked], expiresIn: res.body.expires_in as number };
    };
    const plainGranted = await during(plain, { resource: API.A });
    expect(plainGranted).toEqual({ asked: [[API.A, 'alice']], expiresIn: 120 });
    // a granted target outside the policy: exactly what plain oidc-provider asks and issues
    expect(await during(mrrt, { resource: API.A })).toEqual(plainGranted);
    // a policy-only target: asked once, with the account loaded and before anything is written; the
    // rules are checked against that answer and the token is built from it
    for (const params of [{ audience: API.B }, { resource: API.B }] as Array<Record<string, string>>) {
      expect(await during(mrrt, params)).toEqual({ asked: [[API.B, 'alice']], expiresIn: 120 });
    }
  });
});

describe('the rules hold for the answer issuance uses (a deployment answering per user)', () => {
  // mallory's answer for API.B names the deny-listed admin API as the token audience; eve's defines
  // none of the policy's scopes. Asking for API.B directly with either answer must be refused, before
  // anything is written, with or without rotation.
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.close();
  });

  test.each([
    ['mallory', false, 'invalid_target', 'deny_listed'],
    ['mallory', true, 'invalid_target', 'deny_listed'],
    ['eve', false, 'invalid_scope', 'empty_scope'],
    ['eve', true, 'invalid_scope', 'empty_scope'],
  ] as const)('%s (rotation %s) is refused with %s (%s); the refresh token still works and nothing was persisted', async (sub, rotate, error, reason) => {
    const memory = new MemoryPolicyStore();
    await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    const server = await startServer({
      mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] },
      rotate,
      configure(configuration) {
        const original = configuration.features!.resourceIndicators!.getResourceServerInfo!;
        configuration.features!.resourceIndicators!.getResourceServerInfo = async (ctx, resource, client) => {
          const account = ctx.oidc.entities.Account?.accountId;
          if (resource === API.B && account === 'mallory') return { scope: 'b:read', audience: API.ADMIN, accessTokenFormat: 'jwt' };
          if (resource === API.B && account === 'eve') return { scope: 'b:other', accessTokenFormat: 'jwt' };
          return original(ctx, resource, client);
        };
      },
    });
    servers.push(server);
    const tokens = await login(server, { sub });
    const before = snapshot(server, tokens.refresh_token);
    server.events.length = 0;
    server.providerEvents.length = 0;

    const res = await refresh(server, tokens.refresh_token, { audience: API.B });
    expect(res.status).toBe(400);
    expect(res.body.error).toBe(error);
    expect(res.body).not.toHaveProperty('access_token');
    expect(server.events.map((event) => event.reason)).toEqual([reason]);
    expect(server.providerEvents).toEqual([]);
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);

    const still = await refresh(server, tokens.refresh_token, { resource: API.A });
    expect(still.status).toBe(200);
    expect(claims(still.body.access_token)).toMatchObject({ aud: API.A, sub });
  });
});

describe('more than one target', () => {
  test.each([false, true])(
    'is refused before oidc-provider reads or writes anything (rotation %s), even where a defaultResource would choose none',
    async (rotate) => {
      const memory = new MemoryPolicyStore();
      await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
      const server = await startServer({ mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT }, rotate });
      const written: string[] = [];
      server.provider.on('access_token.saved', () => written.push('access_token.saved'));
      server.provider.on('refresh_token.saved', () => written.push('refresh_token.saved'));
      server.provider.on('refresh_token.consumed', () => written.push('refresh_token.consumed'));
      try {
        const tokens = await login(server);
        const before = snapshot(server, tokens.refresh_token);
        written.length = 0;
        server.events.length = 0;
        const res = await refresh(server, tokens.refresh_token, { resource: [API.A, API.B] });
        expect({ status: res.status, error: res.body.error }).toEqual({ status: 400, error: 'invalid_target' });
        expect(written).toEqual([]);
        expect(server.events.map((event) => event.reason)).toEqual(['multiple_targets']);
        expect(snapshot(server, tokens.refresh_token)).toEqual(before);
        expect((await refresh(server, tokens.refresh_token, { resource: API.A })).status).toBe(200);
      } finally {
        await server.close();
      }
    },
  );
});

describe("Auth0 wire profile (profile: 'auth0')", () => {
  // Login holds openid offline_access a:read for API.A; the policy gives b:read for API.B.
  const servers: Record<string, TestServer> = {};
  beforeAll(async () => {
    for (const profile of ['strict', 'auth0'] as const) {
      const memory = new MemoryPolicyStore();
      await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
      servers[profile] = await startServer({ mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT, profile }, rotate: true });
    }
  });
  afterAll(async () => {
    for (const s of Object.values(servers)) await s.close();
  });

  // request scope -> strict answer -> Auth0-profile answer (status, response scope, token scope, event reason)
  test.each([
    ['openid offline_access b:read', [200, 'b:read', 'b:read', 'policy'], [200, 'b:read openid offline_access', 'b:read', 'policy']],
    [
      'openid profile email offline_access b:read',
      [400, 'invalid_scope', undefined, 'scope_not_allowed'],
      [200, 'b:read openid offline_access', 'b:read', 'policy'],
    ],
    ['b:read b:write', [400, 'invalid_scope', undefined, 'scope_not_allowed'], [200, 'b:read', 'b:read', 'policy']],
    ['profile b:write', [400, 'invalid_scope', undefined, 'scope_not_allowed'], [400, 'invalid_scope', undefined, 'empty_scope']],
    ['openid offline_access', [400, 'invalid_scope', undefined, 'empty_scope'], [400, 'invalid_scope', undefined, 'empty_scope']],
  ] as const)('scope=%s', async (scope, strict, auth0) => {
    for (const [profile, [status, scopeOrError, tokenScope, reason]] of [
      ['strict', strict],
      ['auth0', auth0],
    ] as const) {
      const server = servers[profile]!;
      const tokens = await login(server);
      const before = snapshot(server, tokens.refresh_token);
      server.events.length = 0;
      const res = await refresh(server, tokens.refresh_token, { audience: API.B, scope });
      expect({ profile, status: res.status }).toEqual({ profile, status });
      expect(server.events.map((event) => event.reason)).toEqual([reason]);
      if (status === 200) {
        expect(res.body.scope).toBe(scopeOrError);
        expect(res.body.resource).toBe(API.B);
        expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: tokenScope });
        // the event reports the access token's scope, whatever the response's profile adds, and what was asked
        expect(server.events[0]).toMatchObject({ grantedScope: tokenScope, requestedScope: scope });
      } else {
        expect(res.body.error).toBe(scopeOrError);
        expect(snapshot(server, tokens.refresh_token)).toEqual(before);
        const still = await refresh(server, tokens.refresh_token, { resource: API.A });
        expect(still.status).toBe(200);
      }
    }
  });

  test('without a scope parameter, and for the granted API, both profiles answer alike', async () => {
    for (const params of [{ audience: API.B }, { resource: API.A, scope: 'a:read' }] as Array<Record<string, string>>) {
      const answers = [];
      for (const server of Object.values(servers)) {
        const tokens = await login(server);
        const res = await refresh(server, tokens.refresh_token, params);
        answers.push({ status: res.status, scope: res.body.scope, aud: claims(res.body.access_token).aud });
      }
      expect(answers[0]).toEqual(answers[1]);
    }
  });
});

/**
 * An exchange for API.B, named by `named`, whose client check `option` answers through `check`:
 * refused with 400 invalid_target and `reason`, nothing persisted, and the refresh token still
 * serves its granted API with a scope.
 */
async function expectCheckRefusal(
  option: 'isFirstParty' | 'allowSkippingConsent',
  check: () => unknown,
  reason: string,
  named: 'audience' | 'resource',
): Promise<void> {
  const memory = new MemoryPolicyStore();
  await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
  const server = await startServer({
    mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT, isFirstParty: () => true, [option]: check as () => boolean },
    rotate: true,
  });
  try {
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);
    const res = await refresh(server, tokens.refresh_token, { [named]: API.B });
    expect({ status: res.status, error: res.body.error }).toEqual({ status: 400, error: 'invalid_target' });
    expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason });
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    const granted = await refresh(server, tokens.refresh_token, { resource: API.A, scope: 'a:read' });
    expect({ status: granted.status, aud: claims(granted.body.access_token).aud }).toEqual({ status: 200, aud: API.A });
  } finally {
    await server.close();
  }
}

describe('option functions that answer with a thenable', () => {
  // `isFirstParty` and `allowSkippingConsent` may answer asynchronously with any thenable, as `await`
  // accepts; a thenable that is a function (truthy in itself) must be awaited, not taken as "yes".
  test.each([
    ['isFirstParty', 'not_first_party'],
    ['allowSkippingConsent', 'consent_required'],
  ] as const)('%s answering false through a function thenable refuses the exchange (%s)', async (option, reason) => {
    const no = () => Object.assign(() => true, { then: (resolve: (value: boolean) => void) => resolve(false) });
    await expectCheckRefusal(option, no, reason, 'audience');
  });

  test.each([
    ['isFirstParty', 'not_first_party', 'false'],
    ['allowSkippingConsent', 'consent_required', '0'],
  ] as const)('%s answering a truthy non-boolean (%s, %j) refuses: only true allows', async (option, reason, answer) => {
    await expectCheckRefusal(option, async () => answer, reason, 'audience');
  });
});

describe('option functions answering with something other than a boolean or a promise of one', () => {
  // such an answer is settled as `await` would settle it, without the exchange touching the object:
  // it is not `true`, so it refuses what needs it, and a granted target is still served
  const answers = {
    'a promise whose then is not a function': (): unknown => Object.defineProperty(Promise.resolve(true), 'then', { value: undefined }),
    'a proxy whose prototype cannot be read': (): unknown =>
      new Proxy(
        {},
        {
          getPrototypeOf() {
            throw new Error('no prototype');
          },
        },
      ),
    'the string "true"': (): unknown => 'true',
  };
  test.each([
    ['isFirstParty', 'a promise whose then is not a function', 'not_first_party'],
    ['isFirstParty', 'a proxy whose prototype cannot be read', 'not_first_party'],
    ['isFirstParty', 'the string "true"', 'not_first_party'],
    ['allowSkippingConsent', 'a promise whose then is not a function', 'consent_required'],
    ['allowSkippingConsent', 'a proxy whose prototype cannot be read', 'consent_required'],
    ['allowSkippingConsent', 'the string "true"', 'consent_required'],
  ] as const)('%s answering %s refuses (%s)', async (option, name, reason) => {
    await expectCheckRefusal(option, answers[name], reason, 'resource');
  });
});

describe('a policy deleted while an asynchronous isFirstParty answers', () => {
  // SPEC E10: a deletion takes effect at once on the instance that wrote it; the policy is read
  // after the first-party answer, so a deletion made while it was awaited applies to the request
  test('the exchange is refused as without a policy, and the refresh token is left as it was', async () => {
    const memory = new MemoryPolicyStore();
    await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    let gate: { entered: () => void; released: Promise<void> } | undefined;
    const server = await startServer({
      mrrt: {
        store: memory,
        allowSkippingConsent: SKIP_CONSENT,
        isFirstParty: async () => {
          if (gate) {
            gate.entered();
            await gate.released;
          }
          return true;
        },
      },
      rotate: true,
    });
    try {
      const tokens = await login(server);
      // the client's policy is in the cache
      const first = await refresh(server, tokens.refresh_token, { resource: API.B });
      expect(first.status).toBe(200);
      const refreshToken = first.body.refresh_token as string;
      let release!: () => void;
      const entered = new Promise<void>((resolve) => {
        gate = { entered: resolve, released: new Promise<void>((done) => (release = done)) };
      });
      const before = snapshot(server, refreshToken);

      const pending = refresh(server, refreshToken, { resource: API.B });
      await entered;
      await memory.delete('app');
      release();
      const res = await pending;
      expect({ status: res.status, error: res.body.error }).toEqual({ status: 400, error: 'invalid_target' });
      expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'no_policy' });
      expect(snapshot(server, refreshToken)).toEqual(before);
      gate = undefined;
      expect((await refresh(server, refreshToken, { resource: API.A })).status).toBe(200);
    } finally {
      await server.close();
    }
  });
});

describe('option functions that fail or never answer', () => {
  // isFirstParty / allowSkippingConsent may ask a database: their failure refuses only what needs their
  // answer, within storeTimeout; a granted target is served as without MRRT, oidc-provider's own errors win
  const never = (): Promise<boolean> => new Promise<boolean>(() => {});
  const throws = (): boolean => {
    throw new Error('the client database is down');
  };
  // an answer whose `then` cannot be read fails as `await` would make it fail
  const unreadable = (): object =>
    Object.defineProperty({}, 'then', {
      get() {
        throw new Error('the client database driver is broken');
      },
    });
  test.each([
    ['isFirstParty', 'throws', throws],
    ['isFirstParty', 'never answers', never],
    ['isFirstParty', 'answers with an unreadable then', unreadable],
    ['allowSkippingConsent', 'throws', throws],
    ['allowSkippingConsent', 'never answers', never],
    ['allowSkippingConsent', 'answers with an unreadable then', unreadable],
  ] as const)('%s that %s', async (option, _how, answer) => {
    const memory = new MemoryPolicyStore();
    await memory.set('app', [
      { audience: API.A, scope: ['a:write'] },
      { audience: API.B, scope: ['b:read'] },
    ]);
    const errorsSeen: unknown[] = [];
    const server = await startServer({
      mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT, isFirstParty: () => true, storeTimeout: 50, [option]: answer },
      rotate: true,
    });
    server.provider.on('mrrt.check_error', (_ctx, err) => errorsSeen.push(err));
    try {
      const tokens = await login(server);
      const before = snapshot(server, tokens.refresh_token);
      const refused = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect({ status: refused.status, error: refused.body.error }).toEqual({ status: 503, error: 'temporarily_unavailable' });
      expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'check_unavailable' });
      expect(errorsSeen).toHaveLength(1);
      expect(snapshot(server, tokens.refresh_token)).toEqual(before);
      // oidc-provider's own check wins for a token that does not exist
      const bogus = await refresh(server, 'not-a-refresh-token', { resource: API.A });
      expect({ status: bogus.status, error: bogus.body.error }).toEqual({ status: 400, error: 'invalid_grant' });
      // the granted API is served as without MRRT (its policy scope a:write is not added)
      const granted = await refresh(server, tokens.refresh_token, { resource: API.A });
      expect(granted.status).toBe(200);
      expect(claims(granted.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });
    } finally {
      await server.close();
    }
  });
});

describe('a target outside the cached policy', () => {
  // most refreshes of a deployment name a target the refresh token holds: once the client's policy
  // is cached, nothing of MRRT is decided or asked for them, and a refusal is decided only when the
  // refresh token lacks the target, still before anything is written
  test.each([true, false])('asks the deployment nothing unless the refresh token lacks it (rotation %s)', async (rotate) => {
    const memory = new MemoryPolicyStore();
    await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    let asked = 0;
    let failing = false;
    const isFirstParty = (): boolean => {
      asked += 1;
      if (failing) throw new Error('the client database is down');
      return true;
    };
    const errorsSeen: unknown[] = [];
    const server = await startServer({ mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN], isFirstParty }, rotate });
    server.provider.on('mrrt.check_error', (_ctx, err) => errorsSeen.push(err));
    try {
      const tokens = await login(server);
      let current = tokens.refresh_token;
      const served = async (resource: string): Promise<void> => {
        const res = await refresh(server, current, { resource });
        expect(res.status).toBe(200);
        expect(claims(res.body.access_token).aud).toBe(resource);
        if (rotate) current = res.body.refresh_token as string;
      };
      const refused = async (resource: string, status: number, error: string, reason: MrrtReason): Promise<void> => {
        const before = snapshot(server, current);
        const seen = server.events.length;
        const providerEventsBefore = server.providerEvents.length;
        const res = await refresh(server, current, { resource });
        expect({ status: res.status, error: res.body.error }).toEqual({ status, error });
        expect(server.events.slice(seen)).toEqual([expect.objectContaining({ outcome: 'refused', reason, subject: 'alice', grantId: before.grantId })]);
        expect(server.providerEvents.slice(providerEventsBefore)).toEqual([]);
        expect(snapshot(server, current)).toEqual(before);
      };

      // the client's first exchange reads its policy, and asks the checks
      await served(API.B);
      expect(asked).toBe(1);
      // the granted API: no check asked, no event, not even when the checks fail
      const seen = server.events.length;
      await served(API.A);
      failing = true;
      await served(API.A);
      expect({ asked, errors: errorsSeen.length, events: server.events.length - seen }).toEqual({ asked: 1, errors: 0, events: 0 });
      // a target the refresh token lacks: the refusal is decided, failing checks refuse with a 503
      await refused(API.C, 503, 'temporarily_unavailable', 'check_unavailable');
      expect({ asked, errors: errorsSeen.length }).toEqual({ asked: 2, errors: 1 });
      failing = false;
      await refused(API.C, 400, 'invalid_target', 'not_in_policy');
      await refused(API.ADMIN, 400, 'invalid_target', 'deny_listed');
      expect(asked).toBe(4);
      await served(API.A);
      await served(API.B);
    } finally {
      await server.close();
    }
  });
});

describe('a malformed getResourceServerInfo answer', () => {
  test.each([false, true])('is a server_error before anything is written (rotation %s): the refresh token still works', async (rotate) => {
    const memory = new MemoryPolicyStore();
    await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    const server = await startServer({
      mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT },
      rotate,
      configure(configuration) {
        const original = configuration.features!.resourceIndicators!.getResourceServerInfo!;
        configuration.features!.resourceIndicators!.getResourceServerInfo = (ctx, resource, client) =>
          resource === API.B ? { scope: 'b:read', audience: 5 as unknown as string } : original(ctx, resource, client);
      },
    });
    try {
      const tokens = await login(server);
      const before = snapshot(server, tokens.refresh_token);
      server.providerEvents.length = 0;
      const res = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect({ status: res.status, error: res.body.error }).toEqual({ status: 500, error: 'server_error' });
      expect(server.providerEvents.filter((name) => name.startsWith('refresh_token.'))).toEqual([]);
      expect(snapshot(server, tokens.refresh_token)).toEqual(before);
      expect((await refresh(server, tokens.refresh_token, { resource: API.A })).status).toBe(200);
    } finally {
      await server.close();
    }
  });
});

describe("the provider's OpenID scopes", () => {
  test('never reach an API token through a policy, whatever the API defines', async () => {
    const memory = new MemoryPolicyStore();
    // written behind the admin API's back (it refuses OpenID scopes), as a tampered store could
    await memory.set('app', [{ audience: API.B, scope: ['b:read', 'email'] }]);
    const server = await startServer({
      mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT },
      configure(configuration) {
        configuration.scopes = ['openid', 'offline_access', 'email'];
        const original = configuration.features!.resourceIndicators!.getResourceServerInfo!;
        configuration.features!.resourceIndicators!.getResourceServerInfo = (ctx, resource, client) =>
          resource === API.B ? { scope: 'b:read email', accessTokenFormat: 'jwt' } : original(ctx, resource, client);
      },
    });
    try {
      const tokens = await login(server);
      const all = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect(all.status).toBe(200);
      expect(claims(all.body.access_token).scope).toBe('b:read');
      const before = snapshot(server, tokens.refresh_token);
      const asked = await refresh(server, tokens.refresh_token, { audience: API.B, scope: 'email b:read' });
      expect({ status: asked.status, error: asked.body.error }).toEqual({ status: 400, error: 'invalid_scope' });
      // the refused request changed nothing, and the refresh token still works
      expect(snapshot(server, tokens.refresh_token)).toEqual(before);
      expect((await refresh(server, tokens.refresh_token, { resource: API.A })).status).toBe(200);
    } finally {
      await server.close();
    }
  });
});

describe('scopes the user rejected in the Grant', () => {
  test.each([
    ['rotation off', false],
    ['rotation on', true],
  ])('never reach a token through a policy; with every policy scope rejected the exchange is refused (%s)', async (_label, rotate) => {
    const memory = new MemoryPolicyStore();
    await memory.set('app', [{ audience: API.B, scope: ['b:read', 'b:write'] }]);
    const server = await startServer({ mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT }, rotate });
    const reject = async (refreshToken: string, scope: string) => {
      const { grantId } = snapshot(server, refreshToken);
      const grant = (await server.provider.Grant.find(grantId))!;
      grant.rejectResourceScope(API.B, scope);
      await grant.save();
    };
    try {
      const tokens = await login(server);
      await reject(tokens.refresh_token, 'b:read');
      const partly = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect(partly.status).toBe(200);
      expect(claims(partly.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:write' });
      const current = (partly.body.refresh_token as string | undefined) ?? tokens.refresh_token;
      // asked for by name, a rejected scope is not available either
      const named = await refresh(server, current, { audience: API.B, scope: 'b:read' });
      expect({ status: named.status, error: named.body.error }).toEqual({ status: 400, error: 'invalid_scope' });

      await reject(current, 'b:write');
      const before = snapshot(server, current);
      server.events.length = 0;
      const none = await refresh(server, current, { audience: API.B });
      expect({ status: none.status, error: none.body.error }).toEqual({ status: 400, error: 'invalid_scope' });
      expect(none.body).not.toHaveProperty('access_token');
      expect(server.events.map((event) => event.reason)).toEqual(['empty_scope']);
      // the refused request changed nothing, and the refresh token still works
      expect(snapshot(server, current)).toEqual(before);
      expect((await refresh(server, current, { resource: API.A })).status).toBe(200);
    } finally {
      await server.close();
    }
  });
});

test("the request's MRRT state is not an enumerable part of the Koa context that listeners receive", async () => {
  const memory = new MemoryPolicyStore();
  await memory.set('app', [{ audience: API.B, scope: ['b:read'] }]);
  const server = await startServer({ mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT } });
  const copies: Array<Record<string | symbol, unknown>> = [];
  server.provider.on('mrrt.exchange', (ctx) => copies.push({ ...ctx }));
  try {
    const tokens = await login(server);
    // a refusal is reported while the request is still being handled (its state still in place)
    const res = await refresh(server, tokens.refresh_token, { audience: API.C });
    expect(res.status).toBe(400);
    expect(copies).toHaveLength(1);
    const values = Reflect.ownKeys(copies[0]!).map((key) => copies[0]![key]);
    expect(values.some((value) => typeof value === 'object' && value !== null && 'refreshTokenValue' in value)).toBe(false);
  } finally {
    await server.close();
  }
});

describe("the deployment's rotateRefreshToken", () => {
  let server: TestServer;
  const asked: string[] = [];
  beforeAll(async () => {
    const store = new MemoryPolicyStore();
    await store.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    server = await startServer({
      mrrt: { store, allowSkippingConsent: SKIP_CONSENT },
      configure: (configuration) => {
        // rotates only when the request names API.A: the answer must reach oidc-provider unchanged
        configuration.rotateRefreshToken = (ctx) => {
          asked.push(String(ctx.oidc.params?.resource));
          return ctx.oidc.params?.resource === API.A;
        };
      },
    });
  });
  afterAll(() => server.close());

  test('is asked once and decides rotation for a target the refresh token holds', async () => {
    asked.length = 0;
    const tokens = await login(server);
    const res = await refresh(server, tokens.refresh_token, { resource: API.A });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token).aud).toBe(API.A);
    expect(res.body.refresh_token).not.toBe(tokens.refresh_token);
    expect(asked).toEqual([API.A]);
  });

  // with a scope the token lacks, the refusal still answers before oidc-provider's scope check
  test.each([
    ['no scope', undefined],
    ['a scope the refresh token lacks', 'c:write'],
    ['a scope the refresh token holds', 'openid'],
  ])('is never asked for a target outside the grant and the policy (%s): refused first, nothing consumed, the token still works', async (_, scope) => {
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);
    asked.length = 0;
    const res = await refresh(server, tokens.refresh_token, { resource: API.C, ...(scope === undefined ? {} : { scope }) });
    expect(res.status).toBe(400);
    expect(res.body.error).toBe('invalid_target');
    expect(asked).toEqual([]);
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    const again = await refresh(server, tokens.refresh_token, { resource: API.A });
    expect(again.status).toBe(200);
    expect(asked).toEqual([API.A]);
  });

  test("a refused target whose refresh token fails oidc-provider's own checks: oidc-provider's answer, no MRRT event, nothing written", async () => {
    const tokens = await login(server);
    const stored = server.storage.entries.get(`RefreshToken:${tokens.refresh_token}`)!;
    stored.payload.exp = Math.floor(Date.now() / 1000) - 60;
    const before = snapshot(server, tokens.refresh_token);
    const seen = server.events.length;
    asked.length = 0;
    const res = await refresh(server, tokens.refresh_token, { resource: API.C });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error: 'invalid_grant', error_description: 'grant request is invalid' });
    expect(server.events.slice(seen)).toEqual([]);
    expect(asked).toEqual([]);
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
  });

  test('a refused target whose refresh token oidc-provider accepted and then refuses (reuse) is reported as provider_check', async () => {
    const tokens = await login(server);
    const rotated = await refresh(server, tokens.refresh_token, { resource: API.A });
    expect(rotated.status).toBe(200);
    const seen = server.events.length;
    const reused = await refresh(server, tokens.refresh_token, { resource: API.C });
    expect(reused.status).toBe(400);
    expect(reused.body.error).toBe('invalid_grant');
    expect(server.events.slice(seen)).toEqual([expect.objectContaining({ outcome: 'refused', reason: 'provider_check', error: 'invalid_grant' })]);
  });
});

describe('a Provider subclass that sets its own rotateRefreshToken', () => {
  // its constructor replaces the configured function, so the extension cannot rely on being asked
  class AlwaysRotates extends Provider {
    constructor(issuer: string, configuration: Configuration) {
      super(issuer, { ...configuration, rotateRefreshToken: true });
    }
  }
  let server: TestServer;
  beforeAll(async () => {
    const store = new MemoryPolicyStore();
    await store.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    server = await startServer({ mrrt: { store }, providerClass: withMrrt(AlwaysRotates, { store, allowSkippingConsent: SKIP_CONSENT }) });
  });
  afterAll(() => server.close());

  test('a refused target leaves the refresh token unused, and it still rotates for a granted one', async () => {
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);
    const res = await refresh(server, tokens.refresh_token, { resource: API.C });
    expect(res.status).toBe(400);
    expect(res.body.error).toBe('invalid_target');
    expect(server.providerEvents).not.toContain('refresh_token.consumed');
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    const granted = await refresh(server, tokens.refresh_token, { resource: API.A });
    expect(granted.status).toBe(200);
    expect(granted.body.refresh_token).not.toBe(tokens.refresh_token);
    expect((await refresh(server, granted.body.refresh_token as string, { resource: API.B })).status).toBe(200);
  });
});

describe("the decision for a target in the client's cached policy", () => {
  // whatever an exchange keeps of a cached policy, each exchange is decided: a refusal is refused every
  // time, a changed policy applies at once, and an operator's own check is asked on every exchange,
  // since its answer may change
  const policy: Policy = [
    { audience: API.B, scope: ['b:read'] },
    { audience: API.CONSENT, scope: ['x:read'] },
    { audience: API.ADMIN, scope: ['admin:write'] },
  ];

  async function exchanges(server: TestServer, rotate: boolean) {
    const tokens = await login(server);
    let current = tokens.refresh_token;
    return {
      served: async (resource: string): Promise<void> => {
        const res = await refresh(server, current, { resource });
        expect({ status: res.status, aud: res.status === 200 ? claims(res.body.access_token).aud : res.body }).toEqual({ status: 200, aud: resource });
        if (rotate) current = res.body.refresh_token as string;
      },
      refused: async (resource: string, reason: MrrtReason): Promise<void> => {
        const before = snapshot(server, current);
        const seen = server.events.length;
        const res = await refresh(server, current, { resource });
        expect({ status: res.status, error: res.body.error }).toEqual({ status: 400, error: 'invalid_target' });
        expect(server.events.slice(seen)).toEqual([expect.objectContaining({ outcome: 'refused', reason, subject: 'alice', grantId: before.grantId })]);
        expect(snapshot(server, current)).toEqual(before);
      },
    };
  }

  test.each([true, false])('built-in checks: a refusal is refused on every exchange, and the refresh token still works (rotation %s)', async (rotate) => {
    const memory = new MemoryPolicyStore();
    await memory.set('app', policy);
    const server = await startServer({ mrrt: { store: memory, allowSkippingConsent: [API.B, API.ADMIN], denyList: [API.ADMIN] }, rotate });
    try {
      const { served, refused } = await exchanges(server, rotate);
      for (let i = 0; i < 2; i += 1) {
        await served(API.B);
        await refused(API.CONSENT, 'consent_required');
        await refused(API.ADMIN, 'deny_listed');
      }
      // an entry the client was allowed to use is still checked against the deny-list as it is now
      // (changing it at run time is not an interface, but nothing kept may outlive it)
      const denyList = (server.provider as unknown as Record<typeof mrrtConfiguration, { denyList: Set<string> }>)[mrrtConfiguration].denyList;
      denyList.add(API.B);
      await refused(API.B, 'deny_listed');
      denyList.delete(API.B);
      await served(API.B);
      // a changed policy is a new record, decided anew
      await memory.set('app', [{ audience: API.CONSENT, scope: ['x:read'] }]);
      await refused(API.B, 'not_in_policy');
      await refused(API.CONSENT, 'consent_required');
      await served(API.A);
    } finally {
      await server.close();
    }
  });

  test.each(['isFirstParty', 'allowSkippingConsent'] as const)(
    "an operator's %s is asked on every exchange: its changed answer applies at once",
    async (option) => {
      const memory = new MemoryPolicyStore();
      await memory.set('app', policy);
      let allowed = true;
      let asked = 0;
      const check = (): boolean => {
        asked += 1;
        return allowed;
      };
      const checks = option === 'isFirstParty' ? { isFirstParty: check, allowSkippingConsent: SKIP_CONSENT } : { allowSkippingConsent: check };
      const server = await startServer({ mrrt: { store: memory, ...checks }, rotate: true });
      try {
        const { served, refused } = await exchanges(server, true);
        await served(API.B);
        await served(API.B);
        expect(asked).toBe(2);
        allowed = false;
        await refused(API.B, option === 'isFirstParty' ? 'not_first_party' : 'consent_required');
        allowed = true;
        await served(API.B);
        expect(asked).toBe(4);
      } finally {
        await server.close();
      }
    },
  );
});
