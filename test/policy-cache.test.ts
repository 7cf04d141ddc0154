import { randomBytes } from 'node:crypto';

import { afterAll, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';

import { PolicyCache } from '../lib/policy-cache.js';
import { MemoryPolicyStore, PolicyStoreError, RedisPolicyStore, type PolicyRecord } from '../lib/index.js';
import { deleteKeys } from './support/redis-keys.js';

const url = process.env.MRRT_TEST_REDIS_URL!;
const prefix = `mrrt-test:{cache-${randomBytes(6).toString('hex')}}:`;
const name = `mrrt-cache-test-${randomBytes(4).toString('hex')}`;
const clients: Redis[] = [];
const stores: RedisPolicyStore[] = [];
const POLICY = [{ audience: 'https://api-b.example.com', scope: ['b:read'] }];

/** A real RedisPolicyStore that counts the reads reaching Redis. */
class CountingStore extends RedisPolicyStore {
  reads = 0;
  override async get(clientId: string): Promise<PolicyRecord | undefined> {
    this.reads += 1;
    return super.get(clientId);
  }
}

function instance(): CountingStore {
  const redis = new Redis(url, { connectionName: `${name}-${clients.length}` });
  clients.push(redis);
  const store = new CountingStore(redis, { prefix });
  stores.push(store);
  return store;
}

const changeOf = (store: RedisPolicyStore, clientId: string | undefined): Promise<void> =>
  new Promise((resolve) => {
    const off = store.subscribe((id) => {
      if (id === clientId) {
        off();
        resolve();
      }
    });
  });

afterAll(async () => {
  for (const store of stores) await store.close();
  await deleteKeys(clients[0]!, prefix);
  await Promise.all(clients.map((c) => c.quit()));
});

describe('PolicyCache on RedisPolicyStore', () => {
  test('steady state: no store read after the first lookup, for present and absent policies', async () => {
    const store = instance();
    await store.set('c1', POLICY);
    const cache = new PolicyCache(store);
    for (let i = 0; i < 50; i += 1) {
      expect((await cache.get('c1'))?.policies).toEqual(POLICY);
      expect(await cache.get('nobody')).toBeUndefined();
    }
    expect(store.reads).toBe(2);
    cache.close();
  });

  test('concurrent lookups of one client share one read', async () => {
    const store = instance();
    await store.set('c2', POLICY);
    const cache = new PolicyCache(store);
    const results = await Promise.all(Array.from({ length: 20 }, () => cache.get('c2')));
    expect(new Set(results.map((r) => r?.version)).size).toBe(1);
    expect(store.reads).toBe(1);
    cache.close();
  });

  test('a write on this instance applies to the next lookup at once', async () => {
    const store = instance();
    const cache = new PolicyCache(store);
    await store.set('c3', POLICY);
    expect((await cache.get('c3'))?.policies).toEqual(POLICY);
    const narrowed = [{ audience: 'https://api-b.example.com', scope: ['b:write'] }];
    await store.set('c3', narrowed);
    expect((await cache.get('c3'))?.policies).toEqual(narrowed);
    await store.delete('c3');
    expect(await cache.get('c3')).toBeUndefined();
    cache.close();
  });

  test('a write on another instance is announced over pub/sub and drops the entry', async () => {
    const writer = instance();
    const reader = instance();
    const cache = new PolicyCache(reader);
    await writer.set('c4', POLICY);
    expect((await cache.get('c4'))?.policies).toEqual(POLICY);
    const readsBefore = reader.reads;
    const announced = changeOf(reader, 'c4');
    const next = await writer.set('c4', [{ audience: 'https://api-c.example.com', scope: ['c:read'] }]);
    await announced;
    expect((await cache.get('c4'))?.version).toBe(next.version);
    expect(reader.reads).toBe(readsBefore + 1);
    cache.close();
  });

  test('a lookup in flight when its client changes is not cached', async () => {
    const store = instance();
    await store.set('c5', POLICY);
    const cache = new PolicyCache(store);
    const inflight = cache.get('c5');
    const next = await store.set('c5', [{ audience: 'https://api-c.example.com', scope: ['c:read'] }]);
    await inflight;
    expect((await cache.get('c5'))?.version).toBe(next.version);
    cache.close();
  });

  test('a lost announcement is bounded by maxAge', async () => {
    const writer = instance();
    const reader = instance();
    await writer.set('c6', POLICY);
    const shortCache = new PolicyCache(reader, { maxAge: 150 });
    const longCache = new PolicyCache(reader, { maxAge: 600_000 });
    const before = await shortCache.get('c6');
    await longCache.get('c6');
    // written behind the store's back: no announcement
    await clients[0]!.hset(writer.keyFor('c6'), 'v', 'tampered-version', 'p', JSON.stringify([{ audience: 'https://api-c.example.com', scope: ['c:read'] }]));
    expect((await longCache.get('c6'))?.version).toBe(before?.version);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect((await shortCache.get('c6'))?.version).toBe('tampered-version');
    shortCache.close();
    longCache.close();
  });

  test('when the subscriber reconnects, everything cached is dropped (announcements may have been missed)', async () => {
    const store = instance();
    const connectionName = `${name}-${clients.length - 1}`;
    await store.set('c7', POLICY);
    const cache = new PolicyCache(store);
    await cache.get('c7');
    expect(cache.size).toBe(1);
    const flushed = changeOf(store, undefined);
    // the subscriber's connection, once it has subscribed (on a busy machine that takes a while)
    let ids: string[] = [];
    for (let waited = 0; ids.length === 0 && waited <= 5000; waited += 20) {
      if (waited > 0) await new Promise((resolve) => setTimeout(resolve, 20));
      const list = (await clients[0]!.client('LIST')) as string;
      ids = list
        .split('\n')
        .filter((line) => line.includes(`name=${connectionName} `) && / flags=P /.test(line))
        .map((line) => /id=(\d+)/.exec(line)![1]!);
    }
    expect(ids.length).toBeGreaterThan(0);
    for (const id of ids) await clients[0]!.client('KILL', 'ID', id);
    await flushed;
    expect(cache.size).toBe(0);
    // and it resubscribed: announcements arrive again
    await cache.get('c7');
    const again = changeOf(store, 'c7');
    await clients[0]!.publish(store.channel, 'c7');
    await again;
    expect(cache.size).toBe(0);
    cache.close();
  });
});

describe('PolicyCache on MemoryPolicyStore', () => {
  test('keeps at most maxEntries, dropping the least recently used', async () => {
    const store = new MemoryPolicyStore();
    let reads = 0;
    const get = store.get.bind(store);
    store.get = (id) => {
      reads += 1;
      return get(id);
    };
    const cache = new PolicyCache(store, { maxEntries: 2 });
    await cache.get('a');
    await cache.get('b');
    await cache.get('a');
    await cache.get('c');
    expect(cache.size).toBe(2);
    expect(reads).toBe(3);
    await cache.get('a');
    expect(reads).toBe(3);
    await cache.get('b');
    expect(reads).toBe(4);
    cache.close();
  });

  test('a hit through peek counts as a use: the entry outlives older untouched ones', async () => {
    const store = new MemoryPolicyStore();
    let reads = 0;
    const get = store.get.bind(store);
    store.get = (id) => {
      reads += 1;
      return get(id);
    };
    const cache = new PolicyCache(store, { maxEntries: 3 });
    await cache.get('a');
    await cache.get('b');
    await cache.get('c');
    // the exchange path answers hits through peek alone, so peek must refresh recency
    expect(cache.peek('a')).toBeDefined();
    await cache.get('d');
    expect(cache.size).toBe(3);
    expect(cache.peek('a')).toBeDefined();
    expect(cache.peek('b')).toBeUndefined();
    expect(cache.peek('c')).toBeDefined();
    expect(cache.peek('d')).toBeDefined();
    expect(reads).toBe(4);
    cache.close();
  });

  test('a store read that never answers is given up after readTimeout and the next lookup reads again', async () => {
    const store = new MemoryPolicyStore();
    await store.set('h1', POLICY);
    let reads = 0;
    const get = store.get.bind(store);
    store.get = (id) => {
      reads += 1;
      return reads === 1 ? new Promise<never>(() => {}) : get(id);
    };
    const cache = new PolicyCache(store, { maxAge: 100, readTimeout: 20 });
    // the caller's own deadline is far later than readTimeout: only the cache can end this wait first
    const first = await outcome(cache.get('h1'), 2000);
    expect(first).toMatchObject({ rejected: { code: 'ERR_MRRT_STORE_UNAVAILABLE' } });
    expect((first as { rejected: unknown }).rejected).toBeInstanceOf(PolicyStoreError);
    expect(reads).toBe(1);
    const record = await cache.get('h1');
    expect(record?.policies).toEqual(POLICY);
    expect(reads).toBe(2);
    expect(cache.peek('h1')?.record).toBe(record);
    cache.close();
  });

  test('a read given up after readTimeout that answers late never replaces the newer answer', async () => {
    const store = new MemoryPolicyStore();
    const older = await store.set('h2', POLICY);
    const newer = await store.set('h2', [{ audience: 'https://api-c.example.com', scope: ['c:read'] }]);
    const answers: ((record: PolicyRecord) => void)[] = [];
    store.get = () =>
      new Promise((resolve) => {
        answers.push(resolve);
      });
    const cache = new PolicyCache(store, { readTimeout: 20 });
    expect(await outcome(cache.get('h2'), 2000)).toMatchObject({ rejected: { code: 'ERR_MRRT_STORE_UNAVAILABLE' } });
    const second = cache.get('h2');
    expect(answers).toHaveLength(2);
    answers[1]!(newer);
    expect((await second)?.version).toBe(newer.version);
    answers[0]!(older);
    await new Promise((resolve) => setImmediate(resolve));
    expect(cache.peek('h2')?.record?.version).toBe(newer.version);
    expect((await cache.get('h2'))?.version).toBe(newer.version);
    expect(answers).toHaveLength(2);
    cache.close();
  });
});

/** How `promise` settled, or `'caller gave up'` when it had not after `ms` (the caller's own deadline). */
async function outcome<T>(promise: Promise<T>, ms: number): Promise<{ resolved: T } | { rejected: unknown } | 'caller gave up'> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'caller gave up'>((resolve) => {
    timer = setTimeout(() => resolve('caller gave up'), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        (resolved) => ({ resolved }),
        (rejected: unknown) => ({ rejected }),
      ),
      deadline,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
