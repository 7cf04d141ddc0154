import type { Adapter, AdapterPayload } from 'oidc-provider';

interface Entry {
  payload: AdapterPayload;
  expiresAt: number;
}

const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest', 'PreAuthorizedCode']);
const SWEEP_EVERY = 1000;

/** The shared in-process storage behind {@link MemoryAdapter}; one per provider is typical. */
export class MemoryStorage {
  readonly entries = new Map<string, Entry>();
  readonly grants = new Map<string, Set<string>>();
  readonly lookups = new Map<string, string>();
  #writes = 0;

  read(key: string): Entry | undefined {
    const entry = this.entries.get(key);
    if (entry && entry.expiresAt <= Date.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  sweep(): void {
    if (++this.#writes % SWEEP_EVERY !== 0) return;
    const now = Date.now();
    for (const [key, entry] of this.entries) if (entry.expiresAt <= now) this.entries.delete(key);
    for (const [grantId, keys] of this.grants) {
      for (const key of keys) if (!this.entries.has(key)) keys.delete(key);
      if (keys.size === 0) this.grants.delete(grantId);
    }
    for (const [lookup, key] of this.lookups) if (!this.entries.has(key)) this.lookups.delete(lookup);
  }
}

const defaultStorage = new MemoryStorage();

/**
 * An oidc-provider adapter that keeps everything in process memory, with TTLs, an index by grant
 * for `revokeByGrantId` and copies on every read and write. It is the embedded default of
 * {@link withMrrt} when the configuration names no adapter: fine for tests, demos and a single
 * process; data is lost on restart. Use `RedisAdapter` (or your own) in production.
 */
export class MemoryAdapter implements Adapter {
  readonly #model: string;
  readonly #storage: MemoryStorage;

  constructor(model: string, storage: MemoryStorage = defaultStorage) {
    this.#model = model;
    this.#storage = storage;
  }

  #key(id: string): string {
    return `${this.#model}:${id}`;
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    const key = this.#key(id);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    this.#storage.entries.set(key, { payload: structuredClone(payload), expiresAt });
    if (GRANTABLE.has(this.#model) && typeof payload.grantId === 'string') {
      let keys = this.#storage.grants.get(payload.grantId);
      if (!keys) this.#storage.grants.set(payload.grantId, (keys = new Set()));
      keys.add(key);
    }
    if (typeof payload.uid === 'string') this.#storage.lookups.set(`uid:${this.#model}:${payload.uid}`, key);
    if (typeof payload.userCode === 'string') this.#storage.lookups.set(`userCode:${this.#model}:${payload.userCode}`, key);
    this.#storage.sweep();
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    const entry = this.#storage.read(this.#key(id));
    return entry ? structuredClone(entry.payload) : undefined;
  }

  async findByUid(uid: string): Promise<AdapterPayload | undefined> {
    return this.#findBy(`uid:${this.#model}:${uid}`);
  }

  async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
    return this.#findBy(`userCode:${this.#model}:${userCode}`);
  }

  async #findBy(lookup: string): Promise<AdapterPayload | undefined> {
    const key = this.#storage.lookups.get(lookup);
    const entry = key === undefined ? undefined : this.#storage.read(key);
    return entry ? structuredClone(entry.payload) : undefined;
  }

  async consume(id: string): Promise<void> {
    const entry = this.#storage.read(this.#key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id: string): Promise<void> {
    this.#storage.entries.delete(this.#key(id));
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    const keys = this.#storage.grants.get(grantId);
    if (!keys) return;
    for (const key of keys) this.#storage.entries.delete(key);
    this.#storage.grants.delete(grantId);
  }
}
