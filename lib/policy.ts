import { DEFAULTS } from './defaults.js';
import { MrrtTypeError, PolicyValidationError, type PolicyIssue } from './errors.js';

/** One entry of a client's MRRT policy: an API (resource server) and the scopes the client may get for it. */
export interface PolicyEntry {
  readonly audience: string;
  readonly scope: readonly string[];
}

/** A client's MRRT policy, the Auth0 `refresh_token.policies` shape. Never empty. */
export type Policy = readonly PolicyEntry[];

/** Size limits applied by {@link parsePolicies}. */
export interface PolicyLimits {
  /** Most entries (audiences) in one policy. Default `50`. */
  maxEntries?: number;
  /** Most scopes in one entry. Default `100`. */
  maxScopesPerEntry?: number;
}

/** The limits used when none are given (`withMrrt` option `limits`). */
export const DEFAULT_LIMITS: Readonly<Required<PolicyLimits>> = DEFAULTS.limits;

/** No limit: for data read back from a store, whose size was checked when it was written. */
export const NO_LIMITS: Readonly<Required<PolicyLimits>> = Object.freeze({ maxEntries: Infinity, maxScopesPerEntry: Infinity });

const MAX_LIMIT = 1000;

/** The largest policy any configuration's limits allow: what a store of the deployment's own may answer. */
export const STORED_LIMITS: Readonly<Required<PolicyLimits>> = Object.freeze({ maxEntries: MAX_LIMIT, maxScopesPerEntry: MAX_LIMIT });

/**
 * Validates {@link PolicyLimits} (the `withMrrt` option and `parsePolicies`' argument alike): an
 * object with only the known keys, each an integer from 1 to 1000 or undefined for its default.
 */
export function resolveLimits(limits: unknown): Readonly<Required<PolicyLimits>> {
  if (limits === undefined) return DEFAULT_LIMITS;
  if (typeof limits !== 'object' || limits === null || Array.isArray(limits)) throw new MrrtTypeError('"limits" option must be an object');
  for (const key of Object.keys(limits)) {
    // own keys only: `in` would also accept inherited names such as "constructor" or "toString"
    if (!Object.hasOwn(DEFAULT_LIMITS, key)) throw new MrrtTypeError(`"limits.${key}" is not a recognized MRRT option`);
  }
  const resolve = (name: keyof PolicyLimits): number => {
    const value = (limits as PolicyLimits)[name];
    if (value === undefined) return DEFAULT_LIMITS[name];
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > MAX_LIMIT) {
      throw new MrrtTypeError(`"limits.${name}" option must be an integer between 1 and ${MAX_LIMIT}`);
    }
    return value;
  };
  return Object.freeze({ maxEntries: resolve('maxEntries'), maxScopesPerEntry: resolve('maxScopesPerEntry') });
}

/** The most problems one validation reports. */
const MAX_ISSUES = 100;
const MAX_AUDIENCE_LENGTH = 600;
const MAX_SCOPE_LENGTH = 280;
// RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/;
// an absolute URI in ASCII without spaces, controls or a fragment (RFC 8707 §2)
const URI_CHARS = /^[\x21-\x7E]+$/;
const SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*:/;

