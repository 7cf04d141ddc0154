import type { Adapter, AdapterFactory, AdapterPayload } from 'oidc-provider';
import type { Cluster, Redis } from 'ioredis';

/** Options for {@link RedisAdapter}. */
export interface RedisAdapterOptions {
  /**
   * Prefix of every key the adapter writes. Default `oidc:`. Give each provider (or each
   * environment sharing a Redis) its own prefix. A hash tag in the prefix (`{oidc}:`) pins every key
   * to one Cluster slot; the adapter does not need that, see {@link RedisAdapter}.
   */
  prefix?: string;
}

/** Models indexed by `grantId` for `revokeByGrantId`, as in oidc-provider's own memory adapter. */
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest', 'PreAuthorizedCode']);
/** Models whose oidc-provider class calls `adapter.consume` (9.13: the grantable codes plus PAR). */
const CONSUMABLE = new Set(['AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest', 'PreAuthorizedCode', 'PushedAuthorizationRequest']);
const DEFAULT_PREFIX = 'oidc:';
const DELETE_BATCH = 500;

// KEYS[1] consumable hash; ARGV: payload JSON, TTL in seconds or '' for none. A `consumed` field is kept.
const UPSERT_SCRIPT = `
redis.call('HSET', KEYS[1], 'payload', ARGV[1])
if ARGV[2] == '' then redis.call('PERSIST', KEYS[1]) else redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
`;

// KEYS[1] consumable hash; ARGV: epoch seconds. Never creates the key; the first consumption wins.
const CONSUME_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'consumed', ARGV[1])
`;

// KEYS[1] grant index; ARGV: member key, member TTL in seconds or '' for none.
// The index lives as long as its longest-lived member: never shortened, persistent once a member is.
const INDEX_SCRIPT = `
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  redis.call('PERSIST', KEYS[1])
else
  local ms = tonumber(ARGV[2]) * 1000
  local current = redis.call('PTTL', KEYS[1])
  if existed == 0 or (current >= 0 and current < ms) then redis.call('PEXPIRE', KEYS[1], ms) end
