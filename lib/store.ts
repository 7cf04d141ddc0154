import { ADMIN_DEFAULTS } from './defaults.js';
import type { Policy } from './policy.js';
import { MrrtTypeError } from './errors.js';

/** A client's stored policy and its version (an opaque string that changes on every write). */
export interface PolicyRecord {
  readonly clientId: string;
  readonly policies: Policy;
  readonly version: string;
}

// records a built-in store built itself from a policy parseWithin returned (deeply frozen)
const validated = new WeakSet<PolicyRecord>();

/** A built-in store's record, built from a validated policy and frozen: an exchange reads it without parsing it again. */
export function validatedRecord(clientId: string, policies: Policy, version: string): PolicyRecord {
  const record = Object.freeze({ clientId, policies, version });
  validated.add(record);
  return record;
}

/** Whether `value` is a record {@link validatedRecord} built. */
export function isValidatedRecord(value: unknown): value is PolicyRecord {
  return typeof value === 'object' && value !== null && validated.has(value as PolicyRecord);
}

/** Write preconditions for optimistic concurrency. */
export interface WriteOptions {
  /**
   * `undefined`: write unconditionally. `null`: only when the client has no policy yet.
   * A string: only when the stored version equals it. A failed precondition throws
   * {@link PolicyConflictError} and writes nothing.
   */
  ifMatch?: string | null;
}

/** One page of client ids that have a policy, in lexicographic order. */
export interface PolicyPage {
  readonly clientIds: readonly string[];
  /** Pass as `after` to read the next page; absent on the last page. */
  readonly next?: string;
}

/** Options for {@link PolicyStore.list}. */
export interface ListOptions {
  /** Return client ids strictly after this one. */
  after?: string;
  /** Page size, 1–1000. Default `100`. */
  limit?: number;
}

/**
 * Where MRRT policies live. The extension only calls `get`; the admin API uses the rest.
 * Implementations validate what they read back with `parsePolicies` and throw
 * {@link PolicyStoreError} when they cannot answer or hold invalid data.
 */
export interface PolicyStore {
  get(clientId: string): Promise<PolicyRecord | undefined>;
  set(clientId: string, policies: Policy, options?: WriteOptions): Promise<PolicyRecord>;
  /** Resolves `true` when a policy was deleted, `false` when there was none. */
  delete(clientId: string, options?: WriteOptions): Promise<boolean>;
  list(options?: ListOptions): Promise<PolicyPage>;
  /**
   * Optional. Calls `listener` with a client id whenever that client's policy changes (on this
   * instance immediately, on others as soon as the change is announced), or with `undefined` when
   * changes may have been missed (a subscriber reconnected). Returns the unsubscribe function.
   * The extension's policy cache relies on it; without it, staleness is bounded by the cache's max age.
   */
  subscribe?(listener: ChangeListener): () => void;
  /** Optional. Releases what the store opened itself (such as a subscriber connection). */
  close?(): Promise<void>;
}

/** Receives a changed client id, or `undefined` for "anything may have changed". */
export type ChangeListener = (clientId: string | undefined) => void;

/** The listener registry shared by the stores; a throwing listener never breaks a write. */
export class ChangeNotifier {
  readonly #listeners = new Set<ChangeListener>();

  get size(): number {
    return this.#listeners.size;
  }

  add(listener: ChangeListener): () => void {
    if (typeof listener !== 'function') throw new MrrtTypeError('"listener" must be a function');
    const entry: ChangeListener = (clientId) => listener(clientId);
    this.#listeners.add(entry);
    return () => {
      this.#listeners.delete(entry);
    };
  }

  notify(clientId: string | undefined): void {
    for (const listener of this.#listeners) {
      try {
        listener(clientId);
      } catch {
        // a listener's failure is its own; the change has happened
      }
    }
  }
}

// a UTF-16 surrogate that is not part of a pair (with the `u` flag a pair is one code point and does not match)
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/**
 * Checks shared by the stores: a client id is a non-empty, well-formed (no lone surrogates) string
 * of at most 1024 characters. Lone surrogates are refused because they have no UTF-8 form: Redis
 * would store them as U+FFFD, so two different ids would share one policy.
 */
export function assertClientId(clientId: unknown): asserts clientId is string {
  if (typeof clientId !== 'string' || clientId.length === 0 || clientId.length > 1024 || LONE_SURROGATE.test(clientId)) {
    throw new MrrtTypeError('"clientId" must be a non-empty, well-formed string of at most 1024 characters');
  }
}

/**
 * Orders client ids as {@link PolicyStore.list} does: by Unicode code point, which is the byte order
 * of their UTF-8 form (Redis' lexicographic order), not JavaScript's UTF-16 code unit order.
 */
export function compareClientIds(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

export function resolveListOptions(options: ListOptions = {}): { after: string | undefined; limit: number } {
  const { after, limit = ADMIN_DEFAULTS.pageSize } = options;
  if (after !== undefined && typeof after !== 'string') throw new MrrtTypeError('"after" option must be a string');
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > ADMIN_DEFAULTS.maxPageSize) {
    throw new MrrtTypeError(`"limit" option must be an integer between 1 and ${ADMIN_DEFAULTS.maxPageSize}`);
  }
  return { after, limit };
}

export function assertWriteOptions(options: WriteOptions): void {
  const { ifMatch } = options;
  if (ifMatch !== undefined && ifMatch !== null && typeof ifMatch !== 'string') {
    throw new MrrtTypeError('"ifMatch" option must be a string, null or undefined');
  }
}

/** One change made through the admin API, given to `onAudit` and emitted as `mrrt.policy_changed` on the provider. */
export interface PolicyAuditEvent {
  readonly action: 'put' | 'delete';
  readonly clientId: string;
  readonly actor: string | undefined;
  readonly previousVersion: string | undefined;
  readonly version: string | undefined;
  readonly policies: Policy | undefined;
  readonly at: string;
}
