// Deleting what a test wrote to Redis: every key under a prefix, found with SCAN (never KEYS, which
// blocks a shared server), deleted in batches.
import type { Redis } from 'ioredis';

/** Deletes every key starting with `prefix` on `redis` (a standalone server); returns how many. */
export async function deleteKeys(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
    cursor = next;
    if (keys.length !== 0) deleted += await redis.unlink(...keys);
  } while (cursor !== '0');
  return deleted;
}