end
return 1
`;

// KEYS[1] grant index. Reads and deletes it in one step, so a member added afterwards starts a new index.
const DRAIN_SCRIPT = `
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
`;

interface ScriptClient {
  mrrtAdapterUpsert(key: string, payload: string, ttl: string): Promise<number>;
  mrrtAdapterConsume(key: string, now: string): Promise<number>;
  mrrtAdapterIndex(key: string, member: string, ttl: string): Promise<number>;
  mrrtAdapterDrain(key: string): Promise<string[]>;
}
type Client = (Redis | Cluster) & ScriptClient;

function prepareClient(redis: Redis | Cluster): Client {
  if (typeof redis !== 'object' || redis === null || typeof (redis as Redis).hmget !== 'function' || typeof (redis as Redis).defineCommand !== 'function') {
    throw new TypeError('"redis" must be an ioredis Redis or Cluster instance');
  }
  if (!('mrrtAdapterUpsert' in redis)) {
    redis.defineCommand('mrrtAdapterUpsert', { numberOfKeys: 1, lua: UPSERT_SCRIPT });
    redis.defineCommand('mrrtAdapterConsume', { numberOfKeys: 1, lua: CONSUME_SCRIPT });
    redis.defineCommand('mrrtAdapterIndex', { numberOfKeys: 1, lua: INDEX_SCRIPT });
    redis.defineCommand('mrrtAdapterDrain', { numberOfKeys: 1, lua: DRAIN_SCRIPT });
  }
  return redis as Client;
}

function resolvePrefix(options: RedisAdapterOptions): string {
  if (typeof options !== 'object' || options === null) throw new TypeError('"options" must be an object');
  const { prefix = DEFAULT_PREFIX, ...unknown } = options;
  const extra = Object.keys(unknown);
  if (extra.length) throw new TypeError(`"${extra[0]}" is not a RedisAdapter option`);
  if (typeof prefix !== 'string' || prefix.length === 0 || prefix.length > 256) {
    throw new TypeError('"prefix" option must be a non-empty string of at most 256 characters');
  }
  return prefix;
}

/** `undefined` for no expiry, whole seconds (rounded up) otherwise; 0 or less means already expired. */
function ttlOf(expiresIn: number | undefined): number | undefined {
  if (expiresIn === undefined) return undefined;
  if (typeof expiresIn !== 'number' || !Number.isFinite(expiresIn)) throw new TypeError('"expiresIn" must be a finite number of seconds');
  return Math.ceil(expiresIn);
}

function parse(key: string, json: string): AdapterPayload {
  try {
    return JSON.parse(json) as AdapterPayload;
  } catch (cause) {
    throw new Error(`oidc-provider-mrrt: Redis key "${key}" does not hold a JSON payload`, { cause });
  }
}

/**
 * A production oidc-provider adapter on ioredis (standalone, Sentinel or Cluster).
 *
 * Key layout (`<prefix>` defaults to `oidc:`):
 *
 * | key | type | content | TTL |
 * | --- | --- | --- | --- |
 * | `<prefix><Model>:<id>` | string | the JSON payload | `expiresIn` |
 * | `<prefix><Model>:<id>` for consumable models (AuthorizationCode, RefreshToken, DeviceCode, BackchannelAuthenticationRequest, PreAuthorizedCode, PushedAuthorizationRequest) | hash | `payload` (JSON), `consumed` (epoch seconds, once consumed) | `expiresIn` |
 * | `<prefix>grant:<grantId>` | set | the keys of the grant's AccessToken, AuthorizationCode, RefreshToken, DeviceCode, BackchannelAuthenticationRequest and PreAuthorizedCode entries | its longest-lived member's |
 * | `<prefix>uid:<Model>:<uid>` | string | the id of the entry whose payload has that `uid` (the Session) | the entry's |
 * | `<prefix>userCode:<Model>:<userCode>` | string | the id of the entry with that `userCode` (the DeviceCode) | the entry's |
 *
 * Every script and every atomic step touches exactly one key, so the same code runs on Redis
 * Cluster without hash tags. Tagging tokens with their grant (`{grantId}`) would not help: `find`,
 * `consume` and `destroy` receive only the token id, so a token key must be derivable from the id
 * alone. Writes that span keys are ordered instead: `upsert` adds a token to its grant index before
 * it writes the token, so a stored token is always reachable by `revokeByGrantId`; that method
 * reads and deletes the index in one step, then deletes the members. A token saved for a grant while
 * that grant is being revoked can outlive the revocation (indexed again for a later revocation);
 * oidc-provider rejects it anyway once the Grant itself is destroyed.
 *
 * `consume` is one script that sets `consumed` on the existing hash (keeping its TTL; the first
 * consumption wins, and a later `upsert` of the same id keeps it), and `find` returns it. `expiresIn`
 * is rounded up to whole seconds; an `upsert` with `expiresIn <= 0` deletes the entry. `destroy`
 * deletes the entry only: its grant-index membership and `uid`/`userCode` lookups expire with their
 * own TTL, and lookups are checked against the payload they resolve to, so a stale one finds nothing.
 *
 * @example
 * ```ts
 * import { Redis } from 'ioredis';
 * import Provider from 'oidc-provider';
 * import { RedisAdapter } from 'oidc-provider-mrrt';
 *
 * const redis = new Redis(process.env.REDIS_URL!);
 * const provider = new Provider('https://auth.example.com', {
 *   adapter: RedisAdapter.factory(redis, { prefix: 'auth:' }),
 *   // ...
 * });
 * ```
 */
export class RedisAdapter implements Adapter {
  readonly #model: string;
  readonly #redis: Client;
  readonly #prefix: string;
  readonly #consumable: boolean;

  /**
   * Returns an oidc-provider adapter factory bound to `redis` and `options`, for the `adapter`
   * configuration option. The arguments are validated here, once.
   *
   * @param redis - an ioredis `Redis` or `Cluster` client, owned (and closed) by the caller.
   * @param options - `prefix`, default `oidc:`.
   * @example
   * ```ts
   * const adapter = RedisAdapter.factory(new Redis(process.env.REDIS_URL!));
   * new Provider(issuer, { adapter, ...configuration });
   * ```
   */
  static factory(redis: Redis | Cluster, options: RedisAdapterOptions = {}): AdapterFactory {
    const client = prepareClient(redis);
    const prefix = resolvePrefix(options);
    return (name: string) => new RedisAdapter(name, client, { prefix });
  }

  /**
   * An adapter for one oidc-provider model. Prefer {@link RedisAdapter.factory}; oidc-provider
   * itself only passes the model name.
   *
   * @param name - the oidc-provider model name, such as `RefreshToken`.
   * @param redis - an ioredis `Redis` or `Cluster` client.
   * @param options - `prefix`, default `oidc:`.
   * @example
   * ```ts
   * const sessions = new RedisAdapter('Session', redis, { prefix: 'auth:' });
   * await sessions.findByUid(uid);
   * ```
   */
  constructor(name: string, redis: Redis | Cluster, options: RedisAdapterOptions = {}) {
    if (typeof name !== 'string' || name.length === 0) throw new TypeError('"name" must be a non-empty oidc-provider model name');
    if (redis === undefined) throw new TypeError('"redis" must be an ioredis Redis or Cluster instance; configure the adapter with RedisAdapter.factory(redis)');
    this.#redis = prepareClient(redis);
    this.#prefix = resolvePrefix(options);
    this.#model = name;
    this.#consumable = CONSUMABLE.has(name);
  }

  /**
   * The Redis key holding the entry `id` of this adapter's model, `<prefix><Model>:<id>`.
   *
   * @example
   * ```ts
   * new RedisAdapter('Session', redis).keyFor('abc'); // 'oidc:Session:abc'
   * ```
   */
  keyFor(id: string): string {
    return `${this.#prefix}${this.#model}:${id}`;
  }

  /**
   * The Redis key of the set indexing the entries of grant `grantId`, `<prefix>grant:<grantId>`.
   *
   * @example
   * ```ts
   * await redis.smembers(adapter.grantKeyFor(grantId));
   * ```
   */
  grantKeyFor(grantId: string): string {
    return `${this.#prefix}grant:${grantId}`;
  }

  #lookupKey(kind: 'uid' | 'userCode', value: string): string {
    return `${this.#prefix}${kind}:${this.#model}:${value}`;
  }

  /**
   * Stores `payload` under `id`, replacing any previous payload, with a TTL of `expiresIn` seconds
   * when given, and updates the grant index and the `uid` / `userCode` lookups.
   *
   * @example
   * ```ts
   * await adapter.upsert(jti, payload, 3600);
   * ```
   */
  async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    const key = this.keyFor(id);
    const ttl = ttlOf(expiresIn);
    if (ttl !== undefined && ttl <= 0) {
      await this.#redis.del(key);
      return;
    }
    const ttlArg = ttl === undefined ? '' : String(ttl);

    if (GRANTABLE.has(this.#model) && typeof payload.grantId === 'string') {
      await this.#redis.mrrtAdapterIndex(this.grantKeyFor(payload.grantId), key, ttlArg);
    }

    const writes: Promise<unknown>[] = [];
    const lookups = [['uid', payload.uid], ['userCode', payload.userCode]] as const;
    for (const [kind, value] of lookups) {
      if (typeof value !== 'string') continue;
      const lookup = this.#lookupKey(kind, value);
      writes.push(ttl === undefined ? this.#redis.set(lookup, id) : this.#redis.set(lookup, id, 'EX', ttl));
    }
    const json = JSON.stringify(payload);
    if (this.#consumable) writes.push(this.#redis.mrrtAdapterUpsert(key, json, ttlArg));
    else writes.push(ttl === undefined ? this.#redis.set(key, json) : this.#redis.set(key, json, 'EX', ttl));
    await Promise.all(writes);
  }

  /**
   * The payload stored under `id`, with `consumed` (epoch seconds) once consumed; `undefined` when
   * absent or expired.
   *
   * @example
   * ```ts
   * const payload = await adapter.find(jti);
   * ```
   */
  async find(id: string): Promise<AdapterPayload | undefined> {
    const key = this.keyFor(id);
    if (!this.#consumable) {
      const json = await this.#redis.get(key);
      return json === null ? undefined : parse(key, json);
    }
    const [json, consumed] = await this.#redis.hmget(key, 'payload', 'consumed');
    if (json == null) return undefined;
    const payload = parse(key, json);
    if (consumed != null) payload.consumed = Number(consumed);
    return payload;
  }

  /**
   * The entry (in oidc-provider: the Session) whose payload has this `uid`.
   *
   * @example
   * ```ts
   * const session = await new RedisAdapter('Session', redis).findByUid(uid);
   * ```
   */
  async findByUid(uid: string): Promise<AdapterPayload | undefined> {
    const payload = await this.#findBy('uid', uid);
    return payload?.uid === uid ? payload : undefined;
  }

  /**
   * The entry (in oidc-provider: the DeviceCode) whose payload has this `userCode`.
   *
   * @example
   * ```ts
   * const deviceCode = await new RedisAdapter('DeviceCode', redis).findByUserCode('ABCD-EFGH');
   * ```
   */
  async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
    const payload = await this.#findBy('userCode', userCode);
    return payload?.userCode === userCode ? payload : undefined;
  }

  async #findBy(kind: 'uid' | 'userCode', value: string): Promise<AdapterPayload | undefined> {
    const id = await this.#redis.get(this.#lookupKey(kind, value));
    return id === null ? undefined : this.find(id);
  }

  /**
   * Marks the entry `id` consumed, atomically and keeping its TTL. A missing entry stays missing.
   * Only the consumable models listed on {@link RedisAdapter} support it; others throw.
   *
   * @example
   * ```ts
   * await new RedisAdapter('AuthorizationCode', redis).consume(jti);
   * ```
   */
  async consume(id: string): Promise<void> {
    if (!this.#consumable) throw new Error(`oidc-provider-mrrt: RedisAdapter cannot consume a ${this.#model}`);
    await this.#redis.mrrtAdapterConsume(this.keyFor(id), String(Math.floor(Date.now() / 1000)));
  }

  /**
   * Deletes the entry `id`. Its grant-index membership and lookups expire on their own.
   *
   * @example
   * ```ts
   * await adapter.destroy(jti);
   * ```
   */
  async destroy(id: string): Promise<void> {
    await this.#redis.del(this.keyFor(id));
  }

  /**
   * Deletes every indexed entry of grant `grantId` (of every grantable model, whichever model's
   * adapter is asked) and the index. The Grant entry itself is destroyed by oidc-provider separately.
   *
   * @example
   * ```ts
   * await new RedisAdapter('RefreshToken', redis).revokeByGrantId(grantId);
   * ```
   */
  async revokeByGrantId(grantId: string): Promise<void> {
    const members = await this.#redis.mrrtAdapterDrain(this.grantKeyFor(grantId));
    if (this.#redis.isCluster) {
      await Promise.all(members.map((key) => this.#redis.del(key)));
      return;
    }
    for (let i = 0; i < members.length; i += DELETE_BATCH) await this.#redis.del(...members.slice(i, i + DELETE_BATCH));
  }
}
