import { randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import type { AdapterPayload, Configuration } from 'oidc-provider';
import request from 'supertest';

import { MemoryPolicyStore, RedisAdapter, type RedisAdapterOptions } from '../lib/index.js';
import { API, CLIENTS, claims, login, refresh, startServer, type ServerOptions, type TestServer } from './helpers/fixture.js';

const url = process.env.MRRT_TEST_REDIS_URL!;
const redis = new Redis(url);
const prefix = `mrrt-test:adapter-${randomBytes(6).toString('hex')}:`;
const extraClients: Redis[] = [];
const factory = RedisAdapter.factory(redis, { prefix });
const now = () => Math.floor(Date.now() / 1000);
const newId = () => randomBytes(12).toString('base64url');

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
    expect(() => RedisAdapter.factory(redis, { keyPrefix: 'x' } as unknown as RedisAdapterOptions)).toThrow(new TypeError('"keyPrefix" is not a RedisAdapter option'));
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

describe('RedisAdapter unit', () => {
  test('upsert/find round trip as a JSON string, replacing on re-upsert', async () => {
    const adapter = factory('AccessToken');
    const id = newId();
    const payload: AdapterPayload = { jti: id, kind: 'AccessToken', accountId: 'alice', scope: 'openid', exp: now() + 60, extra: { nested: [1, 'two'] }, aud: [] };
    await adapter.upsert(id, payload, 60);
    expect(await redis.type(`${prefix}AccessToken:${id}`)).toBe('string');
    expect(JSON.parse((await redis.get(`${prefix}AccessToken:${id}`))!)).toEqual(payload);
    expect(await adapter.find(id)).toEqual(payload);
    await adapter.upsert(id, { jti: id, kind: 'AccessToken' }, 60);
    expect(await adapter.find(id)).toEqual({ jti: id, kind: 'AccessToken' });
    expect(await adapter.find(newId())).toBeUndefined();
  });

  test('consumable models are hashes whose payload round-trips', async () => {
    const adapter = factory('AuthorizationCode');
    const id = newId();
    const payload: AdapterPayload = { jti: id, kind: 'AuthorizationCode', grantId: newId(), scope: 'openid' };
    await adapter.upsert(id, payload, 60);
    expect(await redis.type(`${prefix}AuthorizationCode:${id}`)).toBe('hash');
    expect(await redis.hkeys(`${prefix}AuthorizationCode:${id}`)).toEqual(['payload']);
    expect(await adapter.find(id)).toEqual(payload);
    expect(await factory('AuthorizationCode').find(newId())).toBeUndefined();
  });

  test('expiresIn becomes the key TTL, rounded up; none means no TTL; <= 0 deletes the entry', async () => {
    const tokens = factory('AccessToken');
    const codes = factory('AuthorizationCode');
    const [a, b, c, d] = [newId(), newId(), newId(), newId()];
    await tokens.upsert(a, { jti: a }, 120);
    await codes.upsert(b, { jti: b }, 90);
    await tokens.upsert(c, { jti: c }, 0.2);
    await tokens.upsert(d, { jti: d });
    const pttl = (id: string, model = 'AccessToken') => redis.pttl(`${prefix}${model}:${id}`);
    expect(await pttl(a)).toBeGreaterThan(115_000);
    expect(await pttl(a)).toBeLessThanOrEqual(120_000);
    expect(await pttl(b, 'AuthorizationCode')).toBeGreaterThan(85_000);
    expect(await pttl(b, 'AuthorizationCode')).toBeLessThanOrEqual(90_000);
    expect(await pttl(c)).toBeGreaterThan(0);
    expect(await pttl(c)).toBeLessThanOrEqual(1000);
    expect(await redis.ttl(`${prefix}AccessToken:${d}`)).toBe(-1);

    await codes.upsert(b, { jti: b });
    expect(await redis.ttl(`${prefix}AuthorizationCode:${b}`)).toBe(-1);
    await tokens.upsert(a, { jti: a }, 0);
    expect(await redis.exists(`${prefix}AccessToken:${a}`)).toBe(0);
    await expect(tokens.upsert(a, { jti: a }, Number.NaN)).rejects.toThrow(/"expiresIn"/);
  });

  test('consume sets consumed (epoch seconds) atomically and keeps the TTL', async () => {
    const adapter = factory('RefreshToken');
    const id = newId();
    const payload: AdapterPayload = { jti: id, kind: 'RefreshToken', grantId: newId(), scope: 'openid offline_access' };
    await adapter.upsert(id, payload, 3600);
    const before = now();
    await adapter.consume(id);
    const found = await adapter.find(id);
    expect(found).toEqual({ ...payload, consumed: expect.any(Number) });
    expect(found!.consumed).toBeGreaterThanOrEqual(before);
    expect(found!.consumed).toBeLessThanOrEqual(now());
    const pttl = await redis.pttl(`${prefix}RefreshToken:${id}`);
    expect(pttl).toBeGreaterThan(3_590_000);
    expect(pttl).toBeLessThanOrEqual(3_600_000);

    // a consumed entry stays consumed when saved again
    await adapter.upsert(id, payload, 3600);
    expect((await adapter.find(id))!.consumed).toBe(found!.consumed);
  });

  test('consume of a missing entry creates nothing', async () => {
    const id = newId();
    await factory('RefreshToken').consume(id);
    expect(await redis.exists(`${prefix}RefreshToken:${id}`)).toBe(0);
    expect(await factory('RefreshToken').find(id)).toBeUndefined();
  });

  test('concurrent consume calls from several connections all succeed and record one consumption', async () => {
    const clients = Array.from({ length: 4 }, () => new Redis(url));
    extraClients.push(...clients);
    const adapters = clients.map((client) => RedisAdapter.factory(client, { prefix })('AuthorizationCode'));
    const id = newId();
    const payload: AdapterPayload = { jti: id, kind: 'AuthorizationCode', grantId: newId() };
    await adapters[0]!.upsert(id, payload, 600);
    await Promise.all(adapters.flatMap((adapter) => Array.from({ length: 10 }, () => adapter.consume(id))));
    const key = `${prefix}AuthorizationCode:${id}`;
    expect((await redis.hkeys(key)).sort()).toEqual(['consumed', 'payload']);
    expect(await adapters[1]!.find(id)).toEqual({ ...payload, consumed: expect.any(Number) });
    expect(await redis.pttl(key)).toBeGreaterThan(590_000);
  });

  test('findByUid resolves a Session by uid, with the entry TTL, and ignores stale lookups', async () => {
    const sessions = factory('Session');
    const [id, uid] = [newId(), newId()];
    const payload: AdapterPayload = { jti: id, uid, kind: 'Session', accountId: 'alice' };
    await sessions.upsert(id, payload, 300);
    expect(await sessions.findByUid(uid)).toEqual(payload);
    expect(await redis.get(`${prefix}uid:Session:${uid}`)).toBe(id);
    expect(await redis.ttl(`${prefix}uid:Session:${uid}`)).toBeGreaterThan(295);
    expect(await sessions.findByUid(newId())).toBeUndefined();

    const uid2 = newId();
    await sessions.upsert(id, { ...payload, uid: uid2 }, 300);
    expect(await sessions.findByUid(uid2)).toEqual({ ...payload, uid: uid2 });
    expect(await sessions.findByUid(uid)).toBeUndefined();
  });

  test('findByUserCode resolves a DeviceCode by userCode, with the entry TTL', async () => {
    const codes = factory('DeviceCode');
    const id = newId();
    const userCode = randomBytes(4).toString('hex').toUpperCase();
    const payload: AdapterPayload = { jti: id, userCode, kind: 'DeviceCode', clientId: 'app', grantId: newId() };
    await codes.upsert(id, payload, 600);
    expect(await codes.findByUserCode(userCode)).toEqual(payload);
    expect(await redis.ttl(`${prefix}userCode:DeviceCode:${userCode}`)).toBeGreaterThan(595);
    expect(await codes.findByUserCode('NOPE-NOPE')).toBeUndefined();
    await codes.consume(id);
    expect((await codes.findByUserCode(userCode))!.consumed).toEqual(expect.any(Number));
  });

  test('destroy deletes the entry; its lookups find nothing afterwards', async () => {
    const sessions = factory('Session');
    const tokens = factory('RefreshToken');
    const [sid, uid, rt] = [newId(), newId(), newId()];
    await sessions.upsert(sid, { jti: sid, uid }, 300);
    await tokens.upsert(rt, { jti: rt, grantId: newId() }, 300);
    await sessions.destroy(sid);
    await tokens.destroy(rt);
    expect(await redis.exists(`${prefix}Session:${sid}`, `${prefix}RefreshToken:${rt}`)).toBe(0);
    expect(await sessions.find(sid)).toBeUndefined();
    expect(await sessions.findByUid(uid)).toBeUndefined();
    expect(await tokens.find(rt)).toBeUndefined();
    await tokens.destroy(newId());
  });

  test('revokeByGrantId removes every token of the grant and only those', async () => {
    const [grant, otherGrant] = [newId(), newId()];
    const models = ['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest', 'PreAuthorizedCode'];
    const mine: string[] = [];
    const others: string[] = [];
    for (const model of models) {
      for (const [grantId, list] of [[grant, mine], [otherGrant, others]] as const) {
        const id = newId();
        await factory(model).upsert(id, { jti: id, grantId, ...(model === 'DeviceCode' ? { userCode: id } : {}) }, 600);
        list.push(`${prefix}${model}:${id}`);
      }
    }
    const session = newId();
    await factory('Session').upsert(session, { jti: session, uid: newId() }, 600);
    const grantEntry = newId();
    await factory('Grant').upsert(grantEntry, { jti: grantEntry, grantId: grant } as AdapterPayload, 600);

    expect((await redis.smembers(`${prefix}grant:${grant}`)).sort()).toEqual([...mine].sort());
    await factory('AccessToken').revokeByGrantId(grant);

    expect(await redis.exists(...mine)).toBe(0);
    expect(await redis.exists(`${prefix}grant:${grant}`)).toBe(0);
    expect(await redis.exists(...others)).toBe(others.length);
    expect((await redis.smembers(`${prefix}grant:${otherGrant}`)).sort()).toEqual([...others].sort());
    expect(await redis.exists(`${prefix}Session:${session}`, `${prefix}Grant:${grantEntry}`)).toBe(2);

    await factory('RefreshToken').revokeByGrantId(grant);
    await factory('RefreshToken').revokeByGrantId(newId());
  });

  test('the grant index lives as long as its longest-lived member', async () => {
    const grantId = newId();
    const index = `${prefix}grant:${grantId}`;
    const save = (model: string, expiresIn?: number) => {
      const id = newId();
      return factory(model).upsert(id, { jti: id, grantId }, expiresIn);
    };
    await save('AuthorizationCode', 60);
    expect(await redis.pttl(index)).toBeGreaterThan(55_000);
    expect(await redis.pttl(index)).toBeLessThanOrEqual(60_000);
    await save('RefreshToken', 7200);
    expect(await redis.pttl(index)).toBeGreaterThan(7_195_000);
    await save('AccessToken', 300);
    expect(await redis.pttl(index)).toBeGreaterThan(7_195_000);
    expect(await redis.scard(index)).toBe(3);
    await save('AccessToken');
    expect(await redis.ttl(index)).toBe(-1);
    await save('AccessToken', 10);
    expect(await redis.ttl(index)).toBe(-1);
    await factory('AccessToken').revokeByGrantId(grantId);
  });
});

describe.each([
  ['plain oidc-provider', false],
  ['withMrrt', true],
] as const)('complete flows on %s with the Redis adapter', (_label, mrrt) => {
  let server: TestServer;
  const store = new MemoryPolicyStore();

  beforeAll(async () => {
    await store.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    const options: ServerOptions = {
      adapter: RedisAdapter.factory(redis, { prefix }),
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
      if (k === `${prefix}grant:${grantId}` || k === key('Grant', grantId)) { found.push(k); continue; }
      const type = await redis.type(k);
      const json = type === 'string' ? await redis.get(k) : type === 'hash' ? await redis.hget(k, 'payload') : null;
      try {
        if (json && (JSON.parse(json) as AdapterPayload).grantId === grantId) found.push(k);
      } catch { /* lookup keys hold plain ids */ }
    }
    return found;
  }
  const revoke = (token: string) => request(server.url).post('/token/revocation').type('form')
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

  test('reuse of a rotated refresh token -> invalid_grant and the whole grant revoked', async () => {
    const tokens = await login(server);
    const { grantId } = await storedRefreshToken(tokens.refresh_token);
    const first = await refresh(server, tokens.refresh_token);
    expect(first.status).toBe(200);
    const rotated: string = first.body.refresh_token;
    expect((await keysOfGrant(grantId!)).length).toBeGreaterThanOrEqual(4);

    const reuse = await refresh(server, tokens.refresh_token);
    expect(reuse.status).toBe(400);
    expect(reuse.body.error).toBe('invalid_grant');
    expect(await keysOfGrant(grantId!)).toEqual([]);
    expect(await redis.exists(key('RefreshToken', rotated), key('RefreshToken', tokens.refresh_token), key('Grant', grantId!))).toBe(0);

    const next = await refresh(server, rotated);
    expect(next.status).toBe(400);
    expect(next.body.error).toBe('invalid_grant');
  });

  if (mrrt) test('an MRRT exchange stores the rotated refresh token with the original resource and scope', async () => {
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
