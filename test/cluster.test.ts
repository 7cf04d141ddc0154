// RedisPolicyStore and RedisAdapter on a real Redis Cluster: three masters started by this file
// (test/support/redis-server.ts), reached through ioredis Cluster clients.
import { randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Cluster } from 'ioredis';
import type { AdapterPayload } from 'oidc-provider';

import { RedisAdapter, RedisPolicyStore } from '../lib/index.js';
import { PolicyCache } from '../lib/policy-cache.js';
import { API, SKIP_CONSENT, claims, login, refresh, startServer, type TestServer } from './support/fixture.js';
import { startCluster, type RedisCluster } from './support/redis-server.js';
import { P1, P2, P3, describeStoreContract } from './support/store-contract.js';
import { describeAdapterUnit } from './support/adapter-unit.js';

let cluster: RedisCluster | undefined;
const clients: Cluster[] = [];
const stores: RedisPolicyStore[] = [];

beforeAll(async () => {
  cluster = await startCluster();
}, 60_000);

afterAll(async () => {
  for (const store of stores) await store.close().catch(() => {});
  for (const client of clients) client.disconnect();
  await cluster?.destroy();
}, 30_000);

/** A new ioredis Cluster client on the test cluster, closed in afterAll. */
async function connect(): Promise<Cluster> {
  const client = new Cluster(
    cluster!.startupNodes.map((node) => ({ ...node })),
    {
      slotsRefreshTimeout: 2000,
      redisOptions: { maxRetriesPerRequest: 1, connectTimeout: 2000 },
    },
  );
  client.on('error', () => {});
  clients.push(client);
  if (client.status !== 'ready')
    await new Promise<void>((resolve, reject) => {
      client.once('ready', () => resolve());
      client.once('end', () => reject(new Error('cluster client ended before ready')));
    });
  return client;
}

function track(store: RedisPolicyStore): RedisPolicyStore {
  stores.push(store);
  return store;
}

/** The master that serves `key`, asked of the cluster itself (not the client's cached slot map, which may lag). */
async function nodeOf(client: Cluster, key: string): Promise<string> {
  const slot = await client.cluster('KEYSLOT', key);
  const ranges = await client.cluster('SLOTS');
  const master = ranges.find(([from, to]) => slot >= from && slot <= to)?.[2];
  if (!master) throw new Error(`slot ${slot} of ${key} is served by no master`);
  return `${master[0]}:${master[1]}`;
}

/** How many masters serve `keys`. */
async function mastersOf(client: Cluster, keys: readonly string[]): Promise<number> {
  return new Set(await Promise.all(keys.map((k) => nodeOf(client, k)))).size;
}

/**
 * Runs `setup` until the keys it names span more than one master (ids are random, so one setup's
 * keys all land on one of the three masters now and then), at most `attempts` times.
 */
async function acrossMasters<T extends { keys: readonly string[] }>(client: Cluster, setup: () => Promise<T>, attempts = 8): Promise<T> {
  let last: T | undefined;
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    last = await setup();
    if ((await mastersOf(client, last.keys)) >= 2) return last;
  }
  return last!;
}

