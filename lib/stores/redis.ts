import type { Cluster, Redis } from 'ioredis';

import { MrrtTypeError, PolicyConflictError, PolicyStoreError, PolicyValidationError } from '../errors.js';
import { NO_LIMITS, parseWithin, type Policy } from '../policy.js';
import {
  ChangeNotifier,
  assertClientId,
  assertWriteOptions,
  resolveListOptions,
  type ChangeListener,
  type ListOptions,
  type PolicyPage,
  type PolicyRecord,
  type PolicyStore,
  type WriteOptions,
  validatedRecord,
} from '../store.js';
import { newVersion } from './memory.js';

/** Options for {@link RedisPolicyStore}. */
export interface RedisPolicyStoreOptions {
  /**
   * Prefix of every key and of the change channel. Default `mrrt:{policies}:`. On Redis Cluster
   * it must contain a hash tag (`{...}`) so that a policy and the client index share a slot.
   */
  prefix?: string;
}

// Shared by both writes: nothing is written when the index key has the wrong type; a policy key of
// another type is corrupt data that matches no version (an unconditional write replaces it); then
// the precondition (ARGV[1] mode, ARGV[2] expected version) is checked.
const PRECONDITION = `
if redis.call('TYPE', KEYS[2])['ok'] ~= 'zset' and redis.call('TYPE', KEYS[2])['ok'] ~= 'none' then
  return redis.error_reply('WRONGTYPE the client index holds the wrong Redis type')
end
local kind = redis.call('TYPE', KEYS[1])['ok']
local cur = false
if kind == 'hash' then cur = redis.call('HGET', KEYS[1], 'v') end
if ARGV[1] == 'absent' and kind ~= 'none' then return {0, cur or ''} end
if ARGV[1] == 'match' and cur ~= ARGV[2] then return {0, cur or ''} end
`;

// KEYS[1] policy hash, KEYS[2] client index; ARGV: mode, expected, version, policies, clientId, channel
const SET_SCRIPT = `${PRECONDITION}if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'p', ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[5])
return {1, ARGV[3]}
`;

// KEYS[1] policy hash, KEYS[2] client index; ARGV: mode, expected, clientId, channel
const DELETE_SCRIPT = `${PRECONDITION}local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
if n == 1 then redis.call('PUBLISH', ARGV[4], ARGV[3]) end
return {1, n}
`;

type ScriptReply = [0 | 1, string | number];
interface ScriptClient {
  mrrtPolicySet(policyKey: string, indexKey: string, ...args: string[]): Promise<ScriptReply>;
  mrrtPolicyDelete(policyKey: string, indexKey: string, ...args: string[]): Promise<ScriptReply>;
}

// Redis Cluster hashes only the part between the first "{" and the first "}" after it, when that is
// not empty (https://redis.io/docs/reference/cluster-spec/#hash-tags). Both must lie in the prefix so
// that every key of the store hashes to the same slot whatever the client id.
function hasHashTag(prefix: string): boolean {
  const open = prefix.indexOf('{');
  if (open === -1) return false;
  const close = prefix.indexOf('}', open + 1);
  return close > open + 1;
}

// Errors of the Redis client as PolicyStoreError: a key of the wrong type is corrupt data, anything
// else means the store could not answer.
function storeError(cause: unknown, what: string): PolicyStoreError {
  if (cause instanceof Error && /^WRONGTYPE/.test(cause.message)) {
    return new PolicyStoreError('ERR_MRRT_STORE_CORRUPT', `${what}: a key holds the wrong Redis type`, { cause });
  }
  return new PolicyStoreError('ERR_MRRT_STORE_UNAVAILABLE', `${what}: Redis policy store did not answer`, { cause });
}

const precondition = (ifMatch: string | null | undefined): [string, string] => {
  if (ifMatch === undefined) return ['any', ''];
  if (ifMatch === null) return ['absent', ''];
  return ['match', ifMatch];
};

/**
 * A {@link PolicyStore} on Redis (standalone, Sentinel or Cluster through ioredis).
 *
 * One hash per client (`<prefix>policy:<clientId>` with the version and the JSON policy) and a
 * sorted set indexing the clients (`<prefix>clients`). Writes are Lua scripts: the version check,
 * the write, the index update and the change announcement on `<prefix>changed` happen atomically.
 *
 * @example
 * ```ts
 * const store = new RedisPolicyStore(new Redis(process.env.REDIS_URL), { prefix: 'mrrt:{policies}:' });
 * ```
 */
export class RedisPolicyStore implements PolicyStore {
  readonly #redis: (Redis | Cluster) & ScriptClient;
  readonly #prefix: string;
  readonly #index: string;
  /** The pub/sub channel on which every write publishes the client id. */
  readonly channel: string;
  readonly #changes = new ChangeNotifier();
  #subscriber: Redis | Cluster | undefined;

