// The policy store at scale: `clients` policies written through RedisPolicyStore (auto-pipelined,
// 1 000 in flight), `sample` cold lookups of random clients one after another, the same lookups
// answered by the extension's policy cache, and Redis memory per policy. Removed afterwards.
import { Redis } from 'ioredis';

import { RedisPolicyStore } from '../dist/index.js';
import { deleteByPrefix, parseInfo } from './shared.mjs';
import { percentile, round } from './stats.mjs';
import { log } from './util.mjs';

function scalePolicy(i) {
  return [
    { audience: `https://billing-${i % 97}.example.com`, scope: ['read:invoices', 'write:invoices'] },
    { audience: 'https://messages.example.com', scope: ['read:messages', 'write:messages', 'delete:messages'] },
    { audience: 'https://profile.example.com', scope: ['read:profile'] },
  ];
}

/**
 * Lookups answered by the extension's in-process policy cache (what an exchange does in steady
 * state): `dist/policy-cache.js` is internal, so this import is the bench's own business.
 */
async function cachedLookups(store, sample, n, id) {
  const { PolicyCache } = await import('../dist/policy-cache.js');
  const cache = new PolicyCache(store, { maxAge: 600_000, maxEntries: sample });
  try {
    const ids = Array.from({ length: sample }, () => id(Math.floor(Math.random() * n)));
    for (const clientId of ids) await cache.get(clientId); // fill (store reads)
    const times = [];
    for (const clientId of ids) {
      const t0 = performance.now();
      await cache.get(clientId);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    return { p50: percentile(times, 0.5), p99: percentile(times, 0.99) };
  } finally {
    cache.close();
    await store.close?.();
  }
}

/** `redis`: the runner's own connection (INFO, clean-up); `prefix`: this run's key prefix. */
export async function scaleRun(redis, { redisUrl, prefix: runPrefix, clients: n, sample }) {
  const prefix = `${runPrefix}scale:{policies}:`;
  const writer = new Redis(redisUrl, { enableAutoPipelining: true, maxRetriesPerRequest: 1 });
  const reader = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  try {
    const writeStore = new RedisPolicyStore(writer, { prefix });
    const readStore = new RedisPolicyStore(reader, { prefix });
    const id = (i) => `client-${String(i).padStart(7, '0')}`;

    await redis.call('MEMORY', 'PURGE').catch(() => undefined);
    const memBefore = Number(parseInfo(await redis.info('memory')).used_memory);
    const writeStart = performance.now();
    const BATCH = 1000;
    for (let i = 0; i < n; i += BATCH) {
      const batch = [];
      for (let j = i; j < Math.min(n, i + BATCH); j += 1) batch.push(writeStore.set(id(j), scalePolicy(j)));
      await Promise.all(batch);
    }
    const writeSeconds = (performance.now() - writeStart) / 1000;
    const memAfter = Number(parseInfo(await redis.info('memory')).used_memory);
    const stored = await redis.zcard(`${prefix}clients`);
    if (stored !== n) throw new Error(`scale run: ${stored} clients indexed, expected ${n}`);

    // cold lookups: one Redis round trip each, sequential, random clients
    for (let i = 0; i < 200; i += 1) await readStore.get(id(i)); // connection and JIT warm-up
    const times = [];
    for (let i = 0; i < sample; i += 1) {
      const clientId = id(Math.floor(Math.random() * n));
      const t0 = performance.now();
      const record = await readStore.get(clientId);
      times.push(performance.now() - t0);
      if (!record || record.policies.length !== 3) throw new Error(`scale run: ${clientId} has no policy`);
    }
    times.sort((a, b) => a - b);
    const cached = await cachedLookups(readStore, sample, n, id);
    return {
      clients: n,
      write_s: round(writeSeconds, 2),
      writes_per_s: Math.round(n / writeSeconds),
      policy_json_bytes: JSON.stringify(scalePolicy(1)).length,
      get_sample: sample,
      get_p50_ms: round(percentile(times, 0.5), 3),
      get_p99_ms: round(percentile(times, 0.99), 3),
      cached_get_p50_ms: round(cached.p50, 4),
      cached_get_p99_ms: round(cached.p99, 4),
      redis_bytes_per_policy: Math.round((memAfter - memBefore) / n),
    };
  } finally {
    const removed = await deleteByPrefix(redis, prefix);
    log(`scale run: removed ${removed} keys`);
    writer.disconnect();
    reader.disconnect();
  }
}