/** Resolves when `store`'s listeners see `clientId` announced; rejects after `ms`. */
function changeOf(store: RedisPolicyStore, clientId: string, ms = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no announcement of ${clientId} within ${ms}ms`));
    }, ms);
    const off = store.subscribe((id) => {
      if (id === clientId) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

/** Waits until `store`'s subscriber receives what `publisher` publishes on its channel (bounded). */
async function untilSubscribed(store: RedisPolicyStore, publisher: Cluster): Promise<void> {
  const probe = `probe-${randomBytes(4).toString('hex')}`;
  let seen = false;
  const off = store.subscribe((id) => {
    if (id === probe) seen = true;
  });
  try {
    for (let attempt = 0; attempt < 100 && !seen; attempt += 1) {
      await publisher.publish(store.channel, probe);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    off();
  }
  if (!seen) throw new Error(`the subscriber of ${store.channel} never received a message`);
}

// Deterministic hash tags: the cluster is thrown away, and fixed names give a fixed spread over the shards.
const contractPrefixes: string[] = [];
let contractClient: Cluster | undefined;
describeStoreContract('RedisPolicyStore on a 3-master Redis Cluster', async () => {
  contractClient ??= await connect();
  const prefix = `mrrt-test:{contract-${contractPrefixes.length}}:`;
  contractPrefixes.push(prefix);
  return track(new RedisPolicyStore(contractClient, { prefix }));
});

describe('RedisPolicyStore on Redis Cluster', () => {
  test('the contract above ran on every master', async () => {
    expect(contractPrefixes.length).toBeGreaterThanOrEqual(10);
    const nodes = new Set(await Promise.all(contractPrefixes.map((prefix) => nodeOf(contractClient!, `${prefix}clients`))));
    expect(nodes.size).toBe(3);
  });

  test('the prefix must carry a hash tag: without one, a write would span slots and Redis refuses it', async () => {
    const client = await connect();
    const untagged = `mrrt-test:untagged-${randomBytes(4).toString('hex')}:`;
    expect(() => new RedisPolicyStore(client, { prefix: untagged })).toThrow(TypeError);
    expect(() => new RedisPolicyStore(client, { prefix: untagged })).toThrow(/"prefix".*hash tag/);
    expect(() => new RedisPolicyStore(client, { prefix: 'mrrt-test:{}:' })).toThrow(/hash tag/);
    expect(() => new RedisPolicyStore(client)).not.toThrow(); // the default prefix mrrt:{policies}: is tagged

    // why: without a tag the policy hash and the client index land in different slots, and the
    // store's atomic write (one Lua script over both keys) is refused by the cluster
    const policyKey = `${untagged}policy:app`;
    const indexKey = `${untagged}clients`;
    const [policySlot, indexSlot] = await Promise.all([client.cluster('KEYSLOT', policyKey), client.cluster('KEYSLOT', indexKey)]);
    expect(policySlot).not.toBe(indexSlot);
    const script = "redis.call('HSET', KEYS[1], 'v', ARGV[1]); redis.call('ZADD', KEYS[2], 0, ARGV[2]); return 1";
    await expect(client.eval(script, 2, policyKey, indexKey, 'v1', 'app')).rejects.toThrow(/CROSSSLOT/);
    expect(await client.exists(policyKey)).toBe(0);
    expect(await client.exists(indexKey)).toBe(0);

    // with a tag every key of the store shares one slot, whatever the client id
    const store = track(new RedisPolicyStore(client, { prefix: 'mrrt-test:{tagged}:' }));
    const index = store.keyFor('').replace(/policy:$/, 'clients');
    const slot = await client.cluster('KEYSLOT', index);
    for (const id of ['app', 'spa', '{other}', 'a}b{c', '\u{1F600}', randomBytes(8).toString('hex')]) {
      expect(await client.cluster('KEYSLOT', store.keyFor(id))).toBe(slot);
      await store.set(id, P1);
    }
    expect((await store.list()).clientIds).toHaveLength(6);
  });

  test('a write through one Cluster client reaches the policy cache of another over pub/sub, from every shard', async () => {
    const writerClient = await connect();
    const readerClient = await connect();
    // one store per master, so most writes are published on a node other than the one the reader listens on
    const byNode = new Map<string, string>();
    for (let i = 0; byNode.size < 3 && i < 200; i += 1) {
      const prefix = `mrrt-test:{pubsub-${i}}:`;
      const node = await nodeOf(writerClient, `${prefix}clients`);
      if (!byNode.has(node)) byNode.set(node, prefix);
    }
    expect(byNode.size).toBe(3);

    for (const prefix of byNode.values()) {
      const writer = track(new RedisPolicyStore(writerClient, { prefix }));
      const reader = track(new RedisPolicyStore(readerClient, { prefix }));
      const cache = new PolicyCache(reader, { maxAge: 600_000 });
      try {
        await untilSubscribed(reader, writerClient);
        const created = changeOf(reader, 'app');
        await writer.set('app', P1);
        await created;
        expect((await cache.get('app'))?.policies).toEqual(P1);
        expect(cache.size).toBe(1);

        const announced = changeOf(reader, 'app');
        const next = await writer.set('app', P2);
        await announced;
        expect(cache.size).toBe(0);
        expect(await cache.get('app')).toEqual(next);

        const deleted = changeOf(reader, 'app');
        await writer.delete('app');
        await deleted;
        expect(await cache.get('app')).toBeUndefined();
        await writer.set('app', P3, { ifMatch: null });
      } finally {
        cache.close();
      }
    }
  });
});

let unitClient: Cluster | undefined;
const unitPrefix = `mrrt-test:cluster-adapter-${randomBytes(6).toString('hex')}:`;
beforeAll(async () => {
  unitClient = await connect();
}, 30_000);
// the same unit suite as on standalone Redis, with the adapter's keys spread over the three shards
describeAdapterUnit('Redis Cluster', () => ({ redis: unitClient!, prefix: unitPrefix, connect }));

describe('RedisAdapter flows on Redis Cluster (no hash tag: keys spread over the shards)', () => {
  const prefix = `mrrt-test:cluster-adapter-${randomBytes(4).toString('hex')}:`;
  let client: Cluster;
  let server: TestServer;

  beforeAll(async () => {
    client = await connect();
    const store = track(new RedisPolicyStore(client, { prefix: 'mrrt-test:{cluster-flows}:' }));
    await store.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    server = await startServer({
      adapter: RedisAdapter.factory(client, { prefix, reuseInterval: 0 }), // the reuse test below reuses at once
      mrrt: { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] },
      rotate: true,
    });
  });
  afterAll(() => server?.close());

  const key = (model: string, id: string): string => `${prefix}${model}:${id}`;
  async function storedRefreshToken(token: string): Promise<AdapterPayload & { consumed?: number }> {
    const hash = await client.hgetall(key('RefreshToken', token));
    if (!hash.payload) throw new Error('refresh token not in Redis');
    return { ...JSON.parse(hash.payload), ...(hash.consumed ? { consumed: Number(hash.consumed) } : {}) };
  }
  /** Existence of each key, one command per key (a multi-key EXISTS would be cross-slot). */
  const existing = async (keys: string[]): Promise<string[]> => {
    const found = await Promise.all(keys.map(async (k) => ((await client.exists(k)) === 1 ? k : undefined)));
    return found.filter((k): k is string => k !== undefined);
  };

  test('login stores the grant, its index, the session and the refresh token, on more than one master', async () => {
    const { tokens, rt, index, grantId, session, keys } = await acrossMasters(client, async () => {
      const tokens = await login(server);
      const rt = await storedRefreshToken(tokens.refresh_token);
      const grantId = rt.grantId!;
      const index = `${prefix}grant:${grantId}`;
      const session = await RedisAdapter.factory(client, { prefix })('Session').findByUid(rt.sessionUid!);
      const members = await client.smembers(index);
      const keys = [...members, index, key('Grant', grantId), key('Session', session?.jti ?? ''), `${prefix}uid:Session:${rt.sessionUid}`];
      return { tokens, rt, index, grantId, session, keys };
    });
    expect(rt).toMatchObject({ kind: 'RefreshToken', clientId: 'app', accountId: 'alice', resource: API.A, scope: 'openid offline_access a:read' });
    expect(rt.consumed).toBeUndefined();
    expect(await client.sismember(index, key('RefreshToken', tokens.refresh_token))).toBe(1);
    expect(await client.type(key('Grant', grantId))).toBe('string');
    expect(session).toMatchObject({ kind: 'Session', accountId: 'alice' });
    expect(await mastersOf(client, keys)).toBeGreaterThanOrEqual(2);
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
    expect(fresh.consumed).toBeUndefined();
    expect(fresh).toMatchObject({ grantId: old.grantId, resource: API.A, scope: 'openid offline_access a:read' });
    expect(await client.sismember(`${prefix}grant:${fresh.grantId}`, key('RefreshToken', rotated))).toBe(1);
    expect((await refresh(server, rotated, { resource: API.A })).status).toBe(200);
  });

  test("reuse of a rotated refresh token -> invalid_grant, and revokeByGrantId deletes the grant's keys on every shard", async () => {
    const {
      tokens,
      first,
      members,
      keys: grantKeys,
    } = await acrossMasters(client, async () => {
      const tokens = await login(server);
      const { grantId } = await storedRefreshToken(tokens.refresh_token);
      const first = await refresh(server, tokens.refresh_token);
      const index = `${prefix}grant:${grantId}`;
      const members = await client.smembers(index);
      return { tokens, first, members, keys: [...members, index, key('Grant', grantId!)] };
    });
    expect(first.status).toBe(200);
    const rotated: string = first.body.refresh_token;
    expect(members).toEqual(expect.arrayContaining([key('RefreshToken', tokens.refresh_token), key('RefreshToken', rotated)]));
    expect(await mastersOf(client, grantKeys)).toBeGreaterThanOrEqual(2);

    const reuse = await refresh(server, tokens.refresh_token);
    expect(reuse.status).toBe(400);
    expect(reuse.body.error).toBe('invalid_grant');
    expect(await existing(grantKeys)).toEqual([]);
    const next = await refresh(server, rotated);
    expect(next.status).toBe(400);
    expect(next.body.error).toBe('invalid_grant');
  });

  test('an MRRT exchange issues a token for the policy API and stores the rotation with the original resource and scope', async () => {
    const tokens = await login(server);
    const original = await storedRefreshToken(tokens.refresh_token);
    const grantBefore = await client.get(key('Grant', original.grantId!));

    const res = await refresh(server, tokens.refresh_token, { audience: API.B });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read', sub: 'alice', client_id: 'app' });
    expect(res.body).toMatchObject({ scope: 'b:read', resource: API.B });

    const rotated = await storedRefreshToken(res.body.refresh_token);
    expect(rotated).toMatchObject({ resource: API.A, scope: 'openid offline_access a:read', grantId: original.grantId });
    expect((await storedRefreshToken(tokens.refresh_token)).consumed).toEqual(expect.any(Number));
    expect(await client.get(key('Grant', original.grantId!))).toBe(grantBefore);

    // a target outside the policy is refused without consuming the rotated token
    const refused = await refresh(server, res.body.refresh_token, { audience: API.C });
    expect(refused.status).toBe(400);
    expect(refused.body.error).toBe('invalid_target');
    expect((await storedRefreshToken(res.body.refresh_token)).consumed).toBeUndefined();
    const back = await refresh(server, res.body.refresh_token, { resource: API.A });
    expect(back.status).toBe(200);
    expect(claims(back.body.access_token).aud).toBe(API.A);
  });
});
