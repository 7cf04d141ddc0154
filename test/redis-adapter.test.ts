import { randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import type { AdapterPayload, Configuration } from 'oidc-provider';
import request from 'supertest';

import { MemoryPolicyStore, RedisAdapter, type RedisAdapterOptions } from '../lib/index.js';
import { API, CLIENTS, claims, login, refresh, startServer, type ServerOptions, type TestServer } from './support/fixture.js';
import { describeAdapterUnit } from './support/adapter-unit.js';

const url = process.env.MRRT_TEST_REDIS_URL!;
const redis = new Redis(url);
const prefix = `mrrt-test:adapter-${randomBytes(6).toString('hex')}:`;
const extraClients: Redis[] = [];
const factory = RedisAdapter.factory(redis, { prefix });
/** Short, so that the flows below can wait it out. */
const REUSE_INTERVAL = 2; // long enough that a loaded CI machine answers the early reuse inside it
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function keysUnder(pattern: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 500);
    keys.push(...batch);
    cursor = next;
  } while (cursor !== '0');
  return keys;
}

afterAll(async () => {
  const keys = await keysUnder(`${prefix}*`);
  for (let i = 0; i < keys.length; i += 500) await redis.del(...keys.slice(i, i + 500));
  await Promise.all([redis, ...extraClients].map((client) => client.quit()));
});

describe('RedisAdapter arguments', () => {
  test('factory and constructor validate their arguments with TypeErrors naming the option', () => {
    expect(() => RedisAdapter.factory(undefined as never)).toThrow(new TypeError('"redis" must be an ioredis Redis or Cluster instance'));
    expect(() => RedisAdapter.factory({} as never)).toThrow(TypeError);
    expect(() => RedisAdapter.factory(redis, null as never)).toThrow(new TypeError('"options" must be an object'));
    expect(() => RedisAdapter.factory(redis, { prefix: '' })).toThrow(/"prefix" option/);
    expect(() => RedisAdapter.factory(redis, { prefix: 42 } as unknown as RedisAdapterOptions)).toThrow(/"prefix" option/);
    expect(() => RedisAdapter.factory(redis, { keyPrefix: 'x' } as unknown as RedisAdapterOptions)).toThrow(
      new TypeError('"keyPrefix" is not a RedisAdapter option'),
    );
    for (const reuseInterval of [-1, 61, Number.NaN, Number.POSITIVE_INFINITY, '2', null]) {
      expect(() => RedisAdapter.factory(redis, { reuseInterval } as unknown as RedisAdapterOptions)).toThrow(
        new TypeError('"reuseInterval" option must be a number of seconds from 0 to 60'),
      );
    }
    expect(() => RedisAdapter.factory(redis, { reuseInterval: 0 })).not.toThrow();
    expect(() => RedisAdapter.factory(redis, { reuseInterval: 60 })).not.toThrow();
    expect(() => new RedisAdapter('', redis)).toThrow(/"name"/);
    expect(() => new (RedisAdapter as unknown as new (name: string) => RedisAdapter)('Session')).toThrow(/RedisAdapter\.factory/);
  });

  test('the default prefix is oidc: and the factory binds its prefix', () => {
    expect(new RedisAdapter('Session', redis).keyFor('abc')).toBe('oidc:Session:abc');
    expect(new RedisAdapter('Session', redis).grantKeyFor('g')).toBe('oidc:grant:g');
    const adapter = factory('RefreshToken') as RedisAdapter;
    expect(adapter).toBeInstanceOf(RedisAdapter);
    expect(adapter.keyFor('abc')).toBe(`${prefix}RefreshToken:abc`);
  });

  test('a model that oidc-provider never consumes cannot be consumed', async () => {
    await expect(factory('Session').consume('x')).rejects.toThrow(/cannot consume a Session/);
  });
});

describeAdapterUnit('standalone Redis', () => ({
  redis,
  prefix,
  connect: async () => {
    const client = new Redis(url);
    extraClients.push(client);
    return client;
  },
}));

