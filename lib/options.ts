import type { KoaContextWithOIDC } from 'oidc-provider';

import { DEFAULTS } from './defaults.js';
import { isResourceIndicator, resolveLimits, type PolicyLimits } from './policy.js';
import type { PolicyCacheOptions } from './policy-cache.js';
import type { PolicyStore } from './store.js';
import { MrrtTypeError } from './errors.js';
import { fixedAnswers } from './rules.js';

/** The client as oidc-provider hands it to the extension (`ctx.oidc.client`). */
export type MrrtClient = NonNullable<KoaContextWithOIDC['oidc']['client']>;

/** Options of {@link withMrrt}. Everything but `store` is optional. */
export interface MrrtOptions {
  /** Where the per-client MRRT policies are read from. Required. */
  store: PolicyStore;
  /**
   * Whether a client is first-party; MRRT applies to first-party clients only. This is the
   * operator's statement alone (never taken from a registration request). Default: the client is
   * one of the provider's statically configured `clients` and has `first_party: true` there. Give a
   * function when clients live elsewhere (an adapter, a database).
   */
  isFirstParty?: (client: MrrtClient) => boolean | Promise<boolean>;
  /**
   * The APIs (resource indicators) that allow skipping user consent, as a list or a function.
   * Only those can be reached through an MRRT policy. Default: none, so MRRT stays off until an
   * operator opts an API in.
   */
  allowSkippingConsent?: readonly string[] | ((resource: string, client: MrrtClient) => boolean | Promise<boolean>);
  /** Audiences that can never be reached through MRRT, such as the policy administration API. Default `[]`. */
  denyList?: readonly string[];
  /** Size limits of one client's policy, enforced by `parsePolicies` and the admin API. */
  limits?: PolicyLimits;
  /** How long (ms) an exchange waits for the policy store before failing closed. Default `2000`. */
  storeTimeout?: number;
  /**
   * The in-process policy cache, or `false` to read the store on every exchange. Default
   * `{ maxAge: 30000, maxEntries: 10000 }`. With a store that announces changes (both built-in
   * stores do) a change applies at once on the writing instance and within the announcement
   * latency elsewhere; `maxAge` bounds staleness if announcements are lost.
   */
  cache?: PolicyCacheOptions | false;
  /**
   * MRRT for public clients (`token_endpoint_auth_method: none`). `'rotated-or-sender-constrained'`
   * (default) allows an exchange only when the refresh token is rotated by it or is DPoP / mTLS
   * bound (RFC 9700 §2.2.2); `'any'` allows it regardless.
   */
  publicClients?: 'rotated-or-sender-constrained' | 'any';
  /**
   * The wire semantics of an exchange's scope. `'strict'` (default): a requested scope outside the
   * refresh token and the policy entry is refused (`invalid_scope`), and the response `scope` equals
   * the access token's. `'auth0'`, for apps written with Auth0's SDKs: such scopes are dropped (a 200
   * with fewer scopes, unless no API scope remains), and the response `scope` also lists the
   * requested OpenID scopes the refresh token holds, as Auth0 answers.
   */
  profile?: 'strict' | 'auth0';
}

/** {@link MrrtOptions} resolved and validated: every value filled in. */
export interface MrrtConfiguration {
  readonly store: PolicyStore;
  /** The operator's function, or `undefined` for the default (static clients with `first_party: true`). */
  readonly isFirstParty: ((client: MrrtClient) => boolean | Promise<boolean>) | undefined;
  readonly allowSkippingConsent: (resource: string, client: MrrtClient) => boolean | Promise<boolean>;
  readonly denyList: ReadonlySet<string>;
  readonly limits: Readonly<Required<PolicyLimits>>;
  readonly storeTimeout: number;
  readonly cache: Readonly<Required<PolicyCacheOptions>> | false;
  readonly publicClients: 'rotated-or-sender-constrained' | 'any';
  readonly profile: 'strict' | 'auth0';
}

const KNOWN = new Set(['store', 'isFirstParty', 'allowSkippingConsent', 'denyList', 'limits', 'storeTimeout', 'cache', 'publicClients', 'profile']);

function present<T>(options: object, name: string): T | undefined {
  const value = (options as Record<string, unknown>)[name];
  if (value === null) throw new MrrtTypeError(`"${name}" option must not be null (leave it undefined for the default)`);
  return value as T | undefined;
}

function positiveInteger(value: unknown, name: string, max: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new MrrtTypeError(`"${name}" option must be an integer between 1 and ${max}`);
  }
  return value;
}

