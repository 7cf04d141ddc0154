/** One problem found while validating a policy, located by its JSON path (for example `$[0].scope[1]`). */
export interface PolicyIssue {
  readonly path: string;
  readonly message: string;
}

/**
 * The base of every error the package throws at run time. `code` is stable: match on it (or on the
 * class), never on the message.
 */
export class MrrtError extends Error {
  /** A stable identifier of the kind of error. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * Thrown by {@link parsePolicies} (and by stores and the admin API on write) when a policy is invalid.
 * `issues` lists every problem found, not only the first (past 100: the first 100, then a note that
 * there may be more).
 */
export class PolicyValidationError extends MrrtError {
  static readonly code = 'ERR_MRRT_POLICY_INVALID';
  declare readonly code: typeof PolicyValidationError.code;
  readonly issues: readonly PolicyIssue[];

  constructor(issues: readonly PolicyIssue[]) {
    super(PolicyValidationError.code, `invalid MRRT policy: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    this.issues = issues;
  }
}

/** Thrown by a {@link PolicyStore} write whose `ifMatch` precondition does not hold. */
export class PolicyConflictError extends MrrtError {
  static readonly code = 'ERR_MRRT_POLICY_CONFLICT';
  declare readonly code: typeof PolicyConflictError.code;
  /** The version currently stored, `undefined` when the client has no policy. */
  readonly currentVersion: string | undefined;

  constructor(clientId: string, currentVersion: string | undefined) {
    super(PolicyConflictError.code, `MRRT policy of client "${clientId}" was changed concurrently (version precondition failed)`);
    this.currentVersion = currentVersion;
  }
}

/**
 * Thrown by a {@link PolicyStore} operation when the store cannot answer or the stored data cannot be
 * trusted: the backend is unreachable (`ERR_MRRT_STORE_UNAVAILABLE`) or what it holds is not a valid policy
 * (`ERR_MRRT_STORE_CORRUPT`). The exchange fails closed on both.
 */
export class PolicyStoreError extends MrrtError {
  declare readonly code: 'ERR_MRRT_STORE_UNAVAILABLE' | 'ERR_MRRT_STORE_CORRUPT';

  constructor(code: PolicyStoreError['code'], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/**
 * A developer mistake found at start-up or at a call (a bad option or argument, an unsupported
 * oidc-provider): a `TypeError`, as jose and oidc-provider throw them, with a stable `code` too.
 */
export class MrrtTypeError extends TypeError {
  static readonly code = 'ERR_MRRT_INVALID_ARGUMENT';
  readonly code = MrrtTypeError.code;

  constructor(message: string) {
    super(message);
    this.name = 'TypeError';
  }
}
