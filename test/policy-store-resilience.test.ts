// Regression tests for defects found by the scale and resilience tests (issue 4), now fixed in
// lib/stores/redis.ts: S1 (the subscriber re-issues SUBSCRIBE on every connection) and S2 (the write
// scripts check the client index's type before writing anything). The finding texts below describe
// the defects as they were found.
//
// FINDING S1 — RedisPolicyStore's change subscription is silently lost when its first SUBSCRIBE
// fails. `subscribe()` opens `redis.duplicate()` and calls `subscriber.subscribe(channel)` once,
// swallowing any error (`.catch(() => {})`); nothing subscribes again later, and ioredis only
// re-subscribes channels that were subscribed successfully. The SUBSCRIBE is sent while the
// duplicate is still connecting, so it fails whenever the client's options do not let it wait:
//   (a) `enableOfflineQueue: false` (the usual fail-fast setting): fails at once, always;
//   (b) Redis unreachable when the provider starts (the cache subscribes at construction) with
//       `maxRetriesPerRequest: 1` or a `commandTimeout` (or the defaults, if Redis stays away for
//       more than ~10 s): the queued SUBSCRIBE is rejected and never retried once Redis is back.
// Then no change written by another instance reaches this instance's policy cache: a narrowed or
// deleted policy keeps being honoured for up to `cache.maxAge` (30 s by default) instead of "within
// the announcement latency" (README, Policies and stores), for the whole life of the process.
// Fix: (re)issue SUBSCRIBE on every 'ready' of the subscriber connection (it is idempotent), or open
// the duplicate with its own options (offline queue on, no retry limit, no command timeout).
//
// FINDING S2 — a write that RedisPolicyStore reports as failed can have changed the policy. When
// the client index `<prefix>clients` holds another Redis type, the write script fails at ZADD (set)
// or ZREM (delete) *after* HSET / DEL already ran; Redis does not roll a script back on a runtime
// error. set()/delete() reject with ERR_MRRT_STORE_CORRUPT (the admin API answers 500), yet the new
// policy is live (or the policy is gone), and since PUBLISH comes after the failing command no
// instance is told: caches keep the previous answer for up to cache.maxAge. This breaks "version
// check, write, index and the change announcement are one atomic step" and "a refused request
// changes nothing" (README). Fix: check `TYPE KEYS[2]` (zset or none) before the first write.
import { randomBytes } from 'node:crypto';

import { afterAll, describe, expect, test } from '@jest/globals';
import { Redis, type RedisOptions } from 'ioredis';

import { RedisPolicyStore, type Policy } from '../lib/index.js';
import { API, SKIP_CONSENT, login, refresh, startServer, type TestServer } from './helpers/fixture.js';
import { RedisServer } from './support/redis-server.js';

const FULL: Policy = [{ audience: API.B, scope: ['b:read'] }, { audience: API.C, scope: ['c:read'] }];
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

describe('S1: a policy change by another instance reaches this instance\'s cache', () => {
  test('control: with the offline queue on (ioredis default) the narrowed policy applies within 2 s, and the subscriber is subscribed', async () => {
    const url = process.env.MRRT_TEST_REDIS_URL!;
    const prefix = `mrrt-test:{findings-${randomBytes(6).toString('hex')}}:`;
    const admin = connect(url);
    cleanups.push(async () => {
      const keys = await admin.keys(`${prefix}*`);
      if (keys.length) await admin.del(...keys);
    });
    const readerRedis = connect(url, { maxRetriesPerRequest: 1 });
    await ready(readerRedis);
    await expectNarrowingApplies(readerRedis, url, prefix);
    expect(await admin.pubsub('NUMSUB', `${prefix}changed`)).toEqual([`${prefix}changed`, 1]);
  }, 20_000);

  test('S1a: with enableOfflineQueue: false on the store\'s client, the narrowed policy applies within 2 s', async () => {
    const url = process.env.MRRT_TEST_REDIS_URL!;
    const prefix = `mrrt-test:{findings-${randomBytes(6).toString('hex')}}:`;
    const admin = connect(url);
    cleanups.push(async () => {
      const keys = await admin.keys(`${prefix}*`);
      if (keys.length) await admin.del(...keys);
    });
    const readerRedis = connect(url, { enableOfflineQueue: false, maxRetriesPerRequest: 1 });
    await ready(readerRedis);
    await expectNarrowingApplies(readerRedis, url, prefix);
  }, 20_000);

  test('S1b: provider started while Redis is down (maxRetriesPerRequest: 1): after Redis comes up the narrowed policy applies within 2 s', async () => {
    const redisServer = await RedisServer.start();
    redisServers.push(redisServer);
    await redisServer.stop();
    const readerRedis = connect(redisServer.url, { maxRetriesPerRequest: 1 });
    const started = expectNarrowingApplies(readerRedis, redisServer.url, 'mrrt-test:{findings}:');
    await sleep(1000); // the queued SUBSCRIBE is rejected after two failed reconnection attempts
    await redisServer.start();
    await started;
  }, 20_000);
});

describe('S2: a write the store reports as failed changes nothing', () => {
  const url = process.env.MRRT_TEST_REDIS_URL!;

  async function corruptIndex(): Promise<{ admin: Redis; store: RedisPolicyStore; version: string }> {
    const prefix = `mrrt-test:{findings-${randomBytes(6).toString('hex')}}:`;
    const admin = connect(url);
    cleanups.push(async () => {
      const keys = await admin.keys(`${prefix}*`);
      if (keys.length) await admin.del(...keys);
    });
    const store = new RedisPolicyStore(admin, { prefix });
    const { version } = await store.set('app', FULL);
    const index = `${prefix}clients`;
    expect(await admin.type(index)).toBe('zset');
    await admin.del(index);
    await admin.set(index, 'not a sorted set');
    return { admin, store, version };
  }

  test('S2a: set() rejected with ERR_MRRT_STORE_CORRUPT has not replaced the policy', async () => {
    const { admin, store, version } = await corruptIndex();
    await expect(store.set('app', NARROW, { ifMatch: version })).rejects.toMatchObject({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_CORRUPT' });
    expect(await admin.hgetall(store.keyFor('app'))).toEqual({ v: version, p: JSON.stringify(FULL) });
  });

  test('S2b: delete() rejected with ERR_MRRT_STORE_CORRUPT has not deleted the policy', async () => {
    const { admin, store, version } = await corruptIndex();
    await expect(store.delete('app', { ifMatch: version })).rejects.toMatchObject({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_CORRUPT' });
    expect(await admin.hgetall(store.keyFor('app'))).toEqual({ v: version, p: JSON.stringify(FULL) });
  });
});