describe.each([
  ['plain oidc-provider', false],
  ['withMrrt', true],
] as const)('complete flows on %s with the Redis adapter', (_label, mrrt) => {
  let server: TestServer;
  const store = new MemoryPolicyStore();

  beforeAll(async () => {
    await store.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    const options: ServerOptions = {
      adapter: RedisAdapter.factory(redis, { prefix, reuseInterval: REUSE_INTERVAL }),
      mrrt: mrrt ? { store, allowSkippingConsent: [API.A, API.B] } : false,
      rotate: true,
      configure: (configuration: Configuration) => {
        configuration.features = {
          ...configuration.features,
          revocation: { enabled: true, allowedPolicy: (_ctx, client, token) => token.clientId === client.clientId },
        };
      },
    };
    server = await startServer(options);
  });
  afterAll(() => server.close());

  const key = (model: string, id: string) => `${prefix}${model}:${id}`;
  async function storedRefreshToken(token: string): Promise<AdapterPayload & { consumed?: number }> {
    const hash = await redis.hgetall(key('RefreshToken', token));
    if (!hash.payload) throw new Error('refresh token not in Redis');
    return { ...JSON.parse(hash.payload), ...(hash.consumed ? { consumed: Number(hash.consumed) } : {}) };
  }
  /** Every key under the prefix that belongs to `grantId`: its index, its Grant, and entries naming it. */
  async function keysOfGrant(grantId: string): Promise<string[]> {
    const found: string[] = [];
    for (const k of await keysUnder(`${prefix}*`)) {
      if (k === `${prefix}grant:${grantId}` || k === key('Grant', grantId)) {
        found.push(k);
        continue;
      }
      const type = await redis.type(k);
      const json = type === 'string' ? await redis.get(k) : type === 'hash' ? await redis.hget(k, 'payload') : null;
      try {
        if (json && (JSON.parse(json) as AdapterPayload).grantId === grantId) found.push(k);
      } catch {
        /* lookup keys hold plain ids */
      }
    }
    return found;
  }
  const revoke = (token: string) =>
    request(server.url)
      .post('/token/revocation')
      .type('form')
      .send({ token, token_type_hint: 'refresh_token', client_id: CLIENTS.app.client_id, client_secret: CLIENTS.app.client_secret });

  test('authorization code flow stores the grant, session, consumed code and refresh token in Redis', async () => {
    const tokens = await login(server);
    const rt = await storedRefreshToken(tokens.refresh_token);
    const grantId = rt.grantId!;
    expect(rt).toMatchObject({ kind: 'RefreshToken', clientId: 'app', accountId: 'alice', resource: API.A, scope: 'openid offline_access a:read' });
    expect(rt.consumed).toBeUndefined();
    expect(await redis.ttl(key('RefreshToken', tokens.refresh_token))).toBeGreaterThan(14 * 24 * 3600 - 10);
    expect(await redis.type(key('Grant', grantId))).toBe('string');
    expect(await redis.sismember(`${prefix}grant:${grantId}`, key('RefreshToken', tokens.refresh_token))).toBe(1);

    const codes = await keysOfGrant(grantId).then((keys) => keys.filter((k) => k.startsWith(`${prefix}AuthorizationCode:`)));
    expect(codes).toHaveLength(1);
    expect(Number(await redis.hget(codes[0]!, 'consumed'))).toBeGreaterThan(0);
    expect(await redis.ttl(codes[0]!)).toBeGreaterThan(0);

    expect(rt.sessionUid).toEqual(expect.any(String));
    const session = await factory('Session').findByUid(rt.sessionUid!);
    expect(session).toMatchObject({ kind: 'Session', accountId: 'alice', uid: rt.sessionUid });
    expect(await redis.type(key('Session', session!.jti!))).toBe('string');
  });

  test('refresh with rotation consumes the old refresh token and stores the new one', async () => {
    const tokens = await login(server);
    const res = await refresh(server, tokens.refresh_token, { resource: API.A });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token).aud).toBe(API.A);
    const rotated: string = res.body.refresh_token;
    expect(rotated).not.toBe(tokens.refresh_token);

    const old = await storedRefreshToken(tokens.refresh_token);
    const fresh = await storedRefreshToken(rotated);
    expect(old.consumed).toEqual(expect.any(Number));
    expect(await redis.ttl(key('RefreshToken', tokens.refresh_token))).toBeGreaterThan(0);
    expect(fresh.consumed).toBeUndefined();
    expect(fresh.grantId).toBe(old.grantId);
    expect(fresh).toMatchObject({ resource: API.A, scope: 'openid offline_access a:read' });
    expect(await redis.sismember(`${prefix}grant:${fresh.grantId}`, key('RefreshToken', rotated))).toBe(1);

    const again = await refresh(server, rotated, { resource: API.A });
    expect(again.status).toBe(200);
  });

  test('revocation at the revocation endpoint, then refresh -> invalid_grant', async () => {
    const tokens = await login(server);
    const { grantId } = await storedRefreshToken(tokens.refresh_token);
    const res = await revoke(tokens.refresh_token);
    expect(res.status).toBe(200);
    expect(await keysOfGrant(grantId!)).toEqual([]);

    const after = await refresh(server, tokens.refresh_token);
    expect(after.status).toBe(400);
    expect(after.body.error).toBe('invalid_grant');
  });

  test('reuse of a rotated refresh token: inside reuseInterval invalid_grant and nothing else; after it invalid_grant and the whole grant revoked', async () => {
    const tokens = await login(server);
    const { grantId } = await storedRefreshToken(tokens.refresh_token);
    const first = await refresh(server, tokens.refresh_token);
    expect(first.status).toBe(200);
    const rotated: string = first.body.refresh_token;
    const keysBefore = (await keysOfGrant(grantId!)).sort();
    expect(keysBefore.length).toBeGreaterThanOrEqual(4);

    const early = await refresh(server, tokens.refresh_token);
    expect(early.status).toBe(400);
    expect(early.body.error).toBe('invalid_grant');
    expect((await keysOfGrant(grantId!)).sort()).toEqual(keysBefore);

    await sleep(REUSE_INTERVAL * 1000 + 100);
    const reuse = await refresh(server, tokens.refresh_token);
    expect(reuse.status).toBe(400);
    expect(reuse.body.error).toBe('invalid_grant');
    expect(await keysOfGrant(grantId!)).toEqual([]);
    expect(await redis.exists(key('RefreshToken', rotated), key('RefreshToken', tokens.refresh_token), key('Grant', grantId!))).toBe(0);

    const next = await refresh(server, rotated);
    expect(next.status).toBe(400);
    expect(next.body.error).toBe('invalid_grant');
  });

  if (mrrt)
    test('an MRRT exchange stores the rotated refresh token with the original resource and scope', async () => {
      const tokens = await login(server);
      const original = await storedRefreshToken(tokens.refresh_token);
      const grantBefore = await redis.get(key('Grant', original.grantId!));

      const res = await refresh(server, tokens.refresh_token, { resource: API.B });
      expect(res.status).toBe(200);
      expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
      expect(res.body.scope).toBe('b:read');

      const rotated = await storedRefreshToken(res.body.refresh_token);
      expect(rotated.resource).toEqual(original.resource);
      expect(rotated.scope).toBe(original.scope);
      expect(rotated).toMatchObject({ resource: API.A, scope: 'openid offline_access a:read', grantId: original.grantId });
      expect((await storedRefreshToken(tokens.refresh_token)).consumed).toEqual(expect.any(Number));
      expect(await redis.get(key('Grant', original.grantId!))).toBe(grantBefore);

      const back = await refresh(server, res.body.refresh_token, { resource: API.A });
      expect(back.status).toBe(200);
      expect(claims(back.body.access_token).aud).toBe(API.A);
    });
});
