import { PolicyStoreError, PolicyValidationError } from '../errors.js';
import { NO_LIMITS, parseWithin } from '../policy.js';
import type { PolicyRecord, PolicyStore } from '../store.js';
import { MemoryPolicyStore } from './memory.js';
import { RedisPolicyStore } from './redis.js';

/** What an exchange reads of a policy store: `get`, and `subscribe` when the store has it. */
export type PolicyReader = Pick<PolicyStore, 'get' | 'subscribe'>;

// the built-in stores' own `get` validates what it reads back and answers with a native promise
const VALIDATING_GETS: ReadonlySet<unknown> = new Set([MemoryPolicyStore.prototype.get, RedisPolicyStore.prototype.get]);

/**
 * The store as an exchange reads it (SPEC P4: data read back from a store is untrusted). A built-in
 * store whose `get` is its own is read as it is. Any other store's answer is settled as a promise,
 * whatever `get` returned, and checked: `undefined` or `null` is no policy; anything else must be
 * this client's record with a version and a valid policy, or the read fails as corrupt data
 * (`ERR_MRRT_STORE_CORRUPT`): the exchange fails closed and a granted target is still served, as
 * with corrupt data in a built-in store.
 */
export function policyReader(store: PolicyStore): PolicyReader {
  if (VALIDATING_GETS.has(store.get)) return store;
  const reader: PolicyReader = { get: async (clientId) => checkedRecord(await store.get(clientId), clientId) };
  return store.subscribe ? { ...reader, subscribe: (listener) => store.subscribe!(listener) } : reader;
}

function checkedRecord(answer: unknown, clientId: string): PolicyRecord | undefined {
  if (answer === undefined || answer === null) return undefined;
  const corrupt = (detail: string, cause?: unknown): PolicyStoreError =>
    new PolicyStoreError('ERR_MRRT_STORE_CORRUPT', `policy of client "${clientId}" is invalid: ${detail}`, { cause });
  if (typeof answer !== 'object') throw corrupt(`the store answered with a ${typeof answer}, not a policy record`);
  const { clientId: owner, policies, version } = answer as { readonly [K in keyof PolicyRecord]?: unknown };
  if (owner !== clientId) throw corrupt(`the store answered with the record of ${typeof owner === 'string' ? `client "${owner}"` : 'no client'}`);
  if (typeof version !== 'string' || version === '') throw corrupt('the record has no version');
  try {
    return Object.freeze({ clientId, policies: parseWithin(policies, NO_LIMITS), version });
  } catch (cause) {
    if (cause instanceof PolicyValidationError) throw corrupt(cause.message, cause);
    throw cause;
  }
}