/** Whether `value` is an absolute URI without a fragment, usable as a resource indicator. */
export function isResourceIndicator(value: string): boolean {
  return value.length > 0 && value.length <= MAX_AUDIENCE_LENGTH && URI_CHARS.test(value) && SCHEME.test(value) && !value.includes('#') && URL.canParse(value);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

const describe = (value: unknown): string => (value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value);

/**
 * Validates untrusted input (a request body, data read back from a store) as a {@link Policy}.
 *
 * Returns a new, deeply frozen policy or throws a {@link PolicyValidationError} listing every
 * problem with its JSON path. Only the structure is checked here (SPEC P1, P2); whether the
 * client and audiences exist is checked by the admin API and again at every exchange.
 *
 * @example
 * ```ts
 * const policy = parsePolicies([{ audience: 'https://billing.example.com', scope: ['read:invoices'] }]);
 * ```
 */
export function parsePolicies(input: unknown, limits?: PolicyLimits): Policy {
  return parseWithin(input, resolveLimits(limits));
}

/** {@link parsePolicies} with limits already resolved (stores re-read their data with {@link NO_LIMITS}). */
export function parseWithin(input: unknown, { maxEntries, maxScopesPerEntry }: Readonly<Required<PolicyLimits>>): Policy {
  const issues: PolicyIssue[] = [];
  const fail = (path: string, message: string): void => {
    issues.push({ path, message });
    // the first problems say what is wrong; collecting every one of a huge array's would stall the
    // process (a store's answer is read on the exchange path) and build an error of any size
    if (issues.length === MAX_ISSUES) {
      issues.push({ path: '$', message: `and possibly more problems (the first ${MAX_ISSUES} are listed)` });
      throw new PolicyValidationError(issues);
    }
  };

  if (!Array.isArray(input)) {
    throw new PolicyValidationError([{ path: '$', message: `must be an array of { audience, scope } entries, got ${describe(input)}` }]);
  }
  if (input.length === 0) fail('$', 'must contain at least one entry (delete the policy to turn MRRT off for the client)');
  if (input.length > maxEntries) fail('$', `must contain at most ${maxEntries} entries, got ${input.length}`);

  const seen = new Set<string>();
  const entries: PolicyEntry[] = [];
  // index loops, not forEach: a hole in a sparse array must be reported, not skipped. Items past the
  // largest limit any configuration allows are not checked one by one (the array is refused for its
  // length already), so that a huge or sparse array read from a store costs no more than that
  for (let i = 0; i < Math.min(input.length, Math.max(maxEntries, MAX_LIMIT)); i += 1) {
    const entry: unknown = input[i];
    const at = `$[${i}]`;
    if (!isPlainObject(entry)) {
      fail(at, `must be an object with "audience" and "scope", got ${describe(entry)}`);
      continue;
    }
    for (const key of Object.keys(entry)) {
      if (key !== 'audience' && key !== 'scope') fail(`${at}${pathKey(key)}`, 'is not an allowed property (only "audience" and "scope")');
    }

    const { audience, scope } = entry;
    let audienceOk = false;
    if (typeof audience !== 'string') {
      fail(`${at}.audience`, `must be a string, got ${audience === undefined ? 'nothing' : describe(audience)}`);
    } else if (audience.length === 0 || audience.length > MAX_AUDIENCE_LENGTH) {
      fail(`${at}.audience`, `must be 1 to ${MAX_AUDIENCE_LENGTH} characters long, got ${audience.length}`);
    } else if (!isResourceIndicator(audience)) {
      fail(`${at}.audience`, 'must be an absolute URI without a fragment, spaces or control characters');
    } else if (seen.has(audience)) {
      fail(`${at}.audience`, `duplicates the entry for "${audience}" (at most one entry per audience)`);
    } else {
      seen.add(audience);
      audienceOk = true;
    }

    const scopes: string[] = [];
    if (!Array.isArray(scope)) {
      fail(`${at}.scope`, `must be an array of scope strings, got ${scope === undefined ? 'nothing' : describe(scope)}`);
    } else {
      if (scope.length === 0) fail(`${at}.scope`, 'must contain at least one scope');
      if (scope.length > maxScopesPerEntry) fail(`${at}.scope`, `must contain at most ${maxScopesPerEntry} scopes, got ${scope.length}`);
      const seenScopes = new Set<string>();
      for (let j = 0; j < Math.min(scope.length, Math.max(maxScopesPerEntry, MAX_LIMIT)); j += 1) {
        const value: unknown = scope[j];
        const sat = `${at}.scope[${j}]`;
        if (typeof value !== 'string') fail(sat, `must be a string, got ${describe(value)}`);
        else if (value.length === 0 || value.length > MAX_SCOPE_LENGTH) fail(sat, `must be 1 to ${MAX_SCOPE_LENGTH} characters long, got ${value.length}`);
        else if (!SCOPE_TOKEN.test(value)) fail(sat, 'must be a scope token (no spaces, quotes, backslashes or control characters)');
        else if (seenScopes.has(value)) fail(sat, `duplicates scope "${value}"`);
        else {
          seenScopes.add(value);
          scopes.push(value);
        }
      }
    }
    if (audienceOk && typeof audience === 'string') entries.push(Object.freeze({ audience, scope: Object.freeze(scopes) }));
  }

  if (issues.length !== 0) throw new PolicyValidationError(issues);
  return Object.freeze(entries);
}

// `__proto__` is always bracketed: `$[0].__proto__` reads like the prototype, not an own "__proto__" key
function pathKey(key: string): string {
  return key !== '__proto__' && /^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`;
}
