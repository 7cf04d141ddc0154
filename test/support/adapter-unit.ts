import { randomBytes } from 'node:crypto';

import { describe, expect, test } from '@jest/globals';
import type { Cluster, Redis } from 'ioredis';
import { errors, type AdapterPayload } from 'oidc-provider';

import { RedisAdapter, type RedisAdapterOptions } from '../../lib/index.js';

/** Where the unit suite runs: a client, a key prefix of its own, and a way to open more connections. */
export interface AdapterTarget {
  readonly redis: Redis | Cluster;
  readonly prefix: string;
  connect(): Promise<Redis | Cluster>;
}

const now = () => Math.floor(Date.now() / 1000);
const newId = () => randomBytes(12).toString('base64url');

/**
 * The RedisAdapter unit suite, run against standalone Redis (test/redis-adapter.test.ts) and a real
 * Redis Cluster (test/cluster.test.ts). Every Redis check touches one key per command, so it runs
 * unchanged when the keys live on different shards.
 */
export function describeAdapterUnit(name: string, target: () => AdapterTarget): void {
  const adapterFor = (model: string, options: Omit<RedisAdapterOptions, 'prefix'> = {}) =>
    RedisAdapter.factory(target().redis, { prefix: target().prefix, ...options })(model);
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  const exists = async (...keys: string[]): Promise<number> => {
    let count = 0;
    for (const key of keys) count += await target().redis.exists(key);
    return count;
  };

  describe(`RedisAdapter unit (${name})`, () => {
    test('upsert/find round trip as a JSON string, replacing on re-upsert', async () => {
      const adapter = adapterFor('AccessToken');
      const id = newId();
      const payload: AdapterPayload = {
        jti: id,
        kind: 'AccessToken',
        accountId: 'alice',
        scope: 'openid',
        exp: now() + 60,
        extra: { nested: [1, 'two'] },
        aud: [],
      };
      await adapter.upsert(id, payload, 60);
      expect(await target().redis.type(`${target().prefix}AccessToken:${id}`)).toBe('string');
      expect(JSON.parse((await target().redis.get(`${target().prefix}AccessToken:${id}`))!)).toEqual(payload);
      expect(await adapter.find(id)).toEqual(payload);
      await adapter.upsert(id, { jti: id, kind: 'AccessToken' }, 60);
      expect(await adapter.find(id)).toEqual({ jti: id, kind: 'AccessToken' });
      expect(await adapter.find(newId())).toBeUndefined();
    });

    test('consumable models are hashes whose payload round-trips', async () => {
      const adapter = adapterFor('AuthorizationCode');
      const id = newId();
      const payload: AdapterPayload = { jti: id, kind: 'AuthorizationCode', grantId: newId(), scope: 'openid' };
      await adapter.upsert(id, payload, 60);
      expect(await target().redis.type(`${target().prefix}AuthorizationCode:${id}`)).toBe('hash');
      expect(await target().redis.hkeys(`${target().prefix}AuthorizationCode:${id}`)).toEqual(['payload']);
      expect(await adapter.find(id)).toEqual(payload);
      expect(await adapterFor('AuthorizationCode').find(newId())).toBeUndefined();
    });

    test('expiresIn becomes the key TTL, rounded up; none means no TTL; <= 0 deletes the entry', async () => {
      const tokens = adapterFor('AccessToken');
      const codes = adapterFor('AuthorizationCode');
      const [a, b, c, d] = [newId(), newId(), newId(), newId()];
      await tokens.upsert(a, { jti: a }, 120);
      await codes.upsert(b, { jti: b }, 90);
      await tokens.upsert(c, { jti: c }, 0.2);
      await tokens.upsert(d, { jti: d });
      const pttl = (id: string, model = 'AccessToken') => target().redis.pttl(`${target().prefix}${model}:${id}`);
      expect(await pttl(a)).toBeGreaterThan(115_000);
      expect(await pttl(a)).toBeLessThanOrEqual(120_000);
      expect(await pttl(b, 'AuthorizationCode')).toBeGreaterThan(85_000);
      expect(await pttl(b, 'AuthorizationCode')).toBeLessThanOrEqual(90_000);
      expect(await pttl(c)).toBeGreaterThan(0);
      expect(await pttl(c)).toBeLessThanOrEqual(1000);
      expect(await target().redis.ttl(`${target().prefix}AccessToken:${d}`)).toBe(-1);

      await codes.upsert(b, { jti: b });
      expect(await target().redis.ttl(`${target().prefix}AuthorizationCode:${b}`)).toBe(-1);
      await tokens.upsert(a, { jti: a }, 0);
      expect(await exists(`${target().prefix}AccessToken:${a}`)).toBe(0);
      await expect(tokens.upsert(a, { jti: a }, Number.NaN)).rejects.toThrow(/"expiresIn"/);
    });

    test('consume sets consumed (epoch seconds) atomically and keeps the TTL', async () => {
      const adapter = adapterFor('RefreshToken', { reuseInterval: 0 });
      const id = newId();
      const payload: AdapterPayload = { jti: id, kind: 'RefreshToken', grantId: newId(), scope: 'openid offline_access' };
      await adapter.upsert(id, payload, 3600);
      const before = now();
      await adapter.consume(id);
      const found = await adapter.find(id);
      expect(found).toEqual({ ...payload, consumed: expect.any(Number) });
      expect(found!.consumed).toBeGreaterThanOrEqual(before);
      expect(found!.consumed).toBeLessThanOrEqual(now());
      const pttl = await target().redis.pttl(`${target().prefix}RefreshToken:${id}`);
      expect(pttl).toBeGreaterThan(3_590_000);
      expect(pttl).toBeLessThanOrEqual(3_600_000);

      // a consumed entry stays consumed when saved again
      await adapter.upsert(id, payload, 3600);
      expect((await adapter.find(id))!.consumed).toBe(found!.consumed);
    });

    test('consume of a missing entry creates nothing and is refused with invalid_grant', async () => {
      const id = newId();
      const refused = adapterFor('RefreshToken').consume(id);
      await expect(refused).rejects.toBeInstanceOf(errors.InvalidGrant);
      await expect(refused).rejects.toMatchObject({ error: 'invalid_grant', error_detail: 'refresh token not found' });
      expect(await exists(`${target().prefix}RefreshToken:${id}`)).toBe(0);
      expect(await adapterFor('RefreshToken').find(id)).toBeUndefined();
    });

    test('a second consume is refused with the OAuth error oidc-provider uses for the model', async () => {
      const cases = [
        ['RefreshToken', errors.InvalidGrant, 'invalid_grant', 'refresh token already used'],
        ['AuthorizationCode', errors.InvalidGrant, 'invalid_grant', 'authorization code already consumed'],
        ['DeviceCode', errors.InvalidGrant, 'invalid_grant', 'device code already consumed'],
        ['BackchannelAuthenticationRequest', errors.InvalidGrant, 'invalid_grant', 'backchannel authentication request already consumed'],
        ['PreAuthorizedCode', errors.InvalidGrant, 'invalid_grant', 'pre-authorized code already consumed'],
        ['PushedAuthorizationRequest', errors.InvalidRequestUri, 'invalid_request_uri', undefined],
      ] as const;
      for (const [model, ErrorClass, error, detail] of cases) {
        const adapter = adapterFor(model, { reuseInterval: 0 });
        const id = newId();
        await adapter.upsert(id, { jti: id, kind: model, grantId: newId() }, 600);
        await adapter.consume(id);
        const first = (await adapter.find(id))!.consumed;
        const refused = adapter.consume(id);
        await expect(refused).rejects.toBeInstanceOf(ErrorClass);
        await expect(refused).rejects.toMatchObject({ error, status: 400, ...(detail ? { error_detail: detail } : {}) });
        expect((await adapter.find(id))!.consumed).toBe(first);
      }
    });

    test('concurrent consume calls from several connections: exactly one wins, the others get invalid_grant', async () => {
      const clients = await Promise.all(Array.from({ length: 4 }, () => target().connect()));
      const adapters = clients.map((client) => RedisAdapter.factory(client, { prefix: target().prefix })('AuthorizationCode'));
      const id = newId();
      const payload: AdapterPayload = { jti: id, kind: 'AuthorizationCode', grantId: newId() };
      await adapters[0]!.upsert(id, payload, 600);
      const results = await Promise.allSettled(adapters.flatMap((adapter) => Array.from({ length: 10 }, () => adapter.consume(id))));
      expect(results.filter((result) => result.status === 'fulfilled')).toHaveLength(1);
      const refusals = results.filter((result): result is PromiseRejectedResult => result.status === 'rejected');
      expect(refusals).toHaveLength(39);
      for (const { reason } of refusals) expect(reason).toBeInstanceOf(errors.InvalidGrant);
      const key = `${target().prefix}AuthorizationCode:${id}`;
      expect((await target().redis.hkeys(key)).sort()).toEqual(['consumed', 'consumedMs', 'payload']);
      expect(await adapters[1]!.find(id)).toEqual({ ...payload, consumed: expect.any(Number) });
      expect(await target().redis.pttl(key)).toBeGreaterThan(590_000);
    });

    test('a refresh token rotated less than reuseInterval ago reads as absent, then as consumed', async () => {
      const id = newId();
      const payload: AdapterPayload = { jti: id, kind: 'RefreshToken', grantId: newId() };
      const tokens = adapterFor('RefreshToken', { reuseInterval: 0.3 });
      await tokens.upsert(id, payload, 600);
      await tokens.consume(id);
      expect(await tokens.find(id)).toBeUndefined();
      expect(await adapterFor('RefreshToken', { reuseInterval: 0 }).find(id)).toEqual({ ...payload, consumed: expect.any(Number) });
      let found = await tokens.find(id);
      for (let attempt = 0; attempt < 100 && found === undefined; attempt += 1) {
        await sleep(50);
        found = await tokens.find(id);
      }
      expect(found).toEqual({ ...payload, consumed: expect.any(Number) });
      await expect(tokens.consume(id)).rejects.toBeInstanceOf(errors.InvalidGrant);

      // the interval is for refresh tokens only: a consumed code reads as consumed at once
      const code = newId();
      const codes = adapterFor('AuthorizationCode', { reuseInterval: 60 });
      await codes.upsert(code, { jti: code, kind: 'AuthorizationCode' }, 600);
      await codes.consume(code);
      expect((await codes.find(code))!.consumed).toEqual(expect.any(Number));
    });

    test('the default reuseInterval hides a just-rotated refresh token; an entry consumed before consumedMs existed reads as consumed', async () => {
      const tokens = adapterFor('RefreshToken');
      const id = newId();
      await tokens.upsert(id, { jti: id, kind: 'RefreshToken' }, 600);
      await tokens.consume(id);
      expect(await tokens.find(id)).toBeUndefined();

      const legacy = newId();
      await tokens.upsert(legacy, { jti: legacy, kind: 'RefreshToken' }, 600);
      await target().redis.hset(`${target().prefix}RefreshToken:${legacy}`, 'consumed', String(now()));
      expect((await tokens.find(legacy))!.consumed).toEqual(expect.any(Number));
    });

    test('findByUid resolves a Session by uid, with the entry TTL, and ignores stale lookups', async () => {
      const sessions = adapterFor('Session');
      const [id, uid] = [newId(), newId()];
      const payload: AdapterPayload = { jti: id, uid, kind: 'Session', accountId: 'alice' };
      await sessions.upsert(id, payload, 300);
      expect(await sessions.findByUid(uid)).toEqual(payload);
      expect(await target().redis.get(`${target().prefix}uid:Session:${uid}`)).toBe(id);
      expect(await target().redis.ttl(`${target().prefix}uid:Session:${uid}`)).toBeGreaterThan(295);
      expect(await sessions.findByUid(newId())).toBeUndefined();

      const uid2 = newId();
      await sessions.upsert(id, { ...payload, uid: uid2 }, 300);
      expect(await sessions.findByUid(uid2)).toEqual({ ...payload, uid: uid2 });
      expect(await sessions.findByUid(uid)).toBeUndefined();
    });

    test('findByUserCode resolves a DeviceCode by userCode, with the entry TTL', async () => {
      const codes = adapterFor('DeviceCode');
      const id = newId();
      const userCode = randomBytes(4).toString('hex').toUpperCase();
      const payload: AdapterPayload = { jti: id, userCode, kind: 'DeviceCode', clientId: 'app', grantId: newId() };
      await codes.upsert(id, payload, 600);
      expect(await codes.findByUserCode(userCode)).toEqual(payload);
      expect(await target().redis.ttl(`${target().prefix}userCode:DeviceCode:${userCode}`)).toBeGreaterThan(595);
      expect(await codes.findByUserCode('NOPE-NOPE')).toBeUndefined();
      await codes.consume(id);
      expect((await codes.findByUserCode(userCode))!.consumed).toEqual(expect.any(Number));
    });

    test('destroy deletes the entry; its lookups find nothing afterwards', async () => {
      const sessions = adapterFor('Session');
      const tokens = adapterFor('RefreshToken');
      const [sid, uid, rt] = [newId(), newId(), newId()];
      await sessions.upsert(sid, { jti: sid, uid }, 300);
      await tokens.upsert(rt, { jti: rt, grantId: newId() }, 300);
      await sessions.destroy(sid);
      await tokens.destroy(rt);
      expect(await exists(`${target().prefix}Session:${sid}`, `${target().prefix}RefreshToken:${rt}`)).toBe(0);
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
        for (const [grantId, list] of [
          [grant, mine],
          [otherGrant, others],
        ] as const) {
          const id = newId();
          await adapterFor(model).upsert(id, { jti: id, grantId, ...(model === 'DeviceCode' ? { userCode: id } : {}) }, 600);
          list.push(`${target().prefix}${model}:${id}`);
        }
      }
      const session = newId();
      await adapterFor('Session').upsert(session, { jti: session, uid: newId() }, 600);
      const grantEntry = newId();
      await adapterFor('Grant').upsert(grantEntry, { jti: grantEntry, grantId: grant } as AdapterPayload, 600);

      expect((await target().redis.smembers(`${target().prefix}grant:${grant}`)).sort()).toEqual([...mine].sort());
      await adapterFor('AccessToken').revokeByGrantId(grant);

      expect(await exists(...mine)).toBe(0);
      expect(await exists(`${target().prefix}grant:${grant}`)).toBe(0);
      expect(await exists(...others)).toBe(others.length);
      expect((await target().redis.smembers(`${target().prefix}grant:${otherGrant}`)).sort()).toEqual([...others].sort());
      expect(await exists(`${target().prefix}Session:${session}`, `${target().prefix}Grant:${grantEntry}`)).toBe(2);

      await adapterFor('RefreshToken').revokeByGrantId(grant);
      await adapterFor('RefreshToken').revokeByGrantId(newId());
    });

    test('the grant index lives as long as its longest-lived member', async () => {
      const grantId = newId();
      const index = `${target().prefix}grant:${grantId}`;
      const save = (model: string, expiresIn?: number) => {
        const id = newId();
        return adapterFor(model).upsert(id, { jti: id, grantId }, expiresIn);
      };
      await save('AuthorizationCode', 60);
      expect(await target().redis.pttl(index)).toBeGreaterThan(55_000);
      expect(await target().redis.pttl(index)).toBeLessThanOrEqual(60_000);
      await save('RefreshToken', 7200);
      expect(await target().redis.pttl(index)).toBeGreaterThan(7_195_000);
      await save('AccessToken', 300);
      expect(await target().redis.pttl(index)).toBeGreaterThan(7_195_000);
      expect(await target().redis.scard(index)).toBe(3);
      await save('AccessToken');
      expect(await target().redis.ttl(index)).toBe(-1);
      await save('AccessToken', 10);
      expect(await target().redis.ttl(index)).toBe(-1);
      await adapterFor('AccessToken').revokeByGrantId(grantId);
    });
  });
}
