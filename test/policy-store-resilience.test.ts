// RedisPolicyStore under connection trouble and a tampered client index:
//
// - Its change subscription survives a first SUBSCRIBE that fails. The subscriber connection is a
//   duplicate of the store's client; with `enableOfflineQueue: false` (the usual fail-fast setting),
//   or with Redis down at start-up and a bounded retry policy, a SUBSCRIBE sent while it connects is
//   rejected, and ioredis only re-subscribes channels that succeeded. The store therefore subscribes
//   again on every 'ready'; otherwise no change written elsewhere would reach this instance's cache
//   before `cache.maxAge`.
// - A write it reports as failed changes nothing. Redis does not roll a script back on a runtime
//   error, so the write scripts check the client index's type before the first write: a wrong-type
//   index fails the write with ERR_MRRT_STORE_CORRUPT before HSET / DEL can run.
import { randomBytes } from 'node:crypto';

import { afterAll, describe, expect, test } from '@jest/globals';
import { Redis, type RedisOptions } from 'ioredis';

import { RedisPolicyStore, type Policy } from '../lib/index.js';
import { API, SKIP_CONSENT, login, refresh, startServer, type TestServer } from './support/fixture.js';
import { RedisServer } from './support/redis-server.js';
import { deleteKeys } from './support/redis-keys.js';

const FULL: Policy = [
  { audience: API.B, scope: ['b:read'] },
  { audience: API.C, scope: ['c:read'] },
];
const NARROW: Policy = [{ audience: API.B, scope: ['b:read'] }];
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

const clients: Redis[] = [];
const stores: RedisPolicyStore[] = [];
const servers: TestServer[] = [];
const redisServers: RedisServer[] = [];
const cleanups: (() => Promise<void>)[] = [];

afterAll(async () => {
  for (const server of servers) await server.close();
  for (const store of stores) await store.close().catch(() => {});
  for (const cleanup of cleanups) await cleanup();
  for (const client of clients) client.disconnect();
  await Promise.all(redisServers.map((server) => server.destroy()));
}, 30_000);

function connect(url: string, options: RedisOptions = {}): Redis {
  const redis = new Redis(url, options);
  redis.on('error', () => {});
  clients.push(redis);
  return redis;
}

async function ready(redis: Redis): Promise<void> {
  for (let attempt = 0; redis.status !== 'ready'; attempt += 1) {
    if (attempt > 500) throw new Error('no connection to Redis');
    await sleep(10);
  }
}

/**
 * Instance 1 (in this process) reads policies through `readerRedis`; instance 2 (a second store on
 * its own connection) narrows the policy. Expects instance 1 to refuse the removed target within 2 s
 * (announcements take milliseconds; the cache's max age is 30 s).
 */
async function expectNarrowingApplies(readerRedis: Redis, url: string, prefix: string): Promise<void> {
  const reader = new RedisPolicyStore(readerRedis, { prefix });
  stores.push(reader);
  const server = await startServer({ mrrt: { store: reader, allowSkippingConsent: SKIP_CONSENT }, rotate: false });
  servers.push(server);
  await ready(readerRedis);
  // the reader's subscriber must have (re)subscribed: if it never does, this fails; once it has, the
  // narrowing below is announced to it (without this wait a slow reconnect looked like a lost change)
  const observer = connect(url);
  let subscribers = 0;
  for (let attempt = 0; attempt < 100 && subscribers === 0; attempt += 1) {
    subscribers = Number(((await observer.pubsub('NUMSUB', reader.channel)) as [string, number])[1]);
    if (subscribers === 0) await sleep(100);
  }
  await observer.quit();
  expect(subscribers).toBeGreaterThan(0);

  const writer = new RedisPolicyStore(connect(url), { prefix });
  stores.push(writer);
  await writer.set('app', FULL);
  await sleep(100); // let the announcement of the write arrive, if it ever does
  const tokens = await login(server);
  expect((await refresh(server, tokens.refresh_token, { audience: API.C })).status).toBe(200); // cached now

  await writer.set('app', NARROW);
  let res = await refresh(server, tokens.refresh_token, { audience: API.C });
  for (let attempt = 0; attempt < 40 && res.status === 200; attempt += 1) {
    await sleep(50);
    res = await refresh(server, tokens.refresh_token, { audience: API.C });
  }
  expect(res.status).toBe(400);
  expect(res.body.error).toBe('invalid_target');
}

