/**
 * Every default of the package, once. Options documented in `options.ts` (and the admin API's in
 * `admin-router.ts`) resolve to these when left undefined.
 */

/** Defaults of `withMrrt`'s options. */
export const DEFAULTS = Object.freeze({
  /** How long (ms) an exchange waits for the policy store, `isFirstParty` or `allowSkippingConsent`. */
  storeTimeout: 2000,
  /** The in-process policy cache: longest use of an answer (ms) and most clients kept. */
  cache: Object.freeze({ maxAge: 30_000, maxEntries: 10_000 }),
  /** Size limits of one client's policy. */
  limits: Object.freeze({ maxEntries: 50, maxScopesPerEntry: 100 }),
  publicClients: 'rotated-or-sender-constrained',
  profile: 'strict',
} as const);

/** Defaults of the admin API and of `PolicyStore.list`. */
export const ADMIN_DEFAULTS = Object.freeze({
  /** Client ids per page when `limit` is not given. */
  pageSize: 100,
  /** The largest `limit` a page may ask for. */
  maxPageSize: 1000,
  /** Largest accepted request body, as for `express.json`. */
  bodyLimit: '32kb',
} as const);
