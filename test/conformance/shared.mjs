// What the conformance runner (run-upstream.mjs), the preload it hands to upstream's suite
// (upstream-preload.mjs) and the Provider module the suite is given (mrrt-provider.mjs) agree on.

/** Where the preload and the Provider module share counters inside the upstream test process. */
export const STATS_KEY = Symbol.for('oidc-provider-mrrt.conformance');

/** Environment variables the runner sets for the upstream test process. */
export const ENV = {
  /** upstream's extracted release tree (absolute path) */
  upstream: 'MRRT_CONFORMANCE_UPSTREAM',
  /** 'plain' or 'mrrt' */
  mode: 'MRRT_CONFORMANCE_MODE',
  /** where the preload writes the run's per-test results (JSON) */
  results: 'MRRT_CONFORMANCE_RESULTS',
};

/**
 * The MRRT policy the extension is installed with: a client and an API that no upstream test
 * uses, so an upstream test can only observe the extension through its side effects on ordinary
 * oidc-provider behaviour, which is exactly what this run is meant to catch.
 */
export const POLICY_CLIENT = 'mrrt-conformance-client';
export const POLICY_API = 'https://mrrt-conformance.example/api';
export const POLICY_SCOPE = ['conformance:read'];

/**
 * `Class` behind a construct trap that counts constructions in the preload's counters. A trap
 * rather than a further subclass keeps the class the tests see exactly the given one (its
 * prototype, statics and name). A construction that throws counts as attempted only: many
 * configuration tests expect the constructor to throw.
 */
export function countConstructions(Class) {
  const stats = globalThis[STATS_KEY] ?? { constructions: { attempted: 0, built: 0 } };
  return new Proxy(Class, {
    construct(target, args, newTarget) {
      stats.constructions.attempted += 1;
      const instance = Reflect.construct(target, args, newTarget);
      stats.constructions.built += 1;
      return instance;
    },
  });
}