  constructor(redis: Redis | Cluster, options: RedisPolicyStoreOptions = {}) {
    if (typeof redis !== 'object' || redis === null || typeof (redis as Redis).hmget !== 'function' || typeof (redis as Redis).defineCommand !== 'function') {
      throw new MrrtTypeError('"redis" must be an ioredis Redis or Cluster instance');
    }
    if (typeof options !== 'object' || options === null) throw new MrrtTypeError('"options" must be an object');
    const { prefix = 'mrrt:{policies}:', ...unknown } = options;
    const extra = Object.keys(unknown);
    if (extra.length) throw new MrrtTypeError(`"${extra[0]}" is not a RedisPolicyStore option`);
    if (typeof prefix !== 'string' || prefix.length === 0 || prefix.length > 256)
      throw new MrrtTypeError('"prefix" option must be a non-empty string of at most 256 characters');
    if (redis.isCluster && !hasHashTag(prefix)) throw new MrrtTypeError('"prefix" option must contain a hash tag such as "{policies}" on Redis Cluster');

    if (!('mrrtPolicySet' in redis)) {
      redis.defineCommand('mrrtPolicySet', { numberOfKeys: 2, lua: SET_SCRIPT });
      redis.defineCommand('mrrtPolicyDelete', { numberOfKeys: 2, lua: DELETE_SCRIPT });
    }
    this.#redis = redis as (Redis | Cluster) & ScriptClient;
    this.#prefix = prefix;
    this.#index = `${prefix}clients`;
    this.channel = `${prefix}changed`;
  }

  /**
   * Listens for policy changes: local writes are reported at once; writes by other instances arrive
   * over pub/sub on {@link channel} through a connection the store opens on first use
   * (`redis.duplicate()`). After that connection reconnects, `listener(undefined)` reports that
   * announcements may have been missed.
   */
  subscribe(listener: ChangeListener): () => void {
    const unsubscribe = this.#changes.add(listener);
    if (!this.#subscriber) {
      const subscriber = this.#redis.duplicate();
      this.#subscriber = subscriber;
      let connectedBefore = false;
      subscriber.on('message', (channel: string, clientId: string) => {
        if (channel === this.channel) this.#changes.notify(clientId);
      });
      // (re)subscribe on every connection: a SUBSCRIBE sent while disconnected may have failed
      // (enableOfflineQueue: false, retries exhausted), and ioredis only resubscribes what succeeded
      subscriber.on('ready', () => {
        subscriber.subscribe(this.channel).catch(() => {});
        if (connectedBefore) this.#changes.notify(undefined);
        connectedBefore = true;
      });
      subscriber.on('error', () => {
        // reconnection is ioredis's job; reads fail closed meanwhile and the cache's max age bounds staleness
      });
      subscriber.subscribe(this.channel).catch(() => {});
    }
    return unsubscribe;
  }

  /** Closes the subscriber connection, if {@link subscribe} opened one. The client passed in stays open. */
  async close(): Promise<void> {
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    if (subscriber) await subscriber.quit().catch(() => subscriber.disconnect());
  }

  /** The Redis key holding `clientId`'s policy. */
  keyFor(clientId: string): string {
    return `${this.#prefix}policy:${clientId}`;
  }

  async get(clientId: string): Promise<PolicyRecord | undefined> {
    assertClientId(clientId);
    let version: string | null | undefined;
    let json: string | null | undefined;
    try {
      [version, json] = await this.#redis.hmget(this.keyFor(clientId), 'v', 'p');
    } catch (cause) {
      throw storeError(cause, `reading the policy of client "${clientId}" failed`);
    }
    if (version == null && json == null) return undefined;
    if (version == null || version === '' || json == null) {
      throw new PolicyStoreError('ERR_MRRT_STORE_CORRUPT', `policy of client "${clientId}" is incomplete`);
    }
    try {
      const policies = parseWithin(JSON.parse(json) as unknown, NO_LIMITS);
      return validatedRecord(clientId, policies, version);
    } catch (cause) {
      const detail = cause instanceof PolicyValidationError ? cause.message : 'not JSON';
      throw new PolicyStoreError('ERR_MRRT_STORE_CORRUPT', `policy of client "${clientId}" is invalid: ${detail}`, { cause });
    }
  }

  async set(clientId: string, policies: Policy, options: WriteOptions = {}): Promise<PolicyRecord> {
    assertClientId(clientId);
    assertWriteOptions(options);
    const parsed = parseWithin(policies, NO_LIMITS);
    const version = newVersion();
    let reply: ScriptReply;
    try {
      reply = await this.#redis.mrrtPolicySet(
        this.keyFor(clientId),
        this.#index,
        ...precondition(options.ifMatch),
        version,
        JSON.stringify(parsed),
        clientId,
        this.channel,
      );
    } catch (cause) {
      throw storeError(cause, `writing the policy of client "${clientId}" failed`);
    }
    const [ok, current] = reply;
    if (ok !== 1) throw new PolicyConflictError(clientId, String(current) || undefined);
    this.#changes.notify(clientId);
    return validatedRecord(clientId, parsed, version);
  }

  async delete(clientId: string, options: WriteOptions = {}): Promise<boolean> {
    assertClientId(clientId);
    assertWriteOptions(options);
    let reply: ScriptReply;
    try {
      reply = await this.#redis.mrrtPolicyDelete(this.keyFor(clientId), this.#index, ...precondition(options.ifMatch), clientId, this.channel);
    } catch (cause) {
      throw storeError(cause, `deleting the policy of client "${clientId}" failed`);
    }
    const [ok, result] = reply;
    if (ok !== 1) throw new PolicyConflictError(clientId, String(result) || undefined);
    if (result === 1) this.#changes.notify(clientId);
    return result === 1;
  }

  async list(options?: ListOptions): Promise<PolicyPage> {
    const { after, limit } = resolveListOptions(options);
    let ids: string[];
    try {
      ids = await this.#redis.zrangebylex(this.#index, after === undefined ? '-' : `(${after}`, '+', 'LIMIT', 0, limit + 1);
    } catch (cause) {
      throw storeError(cause, 'listing the clients with a policy failed');
    }
    const clientIds = ids.slice(0, limit);
    return ids.length > limit ? { clientIds, next: clientIds.at(-1)! } : { clientIds };
  }
}
