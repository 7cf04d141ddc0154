import type { PolicyRecord, PolicyStore } from './store.js';

/** Settings of the in-process policy cache (`withMrrt` option `cache`). */
export interface PolicyCacheOptions {
  /** Longest time (ms) a cached answer is used, even if change announcements were lost. Default `30000`. */
  maxAge?: number;
  /** Most clients kept; the least recently used go first. Default `10000`. */
  maxEntries?: number;
}

interface Entry {
  readonly record: PolicyRecord | undefined;
  readonly at: number;
}

/**
 * Answers policy lookups from memory so that the exchange path makes no store round trip in steady
 * state. Positive and negative answers are kept for at most `maxAge`; a change announced by the
 * store (`subscribe`) drops the client's entry at once, a "may have missed changes" signal drops all.
 * Concurrent lookups of one client share one store call, and a lookup that was in flight when its
 * client changed is never cached.
 */
export class PolicyCache {
  readonly #store: PolicyStore;
  readonly #maxAge: number;
  readonly #maxEntries: number;
  readonly #entries = new Map<string, Entry>();
  readonly #inflight = new Map<string, Promise<PolicyRecord | undefined>>();
  readonly #unsubscribe: (() => void) | undefined;

  constructor(store: PolicyStore, { maxAge = 30_000, maxEntries = 10_000 }: PolicyCacheOptions = {}) {
    this.#store = store;
    this.#maxAge = maxAge;
    this.#maxEntries = maxEntries;
    this.#unsubscribe = store.subscribe?.((clientId) => this.invalidate(clientId));
  }

  get size(): number {
    return this.#entries.size;
  }

  /** A fresh cached answer, without waiting: `{ record }` on a hit, `undefined` on a miss. */
  peek(clientId: string): { readonly record: PolicyRecord | undefined } | undefined {
    const entry = this.#entries.get(clientId);
    return entry && performance.now() - entry.at < this.#maxAge ? entry : undefined;
  }

  async get(clientId: string): Promise<PolicyRecord | undefined> {
    const entry = this.#entries.get(clientId);
    if (entry && performance.now() - entry.at < this.#maxAge) {
      this.#entries.delete(clientId);
      this.#entries.set(clientId, entry);
      return entry.record;
    }
    const pending = this.#inflight.get(clientId);
    if (pending) return pending;

    const at = performance.now();
    const lookup: Promise<PolicyRecord | undefined> = this.#store.get(clientId).then((record) => {
      if (this.#inflight.get(clientId) === lookup) this.#remember(clientId, { record, at });
      return record;
    }).finally(() => {
      if (this.#inflight.get(clientId) === lookup) this.#inflight.delete(clientId);
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
    while (this.#entries.size > this.#maxEntries) {
      this.#entries.delete(this.#entries.keys().next().value!);
    }
  }
}