describe("a policy change by another instance reaches this instance's cache", () => {
  test('control: with the offline queue on (ioredis default) the narrowed policy applies within 2 s, and the subscriber is subscribed', async () => {
    const url = process.env.MRRT_TEST_REDIS_URL!;
    const prefix = `mrrt-test:{resilience-${randomBytes(6).toString('hex')}}:`;
    const admin = connect(url);
    cleanups.push(async () => {
      await deleteKeys(admin, prefix);
    });
    const readerRedis = connect(url, { maxRetriesPerRequest: 1 });
    await ready(readerRedis);
    await expectNarrowingApplies(readerRedis, url, prefix);
    expect(await admin.pubsub('NUMSUB', `${prefix}changed`)).toEqual([`${prefix}changed`, 1]);
  }, 20_000);

  test("with enableOfflineQueue: false on the store's client, the narrowed policy applies within 2 s", async () => {
    const url = process.env.MRRT_TEST_REDIS_URL!;
    const prefix = `mrrt-test:{resilience-${randomBytes(6).toString('hex')}}:`;
    const admin = connect(url);
    cleanups.push(async () => {
      await deleteKeys(admin, prefix);
    });
    const readerRedis = connect(url, { enableOfflineQueue: false, maxRetriesPerRequest: 1 });
    await ready(readerRedis);
    await expectNarrowingApplies(readerRedis, url, prefix);
  }, 20_000);

  test('provider started while Redis is down (maxRetriesPerRequest: 1): after Redis comes up the narrowed policy applies within 2 s', async () => {
    const redisServer = await RedisServer.start();
    redisServers.push(redisServer);
    await redisServer.stop();
    const readerRedis = connect(redisServer.url, { maxRetriesPerRequest: 1 });
    const started = expectNarrowingApplies(readerRedis, redisServer.url, 'mrrt-test:{resilience}:');
    await sleep(1000); // the queued SUBSCRIBE is rejected after two failed reconnection attempts
    await redisServer.start();
    await started;
  }, 20_000);
});

describe('a write the store reports as failed changes nothing', () => {
  const url = process.env.MRRT_TEST_REDIS_URL!;

  async function corruptIndex(): Promise<{ admin: Redis; store: RedisPolicyStore; version: string }> {
    const prefix = `mrrt-test:{resilience-${randomBytes(6).toString('hex')}}:`;
    const admin = connect(url);
    cleanups.push(async () => {
      await deleteKeys(admin, prefix);
    });
    const store = new RedisPolicyStore(admin, { prefix });
    const { version } = await store.set('app', FULL);
    const index = `${prefix}clients`;
    expect(await admin.type(index)).toBe('zset');
    await admin.del(index);
    await admin.set(index, 'not a sorted set');
    return { admin, store, version };
  }

  test('set() rejected with ERR_MRRT_STORE_CORRUPT has not replaced the policy', async () => {
    const { admin, store, version } = await corruptIndex();
    await expect(store.set('app', NARROW, { ifMatch: version })).rejects.toMatchObject({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_CORRUPT' });
    expect(await admin.hgetall(store.keyFor('app'))).toEqual({ v: version, p: JSON.stringify(FULL) });
  });

  test('delete() rejected with ERR_MRRT_STORE_CORRUPT has not deleted the policy', async () => {
    const { admin, store, version } = await corruptIndex();
    await expect(store.delete('app', { ifMatch: version })).rejects.toMatchObject({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_CORRUPT' });
    expect(await admin.hgetall(store.keyFor('app'))).toEqual({ v: version, p: JSON.stringify(FULL) });
  });
});
