import { randomBytes } from 'node:crypto';
import net from 'node:net';

import { describe, test, expect, beforeAll, afterAll } from '@jest/globals';
import { Redis } from 'ioredis';

import { MemoryPolicyStore, PolicyStoreError, PolicyValidationError, RedisPolicyStore } from '../lib/index.js';
import { A, P1, P2, P3, conflict, describeStoreContract, expectDeeplyFrozen } from './support/store-contract.js';
import { deleteKeys } from './support/redis-keys.js';

const REDIS_URL = process.env.MRRT_TEST_REDIS_URL;
if (!REDIS_URL) throw new Error('MRRT_TEST_REDIS_URL is not set (the jest global setup sets it)');

/** Every key of this test file run lives under this prefix (one hash tag, so it would work on Cluster too). */
const ROOT = `mrrt-test:{contract-${randomBytes(6).toString('hex')}}:`;
let redis: Redis;
let storeCount = 0;
const newRedisStore = (): RedisPolicyStore => {
  storeCount += 1;
  return new RedisPolicyStore(redis, { prefix: `${ROOT}s${storeCount}:` });
};

beforeAll(async () => {
  redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  await redis.ping();
});

afterAll(async () => {
  await deleteKeys(redis, ROOT);
  const [, left] = await redis.scan('0', 'MATCH', `${ROOT}*`, 'COUNT', 10_000);
  await redis.quit();
  expect(left).toEqual([]);
});

describeStoreContract('MemoryPolicyStore', () => new MemoryPolicyStore());
describeStoreContract('RedisPolicyStore', newRedisStore);

