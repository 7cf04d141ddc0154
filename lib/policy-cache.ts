import { DEFAULTS } from './defaults.js';
import { PolicyStoreError } from './errors.js';
import type { PolicyRecord } from './store.js';
import type { PolicyReader } from './stores/reader.js';

/** Settings of the in-process policy cache (`withMrrt` option `cache`). */
export interface PolicyCacheOptions {
  /** Longest time (ms) a cached answer is used, even if change announcements were lost. Default `30000`. */
  maxAge?: number;
  /** Most clients kept; the least recently used go first. Default `10000`. */
  maxEntries?: number;
}

/** {@link PolicyCacheOptions} plus what the extension sets itself rather than the operator. */
export interface PolicyCacheSettings extends PolicyCacheOptions {
  /**
   * Longest time (ms) one store read is waited for and shared by concurrent lookups. After it the
   * read's lookups reject with `ERR_MRRT_STORE_UNAVAILABLE` and the next lookup asks the store again;
   * set it to the caller's own store timeout. Default `2000`, the default `storeTimeout`.
   */
  readTimeout?: number;
}

interface Entry {
  readonly record: PolicyRecord | undefined;
  readonly at: number;
}

/**
 * Answers policy lookups from memory so that the exchange path makes no store round trip in steady
 * state. Positive and negative answers are kept for at most `maxAge`; a change announced by the
 * store (`subscribe`) drops the client's entry at once, a "may have missed changes" signal drops all.
 * Concurrent lookups of one client share one store call for at most `readTimeout`, and a lookup
 * that was in flight when its client changed, or that was given up, is never cached. Hits through
 * `peek` and `get` both count as uses for the least-recently-used eviction.
 */
export class PolicyCache {
  readonly #store: PolicyReader;
  readonly #maxAge: number;
  readonly #maxEntries: number;
  readonly #readTimeout: number;
  readonly #entries = new Map<string, Entry>();
  readonly #inflight = new Map<string, Promise<PolicyRecord | undefined>>();
  readonly #unsubscribe: (() => void) | undefined;
  /** The key inserted last into `#entries` (stale once deleted), so that repeated hits on one client move nothing. */
  #newest: string | undefined;

  constructor(
    store: PolicyReader,
    { maxAge = DEFAULTS.cache.maxAge, maxEntries = DEFAULTS.cache.maxEntries, readTimeout = DEFAULTS.storeTimeout }: PolicyCacheSettings = {},
  ) {
    this.#store = store;
    this.#maxAge = maxAge;
    this.#maxEntries = maxEntries;
    this.#readTimeout = readTimeout;
    this.#unsubscribe = store.subscribe?.((clientId) => this.invalidate(clientId));
  }

  get size(): number {
    return this.#entries.size;
  }

  /**
   * A fresh cached answer, without waiting: `{ record }` on a hit, `undefined` on a miss. The hit
   * becomes the most recently used.
   */
  peek(clientId: string): { readonly record: PolicyRecord | undefined } | undefined {
    const entry = this.#entries.get(clientId);
    if (!entry || performance.now() - entry.at >= this.#maxAge) return undefined;
    // a Map iterates in insertion order, so re-inserting is the O(1) move to the young end;
    // skipped when the client is already there, the usual case of one busy client
    if (clientId !== this.#newest) {
      this.#entries.delete(clientId);
      this.#entries.set(clientId, entry);
      this.#newest = clientId;
    }
    return entry;
  }

  /**
   * The client's policy, from memory or from the store. Rejects with `ERR_MRRT_STORE_UNAVAILABLE`
   * when the store read has not answered within `readTimeout`, and with whatever the store rejects with.
   */
  async get(clientId: string): Promise<PolicyRecord | undefined> {
    const entry = this.peek(clientId);
    if (entry) return entry.record;
    const pending = this.#inflight.get(clientId);
    if (pending) return pending;

    const at = performance.now();
    const read = this.#store.get(clientId);
    // one timer per store read, not per lookup; unref'd so that a hung store never keeps the process alive
    let timer: NodeJS.Timeout | undefined;
    const lookup = new Promise<PolicyRecord | undefined>((resolve, reject) => {
      timer = setTimeout(() => {
        // a read that never settles must not be handed to every later lookup of the client
        if (this.#inflight.get(clientId) === lookup) this.#inflight.delete(clientId);
        reject(new PolicyStoreError('ERR_MRRT_STORE_UNAVAILABLE', `policy store did not answer within ${this.#readTimeout}ms`));
      }, this.#readTimeout);
      timer.unref();
      read.then(
        (record) => {
          clearTimeout(timer);
          // only the read still in charge may be remembered: one that was superseded by an invalidation
          // or given up may be older than what a later read has already cached
          if (this.#inflight.get(clientId) === lookup) {
            this.#inflight.delete(clientId);
            this.#remember(clientId, { record, at });
          }
          resolve(record);
        },
        (err: unknown) => {
          clearTimeout(timer);
          if (this.#inflight.get(clientId) === lookup) this.#inflight.delete(clientId);
          reject(err);
        },
      );
    });
    this.#inflight.set(clientId, lookup);
    return lookup;
  }

  /** Drops one client's entry, or everything when `clientId` is `undefined`. */
  invalidate(clientId: string | undefined): void {
    if (clientId === undefined) {
      this.#entries.clear();
      this.#inflight.clear();
    } else {
      this.#entries.delete(clientId);
      this.#inflight.delete(clientId);
    }
  }

  /** Stops listening to the store. */
  close(): void {
    this.#unsubscribe?.();
    this.invalidate(undefined);
  }

  #remember(clientId: string, entry: Entry): void {
    this.#entries.delete(clientId);
    this.#entries.set(clientId, entry);
    this.#newest = clientId;
    while (this.#entries.size > this.#maxEntries) {
      this.#entries.delete(this.#entries.keys().next().value!);
    }
  }
}
