import { errors, type Adapter, type AdapterFactory, type AdapterPayload } from 'oidc-provider';
import type { Cluster, Redis } from 'ioredis';
import { MrrtError, MrrtTypeError } from '../errors.js';

/** Options for {@link RedisAdapter}. */
export interface RedisAdapterOptions {
  /**
   * Prefix of every key the adapter writes. Default `oidc:`. Give each provider (or each
   * environment sharing a Redis) its own prefix. A hash tag in the prefix (`{oidc}:`) pins every key
   * to one Cluster slot; the adapter does not need that, see {@link RedisAdapter}.
   */
  prefix?: string;
  /**
   * Seconds after its rotation during which a rotated refresh token reads as absent instead of
   * consumed. Default `2`; `0` to `60`. A refresh token presented again inside this interval (a
   * browser refreshing twice, a client retrying) is refused with `invalid_grant` and nothing else
   * happens, so the request that won keeps its session; presented later, it reads as consumed and
   * oidc-provider's reuse detection revokes the whole grant. `0` keeps reuse detection for every
   * request that reads the token after the rotation. Only refresh tokens are affected.
   */
  reuseInterval?: number;
}

/** Models indexed by `grantId` for `revokeByGrantId`, as in oidc-provider's own memory adapter. */
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest', 'PreAuthorizedCode']);
/** Models whose oidc-provider class calls `adapter.consume` (9.13: the grantable codes plus PAR). */
const CONSUMABLE = new Set([
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
  'PreAuthorizedCode',
  'PushedAuthorizationRequest',
]);
const DEFAULT_PREFIX = 'oidc:';
const DEFAULT_REUSE_INTERVAL = 2;
const MAX_REUSE_INTERVAL = 60;
const DELETE_BATCH = 500;

// KEYS[1] consumable hash; ARGV: payload JSON, TTL in seconds or '' for none. A `consumed` field is kept.
const UPSERT_SCRIPT = `
redis.call('HSET', KEYS[1], 'payload', ARGV[1])
if ARGV[2] == '' then redis.call('PERSIST', KEYS[1]) else redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
`;

// KEYS[1] consumable hash. 1: consumed by this call; 0: consumed before; -1: no such entry (never created).
// Stamped with Redis's clock, so that every instance measures the reuse interval on the same clock.
const CONSUME_SCRIPT = `
if redis.call('HEXISTS', KEYS[1], 'payload') == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'consumed') == 1 then return 0 end
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], 'consumed', now[1], 'consumedMs', now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000)))
return 1
`;