describe('RedisPolicyStore', () => {
  const corrupt = async (store: RedisPolicyStore, clientId: string): Promise<PolicyStoreError> => {
    const error = await store.get(clientId).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(PolicyStoreError);
    expect((error as PolicyStoreError).code).toBe('ERR_MRRT_STORE_CORRUPT');
    expect((error as PolicyStoreError).message).toContain(clientId);
    return error as PolicyStoreError;
  };

  test('stores a policy in a hash under keyFor(clientId) and indexes the client', async () => {
    const store = newRedisStore();
    expect(store.keyFor('app')).toBe(`${ROOT}s${storeCount}:policy:app`);
    expect(store.channel).toBe(`${ROOT}s${storeCount}:changed`);
    const { version } = await store.set('app', P1);
    await expect(redis.type(store.keyFor('app'))).resolves.toBe('hash');
    const raw = await redis.hgetall(store.keyFor('app'));
    expect(raw.v).toBe(version);
    expect(JSON.parse(raw.p!)).toEqual(P1);
    await store.delete('app');
    await expect(redis.exists(store.keyFor('app'))).resolves.toBe(0);
  });

  test('a default-prefixed store and a second store on the same client share the data', async () => {
    const prefix = `${ROOT}shared:`;
    const one = new RedisPolicyStore(redis, { prefix });
    const two = new RedisPolicyStore(redis, { prefix });
    const written = await one.set('app', P2);
    await expect(two.get('app')).resolves.toEqual(written);
    await conflict(two.set('app', P1, { ifMatch: null }));
    expect(new RedisPolicyStore(redis).keyFor('x')).toBe('mrrt:{policies}:policy:x');
  });

  describe('data read back is untrusted', () => {
    let store: RedisPolicyStore;
    beforeAll(() => {
      store = newRedisStore();
    });

    test('not JSON', async () => {
      await redis.hset(store.keyFor('c1'), 'v', 'v1', 'p', '[{"audience":');
      const error = await corrupt(store, 'c1');
      expect(error.cause).toBeInstanceOf(SyntaxError);
    });

    test.each([
      ['an extra key', `[{"audience":"${A}","scope":["read"],"extra":1}]`],
      ['a "__proto__" key', `[{"audience":"${A}","scope":["read"],"__proto__":{"scope":["admin"]}}]`],
      ['an empty array', '[]'],
      ['an object', `{"audience":"${A}","scope":["read"]}`],
      ['null', 'null'],
      ['an empty scope', `[{"audience":"${A}","scope":[]}]`],
      ['a relative audience', '[{"audience":"/api","scope":["read"]}]'],
      ['a duplicate audience', `[{"audience":"${A}","scope":["a"]},{"audience":"${A}","scope":["b"]}]`],
    ])('valid JSON but not a policy: %s', async (_, json) => {
      const id = `json-${randomBytes(4).toString('hex')}`;
      await redis.hset(store.keyFor(id), 'v', 'v1', 'p', json);
      const error = await corrupt(store, id);
      expect(error.cause).toBeInstanceOf(PolicyValidationError);
    });

    test('a hash without a version', async () => {
      await redis.hset(store.keyFor('c2'), 'p', JSON.stringify(P1));
      await corrupt(store, 'c2');
      await redis.hset(store.keyFor('c2'), 'v', '');
      await corrupt(store, 'c2');
    });

    test('a hash without a policy', async () => {
      await redis.hset(store.keyFor('c3'), 'v', 'v1', 'other', 'x');
      await corrupt(store, 'c3');
    });

    test('a hash with other fields only reads as no policy', async () => {
      await redis.hset(store.keyFor('c4'), 'other', 'x');
      await expect(store.get('c4')).resolves.toBeUndefined();
    });

    test('a key of the wrong Redis type', async () => {
      await redis.set(store.keyFor('c5'), JSON.stringify(P1));
      await corrupt(store, 'c5');
      await redis.del(store.keyFor('c5'));
      await redis.rpush(store.keyFor('c5'), 'v', 'p');
      await corrupt(store, 'c5');
    });

    // such a key matches no version, and an unconditional write or delete replaces it (an operator can
    // repair it through the admin API)
    test('writes and list over keys of the wrong Redis type', async () => {
      const other = newRedisStore();
      await redis.set(other.keyFor('c7'), 'x');
      expect((await conflict(other.set('c7', P1, { ifMatch: null }))).currentVersion).toBeUndefined();
      expect((await conflict(other.set('c7', P1, { ifMatch: 'x' }))).currentVersion).toBeUndefined();
      await conflict(other.delete('c7', { ifMatch: null }));
      await conflict(other.delete('c7', { ifMatch: 'x' }));
      await expect(redis.get(other.keyFor('c7'))).resolves.toBe('x');
      const repaired = await other.set('c7', P1);
      await expect(other.get('c7')).resolves.toEqual(repaired);
      await redis.rpush(other.keyFor('c8'), 'v', 'p');
      await expect(other.delete('c8')).resolves.toBe(true);
      await expect(redis.exists(other.keyFor('c8'))).resolves.toBe(0);
      const index = other.keyFor('').replace(/policy:$/, 'clients');
      await redis.set(index, 'x');
      await expect(other.list()).rejects.toMatchObject({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_CORRUPT' });
    });

    test('a well-formed hash written by hand is read', async () => {
      await redis.hset(store.keyFor('c6'), 'v', 'hand', 'p', JSON.stringify(P2));
      const record = await store.get('c6');
      expect(record).toEqual({ clientId: 'c6', policies: P2, version: 'hand' });
      expectDeeplyFrozen(record!);
    });
  });

  describe('an unreachable Redis', () => {
    let dead: Redis;
    let store: RedisPolicyStore;
    beforeAll(async () => {
      const port = await new Promise<number>((resolve, reject) => {
        const server = net.createServer();
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => {
          const { port: free } = server.address() as net.AddressInfo;
          server.close(() => resolve(free));
        });
      });
      dead = new Redis({
        host: '127.0.0.1',
        port,
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        enableOfflineQueue: false,
        retryStrategy: () => null,
      });
      dead.on('error', () => {});
      store = new RedisPolicyStore(dead, { prefix: `${ROOT}dead:` });
    });
    afterAll(() => {
      dead.disconnect();
    });

    test('get rejects with ERR_MRRT_STORE_UNAVAILABLE', async () => {
      const error = await store.get('app').then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toBeInstanceOf(PolicyStoreError);
      expect((error as PolicyStoreError).code).toBe('ERR_MRRT_STORE_UNAVAILABLE');
      expect((error as PolicyStoreError).cause).toBeInstanceOf(Error);
      // and again, once the connection attempt has failed for good
      await expect(store.get('app')).rejects.toMatchObject({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_UNAVAILABLE' });
    });

    test('set, delete and list reject with ERR_MRRT_STORE_UNAVAILABLE', async () => {
      await expect(store.set('app', P1)).rejects.toMatchObject({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_UNAVAILABLE' });
      await expect(store.delete('app')).rejects.toMatchObject({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_UNAVAILABLE' });
      await expect(store.list()).rejects.toMatchObject({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_UNAVAILABLE' });
      // argument errors still come first
      await expect(store.set('', P1)).rejects.toThrow(TypeError);
      await expect(store.set('app', [] as never)).rejects.toBeInstanceOf(PolicyValidationError);
    });
  });

  test('every change is published on store.channel', async () => {
    const store = newRedisStore();
    const subscriber = redis.duplicate();
    try {
      const messages: [string, string][] = [];
      const done = new Promise<void>((resolve) => {
        subscriber.on('message', (channel: string, message: string) => {
          if (message === '--end--') resolve();
          else messages.push([channel, message]);
        });
      });
      await subscriber.subscribe(store.channel);

      const first = await store.set('app', P1);
      await store.set('app', P2, { ifMatch: first.version });
      await store.set('other', P1, { ifMatch: null });
      await conflict(store.set('app', P3, { ifMatch: first.version })); // failed: no change, no message
      await expect(store.set('bad', [] as never)).rejects.toBeInstanceOf(PolicyValidationError);
      await expect(store.delete('other')).resolves.toBe(true);
      await expect(store.delete('other')).resolves.toBe(false); // nothing deleted: no change, no message
      await conflict(store.delete('app', { ifMatch: null }));
      await store.delete('app');
      await redis.publish(store.channel, '--end--'); // same connection as the writes: arrives after them
      await done;

      expect(messages).toEqual([
        [store.channel, 'app'],
        [store.channel, 'app'],
        [store.channel, 'other'],
        [store.channel, 'other'],
        [store.channel, 'app'],
      ]);
    } finally {
      subscriber.disconnect();
    }
  });

  describe('constructor', () => {
    const clusterLike = (): Record<string, unknown> & { defined: string[] } => {
      const defined: string[] = [];
      return {
        isCluster: true,
        hmget: () => {},
        defineCommand: (name: string) => {
          defined.push(name);
        },
        defined,
      };
    };

    test('on Cluster the prefix must contain a hash tag', () => {
      for (const prefix of ['mrrt:policies:', 'mrrt:{}:', 'mrrt:{}{policies}:', 'mrrt:{policies', 'mrrt:}x{']) {
        expect(() => new RedisPolicyStore(clusterLike() as never, { prefix })).toThrow(TypeError);
        expect(() => new RedisPolicyStore(clusterLike() as never, { prefix })).toThrow(/"prefix".*hash tag/);
      }
      for (const prefix of [undefined, 'mrrt:{policies}:', 'x:{a}{}:', 'mrrt:{{p}:']) {
        const cluster = clusterLike();
        expect(new RedisPolicyStore(cluster as never, { prefix }).channel).toBe(`${prefix ?? 'mrrt:{policies}:'}changed`);
        expect(cluster.defined).toEqual(['mrrtPolicySet', 'mrrtPolicyDelete']);
      }
      // a standalone Redis takes any prefix
      expect(new RedisPolicyStore(redis, { prefix: 'mrrt:policies:' }).keyFor('a')).toBe('mrrt:policies:policy:a');
    });

    test('an unknown option is a TypeError naming it', () => {
      expect(() => new RedisPolicyStore(redis, { prefx: 'mrrt:{x}:' } as never)).toThrow(TypeError);
      expect(() => new RedisPolicyStore(redis, { prefx: 'mrrt:{x}:' } as never)).toThrow(/"prefx"/);
      expect(() => new RedisPolicyStore(redis, { prefix: `${ROOT}o:`, ttl: 5 } as never)).toThrow(/"ttl"/);
    });

    test('bad arguments are TypeErrors', () => {
      for (const client of [undefined, null, {}, 'redis://localhost', { hmget() {} }]) {
        expect(() => new RedisPolicyStore(client as never)).toThrow(TypeError);
      }
      for (const options of [null, 'x']) expect(() => new RedisPolicyStore(redis, options as never)).toThrow(TypeError);
      for (const prefix of ['', 5, 'x'.repeat(257)]) expect(() => new RedisPolicyStore(redis, { prefix } as never)).toThrow(/"prefix"/);
    });
  });
});
