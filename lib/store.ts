import type { Policy } from './policy.js';

/** A client's stored policy and its version (an opaque string that changes on every write). */
export interface PolicyRecord {
  readonly clientId: string;
  readonly policies: Policy;
  readonly version: string;
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
}

/** Checks shared by the stores: a client id is a non-empty string of at most 1024 characters. */
export function assertClientId(clientId: unknown): asserts clientId is string {
  if (typeof clientId !== 'string' || clientId.length === 0 || clientId.length > 1024) {
    throw new TypeError('"clientId" must be a non-empty string of at most 1024 characters');
  }
}

export function resolveListOptions(options: ListOptions = {}): { after: string | undefined; limit: number } {
  const { after, limit = 100 } = options;
  if (after !== undefined && typeof after !== 'string') throw new TypeError('"after" option must be a string');
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > 1000) throw new TypeError('"limit" option must be an integer between 1 and 1000');
  return { after, limit };
}

export function assertWriteOptions(options: WriteOptions): void {
  const { ifMatch } = options;
  if (ifMatch !== undefined && ifMatch !== null && typeof ifMatch !== 'string') {
    throw new TypeError('"ifMatch" option must be a string, null or undefined');
  }
}