function resourceList(value: unknown, name: string): string[] {
  if (!Array.isArray(value)) throw new MrrtTypeError(`"${name}" option must be an array of absolute URIs`);
  value.forEach((entry: unknown, i) => {
    if (typeof entry !== 'string' || !isResourceIndicator(entry)) {
      throw new MrrtTypeError(`"${name}[${i}]" option must be an absolute URI without a fragment`);
    }
  });
  return value as string[];
}

/** Validates {@link MrrtOptions} once, at construction; every message names the offending option. */
export function resolveOptions(options: unknown): MrrtConfiguration {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new MrrtTypeError('MRRT options must be an object with at least a "store"');
  }
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) throw new MrrtTypeError(`"${key}" is not a recognized MRRT option`);
  }

  const store = present<PolicyStore>(options, 'store');
  if (store === undefined) throw new MrrtTypeError('"store" option is required (a MemoryPolicyStore or RedisPolicyStore)');
  if (typeof store !== 'object' || typeof store.get !== 'function') {
    throw new MrrtTypeError('"store" option must be a PolicyStore (an object with a get(clientId) method)');
  }

  const isFirstParty = present<MrrtOptions['isFirstParty']>(options, 'isFirstParty');
  if (isFirstParty !== undefined && typeof isFirstParty !== 'function') throw new MrrtTypeError('"isFirstParty" option must be a function');

  const skip = present<MrrtOptions['allowSkippingConsent']>(options, 'allowSkippingConsent');
  let allowSkippingConsent: MrrtConfiguration['allowSkippingConsent'];
  if (skip === undefined) allowSkippingConsent = fixedAnswers(() => false);
  else if (typeof skip === 'function') allowSkippingConsent = skip;
  else {
    const allowed = new Set(resourceList(skip, 'allowSkippingConsent'));
    allowSkippingConsent = fixedAnswers((resource: string) => allowed.has(resource));
  }

  const denyList = present<readonly string[]>(options, 'denyList');

  const limits = resolveLimits(present<PolicyLimits>(options, 'limits'));

  const timeout = present<number>(options, 'storeTimeout');

  const cacheOption = present<PolicyCacheOptions | false>(options, 'cache');
  let cache: MrrtConfiguration['cache'] = false;
  if (cacheOption !== false) {
    const given = cacheOption ?? {};
    if (typeof given !== 'object' || Array.isArray(given)) throw new MrrtTypeError('"cache" option must be an object or false');
    for (const key of Object.keys(given)) {
      if (key !== 'maxAge' && key !== 'maxEntries') throw new MrrtTypeError(`"cache.${key}" is not a recognized MRRT option`);
    }
    cache = Object.freeze({
      maxAge: given.maxAge === undefined ? DEFAULTS.cache.maxAge : positiveInteger(given.maxAge, 'cache.maxAge', 86_400_000),
      maxEntries: given.maxEntries === undefined ? DEFAULTS.cache.maxEntries : positiveInteger(given.maxEntries, 'cache.maxEntries', 10_000_000),
    });
  }

  return Object.freeze({
    store,
    isFirstParty,
    allowSkippingConsent,
    denyList: new Set(denyList === undefined ? [] : resourceList(denyList, 'denyList')),
    limits,
    storeTimeout: timeout === undefined ? DEFAULTS.storeTimeout : positiveInteger(timeout, 'storeTimeout', 60_000),
    cache,
    publicClients: resolvePublicClients(present(options, 'publicClients')),
    profile: resolveProfile(present(options, 'profile')),
  });
}

function resolvePublicClients(value: unknown): MrrtConfiguration['publicClients'] {
  if (value === undefined) return DEFAULTS.publicClients;
  if (value !== 'rotated-or-sender-constrained' && value !== 'any') {
    throw new MrrtTypeError('"publicClients" option must be "rotated-or-sender-constrained" or "any"');
  }
  return value;
}

function resolveProfile(value: unknown): MrrtConfiguration['profile'] {
  if (value === undefined) return DEFAULTS.profile;
  if (value !== 'strict' && value !== 'auth0') throw new MrrtTypeError('"profile" option must be "strict" or "auth0"');
  return value;
}

declare module 'oidc-provider' {
  interface Configuration {
    /**
     * MRRT options for a provider built with `withMrrt`, in its configuration (per instance); they
     * override the options given to `withMrrt`, if any. oidc-provider never sees this key.
     */
    mrrt?: MrrtOptions;
  }
}