// KEYS[1] consumable hash; ARGV: reuse interval in ms. {payload, consumed}; {} when absent; {0} when
// consumed less than the interval ago (reads as absent).
const FIND_SCRIPT = `
local entry = redis.call('HMGET', KEYS[1], 'payload', 'consumed', 'consumedMs')
if not entry[1] then return {} end
if entry[3] then
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if ms - tonumber(entry[3]) < tonumber(ARGV[1]) then return {0} end
end
return {entry[1], entry[2]}
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
  mrrtAdapterConsume(key: string): Promise<number>;
  mrrtAdapterFind(key: string, reuseMs: string): Promise<[] | [0] | [string, string | null]>;
  mrrtAdapterIndex(key: string, member: string, ttl: string): Promise<number>;
  mrrtAdapterDrain(key: string): Promise<string[]>;
}
type Client = (Redis | Cluster) & ScriptClient;

function prepareClient(redis: Redis | Cluster): Client {
  if (typeof redis !== 'object' || redis === null || typeof (redis as Redis).hmget !== 'function' || typeof (redis as Redis).defineCommand !== 'function') {
    throw new MrrtTypeError('"redis" must be an ioredis Redis or Cluster instance');
  }
  if (!('mrrtAdapterFind' in redis)) {
    redis.defineCommand('mrrtAdapterUpsert', { numberOfKeys: 1, lua: UPSERT_SCRIPT });
    redis.defineCommand('mrrtAdapterConsume', { numberOfKeys: 1, lua: CONSUME_SCRIPT });
    redis.defineCommand('mrrtAdapterFind', { numberOfKeys: 1, lua: FIND_SCRIPT });
    redis.defineCommand('mrrtAdapterIndex', { numberOfKeys: 1, lua: INDEX_SCRIPT });
    redis.defineCommand('mrrtAdapterDrain', { numberOfKeys: 1, lua: DRAIN_SCRIPT });
  }
  return redis as Client;
}

interface Settings {
  readonly prefix: string;
  readonly reuseInterval: number;
}

function resolveSettings(options: RedisAdapterOptions): Settings {
  if (typeof options !== 'object' || options === null) throw new MrrtTypeError('"options" must be an object');
  const { prefix = DEFAULT_PREFIX, reuseInterval = DEFAULT_REUSE_INTERVAL, ...unknown } = options;
  const extra = Object.keys(unknown);
  if (extra.length) throw new MrrtTypeError(`"${extra[0]}" is not a RedisAdapter option`);
  if (typeof prefix !== 'string' || prefix.length === 0 || prefix.length > 256) {
    throw new MrrtTypeError('"prefix" option must be a non-empty string of at most 256 characters');
  }
  if (typeof reuseInterval !== 'number' || !Number.isFinite(reuseInterval) || reuseInterval < 0 || reuseInterval > MAX_REUSE_INTERVAL) {
    throw new MrrtTypeError(`"reuseInterval" option must be a number of seconds from 0 to ${MAX_REUSE_INTERVAL}`);
  }
  return { prefix, reuseInterval };
}

const LABELS: Record<string, string> = {
  AuthorizationCode: 'authorization code',
  RefreshToken: 'refresh token',
  DeviceCode: 'device code',
  BackchannelAuthenticationRequest: 'backchannel authentication request',
  PreAuthorizedCode: 'pre-authorized code',
};

/** What a consumable model says when its entry was consumed before or is gone: the error oidc-provider itself throws for it. */
function refusal(model: string, gone: boolean): Error {
  if (model === 'PushedAuthorizationRequest') return new errors.InvalidRequestUri('request_uri is invalid, expired, or was already used');
  const label = LABELS[model] ?? model;
  if (gone) return new errors.InvalidGrant(`${label} not found`);
  return new errors.InvalidGrant(model === 'RefreshToken' ? 'refresh token already used' : `${label} already consumed`);
}

/** `undefined` for no expiry, whole seconds (rounded up) otherwise; 0 or less means already expired. */
function ttlOf(expiresIn: number | undefined): number | undefined {
  if (expiresIn === undefined) return undefined;
  if (typeof expiresIn !== 'number' || !Number.isFinite(expiresIn)) throw new MrrtTypeError('"expiresIn" must be a finite number of seconds');
  return Math.ceil(expiresIn);
}

function parse(key: string, json: string): AdapterPayload {
  try {
    return JSON.parse(json) as AdapterPayload;
  } catch (cause) {
    throw new MrrtError('ERR_MRRT_ADAPTER_CORRUPT', `oidc-provider-mrrt: Redis key "${key}" does not hold a JSON payload`, { cause });
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
 * | `<prefix><Model>:<id>` for consumable models (AuthorizationCode, RefreshToken, DeviceCode, BackchannelAuthenticationRequest, PreAuthorizedCode, PushedAuthorizationRequest) | hash | `payload` (JSON), `consumed` (epoch seconds, once consumed), `consumedMs` (epoch ms, Redis's clock) | `expiresIn` |
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
 * `consume` is one script that sets `consumed` on the existing hash (keeping its TTL; a later
 * `upsert` of the same id keeps it) and refuses an entry that is already consumed or gone, with the
 * OAuth error oidc-provider uses for that model (`invalid_grant`; `invalid_request_uri` for PAR).
 * oidc-provider reads, checks and consumes in separate steps, so of several requests presenting the
 * same refresh token or code at once, several pass its `consumed` check: exactly one of them wins
 * the consume, the others get `invalid_grant`. `find` returns `consumed`, except that a refresh
 * token rotated less than `reuseInterval` seconds ago reads as absent (see
 * {@link RedisAdapterOptions.reuseInterval}). `expiresIn`
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
  readonly #reuseMs: string;

  /**
   * Returns an oidc-provider adapter factory bound to `redis` and `options`, for the `adapter`
   * configuration option. The arguments are validated here, once.
   *
   * @param redis - an ioredis `Redis` or `Cluster` client, owned (and closed) by the caller.
   * @param options - `prefix`, default `oidc:`; `reuseInterval`, default 2 seconds.
   * @example
   * ```ts
   * const adapter = RedisAdapter.factory(new Redis(process.env.REDIS_URL!));
   * new Provider(issuer, { adapter, ...configuration });
   * ```
   */
  static factory(redis: Redis | Cluster, options: RedisAdapterOptions = {}): AdapterFactory {
    const client = prepareClient(redis);
    const settings = resolveSettings(options);
    return (name: string) => new RedisAdapter(name, client, settings);
  }

  /**
   * An adapter for one oidc-provider model. Prefer {@link RedisAdapter.factory}; oidc-provider
   * itself only passes the model name.
   *
   * @param name - the oidc-provider model name, such as `RefreshToken`.
   * @param redis - an ioredis `Redis` or `Cluster` client.
   * @param options - `prefix`, default `oidc:`; `reuseInterval`, default 2 seconds.
   * @example
   * ```ts
   * const sessions = new RedisAdapter('Session', redis, { prefix: 'auth:' });
   * await sessions.findByUid(uid);
   * ```
   */
  constructor(name: string, redis: Redis | Cluster, options: RedisAdapterOptions = {}) {
    if (typeof name !== 'string' || name.length === 0) throw new MrrtTypeError('"name" must be a non-empty oidc-provider model name');
    if (redis === undefined)
      throw new MrrtTypeError('"redis" must be an ioredis Redis or Cluster instance; configure the adapter with RedisAdapter.factory(redis)');
    this.#redis = prepareClient(redis);
    const { prefix, reuseInterval } = resolveSettings(options);
    this.#prefix = prefix;
    this.#reuseMs = name === 'RefreshToken' ? String(Math.round(reuseInterval * 1000)) : '0';
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
    const lookups = [
      ['uid', payload.uid],
      ['userCode', payload.userCode],
    ] as const;
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
   * absent or expired, and for a refresh token consumed less than `reuseInterval` seconds ago.
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
    const [json, consumed] =
      this.#reuseMs === '0' ? await this.#redis.hmget(key, 'payload', 'consumed') : await this.#redis.mrrtAdapterFind(key, this.#reuseMs);
    if (json == null || json === 0) return undefined;
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
   * Marks the entry `id` consumed, atomically and keeping its TTL; exactly one call wins. An entry
   * that is already consumed or missing (never created) is refused with oidc-provider's
   * `InvalidGrant` (`InvalidRequestUri` for a PushedAuthorizationRequest), which it answers as a 400.
   * Only the consumable models listed on {@link RedisAdapter} support it; others throw.
   *
   * @example
   * ```ts
   * await new RedisAdapter('AuthorizationCode', redis).consume(jti);
   * ```
   */
  async consume(id: string): Promise<void> {
    if (!this.#consumable) throw new MrrtTypeError(`oidc-provider-mrrt: RedisAdapter cannot consume a ${this.#model}`);
    const outcome = await this.#redis.mrrtAdapterConsume(this.keyFor(id));
    if (outcome !== 1) throw refusal(this.#model, outcome === -1);
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
