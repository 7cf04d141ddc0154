import { randomBytes } from 'node:crypto';

import { PolicyConflictError } from '../errors.js';
import { NO_LIMITS, parseWithin, type Policy } from '../policy.js';
import {
  ChangeNotifier,
  assertClientId,
  assertWriteOptions,
  compareClientIds,
  resolveListOptions,
  type ChangeListener,
  type ListOptions,
  type PolicyPage,
  type PolicyRecord,
  type PolicyStore,
  type WriteOptions,
  validatedRecord,
} from '../store.js';

export const newVersion = (): string => randomBytes(9).toString('base64url');

/**
 * A {@link PolicyStore} in process memory: the embedded default for a single instance, demos and
 * tests. Policies are lost on restart and not shared between processes.
 */
export class MemoryPolicyStore implements PolicyStore {
  readonly #records = new Map<string, PolicyRecord>();
  readonly #changes = new ChangeNotifier();

  subscribe(listener: ChangeListener): () => void {
    return this.#changes.add(listener);
  }

  async close(): Promise<void> {}

  async get(clientId: string): Promise<PolicyRecord | undefined> {
    assertClientId(clientId);
    return this.#records.get(clientId);
  }

  async set(clientId: string, policies: Policy, options: WriteOptions = {}): Promise<PolicyRecord> {
    assertClientId(clientId);
    assertWriteOptions(options);
    const parsed = parseWithin(policies, NO_LIMITS);
    this.#check(clientId, options);
    const record = validatedRecord(clientId, parsed, newVersion());
    this.#records.set(clientId, record);
    this.#changes.notify(clientId);
    return record;
  }

  async delete(clientId: string, options: WriteOptions = {}): Promise<boolean> {
    assertClientId(clientId);
    assertWriteOptions(options);
    this.#check(clientId, options);
    const deleted = this.#records.delete(clientId);
    if (deleted) this.#changes.notify(clientId);
    return deleted;
  }

  async list(options?: ListOptions): Promise<PolicyPage> {
    const { after, limit } = resolveListOptions(options);
    const ids = [...this.#records.keys()].filter((id) => after === undefined || compareClientIds(id, after) > 0).sort(compareClientIds);
    const clientIds = ids.slice(0, limit);
    return ids.length > limit ? { clientIds, next: clientIds.at(-1)! } : { clientIds };
  }

  #check(clientId: string, { ifMatch }: WriteOptions): void {
    if (ifMatch === undefined) return;
    const current = this.#records.get(clientId)?.version;
    if (ifMatch === null ? current !== undefined : current !== ifMatch) throw new PolicyConflictError(clientId, current);
  }
}
