/** One problem found while validating a policy, located by its JSON path (for example `$[0].scope[1]`). */
export interface PolicyIssue {
  readonly path: string;
  readonly message: string;
}

/**
 * Thrown by {@link parsePolicies} (and by stores and the admin API on write) when a policy is invalid.
 * `issues` lists every problem found, not only the first.
 */
export class PolicyValidationError extends Error {
  readonly code = 'ERR_MRRT_POLICY_INVALID';
  readonly issues: readonly PolicyIssue[];

  constructor(issues: readonly PolicyIssue[]) {
    super(`invalid MRRT policy: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    this.name = 'PolicyValidationError';
    this.issues = issues;
  }
}

/** Thrown by a {@link PolicyStore} write whose `ifMatch` precondition does not hold. */
export class PolicyConflictError extends Error {
  readonly code = 'ERR_MRRT_POLICY_CONFLICT';
  /** The version currently stored, `undefined` when the client has no policy. */
  readonly currentVersion: string | undefined;

  constructor(clientId: string, currentVersion: string | undefined) {
    super(`MRRT policy of client "${clientId}" was changed concurrently (version precondition failed)`);
    this.name = 'PolicyConflictError';
    this.currentVersion = currentVersion;
  }
}

/**
 * Thrown by a {@link PolicyStore} operation when the store cannot answer or the stored data cannot be
 * trusted: the backend is unreachable (`ERR_MRRT_STORE_UNAVAILABLE`) or what it holds is not a valid policy
 * (`ERR_MRRT_STORE_CORRUPT`). The exchange fails closed on both.
 */
export class PolicyStoreError extends Error {
  readonly code: 'ERR_MRRT_STORE_UNAVAILABLE' | 'ERR_MRRT_STORE_CORRUPT';

  constructor(code: PolicyStoreError['code'], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PolicyStoreError';
    this.code = code;
  }
}
