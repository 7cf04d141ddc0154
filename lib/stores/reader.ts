import { PolicyStoreError, PolicyValidationError } from '../errors.js';
import { STORED_LIMITS, parseWithin } from '../policy.js';
import { isValidatedRecord, type PolicyRecord, type PolicyStore } from '../store.js';

/** What an exchange reads of a policy store: `get`, and `subscribe` when the store has it. */
export type PolicyReader = Pick<PolicyStore, 'get' | 'subscribe'>;

/**
 * The store as an exchange reads it (SPEC P4: data read back from a store is untrusted). Whatever
 * the store's `get` is at the time of the read, its answer is settled as a promise and checked:
 * `undefined` or `null` is no policy; anything else must be this client's record with a version and
 * a valid policy no larger than any configuration allows, or the read fails as corrupt data
 * (`ERR_MRRT_STORE_CORRUPT`): the exchange fails closed and a granted target is still served, as
 * with corrupt data in a built-in store. A record a built-in store built from a validated policy
 * is not parsed again.
 */
export function policyReader(store: PolicyStore): PolicyReader {
  const reader: PolicyReader = { get: async (clientId) => checkedRecord(await store.get(clientId), clientId) };
  return store.subscribe ? { ...reader, subscribe: (listener) => store.subscribe!(listener) } : reader;
}

function checkedRecord(answer: unknown, clientId: string): PolicyRecord | undefined {
  if (answer === undefined || answer === null) return undefined;
  const corrupt = (detail: string, cause?: unknown): PolicyStoreError =>
    new PolicyStoreError('ERR_MRRT_STORE_CORRUPT', `policy of client "${clientId}" is invalid: ${detail}`, { cause });
  if (typeof answer !== 'object') throw corrupt(`the store answered with a ${typeof answer}, not a policy record`);
  if (isValidatedRecord(answer)) {
    if (answer.clientId !== clientId) throw corrupt(`the store answered with the record of client "${answer.clientId}"`);
    return answer;
  }
  try {
    const { clientId: owner, policies, version } = answer as { readonly [K in keyof PolicyRecord]?: unknown };
    if (owner !== clientId) throw corrupt(`the store answered with the record of ${typeof owner === 'string' ? `client "${owner}"` : 'no client'}`);
    if (typeof version !== 'string' || version === '') throw corrupt('the record has no version');
    return Object.freeze({ clientId, policies: parseWithin(policies, STORED_LIMITS), version });
  } catch (cause) {
    if (cause instanceof PolicyStoreError) throw cause;
    // a record whose properties cannot be read (a throwing getter) is as unusable as a malformed one
    throw corrupt(cause instanceof PolicyValidationError ? cause.message : 'the record could not be read', cause);
  }
}
