import { describe, test, expect } from '@jest/globals';
import Provider from 'oidc-provider';

import { DEFAULT_LIMITS, MemoryPolicyStore, mrrtConfiguration, withMrrt, type MrrtClient, type MrrtConfiguration, type MrrtOptions } from '../lib/index.js';

const ISSUER = 'https://op.example.com';
const store = new MemoryPolicyStore();

/** Expects `withMrrt(Provider, options)` to throw a TypeError whose message contains `name` in quotes. */
function expectOptionError(options: unknown, name: string): void {
  let thrown: unknown;
  try {
    withMrrt(Provider, options as MrrtOptions);
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toBeInstanceOf(TypeError);
  expect((thrown as TypeError).message).toContain(`"${name}`);
  expect((thrown as { code?: unknown }).code).toBe('ERR_MRRT_INVALID_ARGUMENT');
}

const configurationOf = (options: MrrtOptions): MrrtConfiguration => {
  const MrrtProvider = withMrrt(Provider, options);
  const provider = new MrrtProvider(ISSUER, {}) as Provider & { [mrrtConfiguration]: MrrtConfiguration };
  return provider[mrrtConfiguration];
};

describe('withMrrt options', () => {
  const bad: [label: string, options: unknown, name: string][] = [
    ['no store', {}, 'store'],
    ['store undefined', { store: undefined }, 'store'],
    ['store null', { store: null }, 'store'],
    ['a store without get', { store: { set: async () => undefined } }, 'store'],
    ['a store whose get is not a function', { store: { get: 'x' } }, 'store'],
    ['a store that is a string', { store: 'redis://localhost' }, 'store'],
    ['an unknown option', { store, denylist: [] }, 'denylist'],
    ['another unknown option', { store, resourceIndicators: true }, 'resourceIndicators'],
    ['isFirstParty null', { store, isFirstParty: null }, 'isFirstParty'],
    ['allowSkippingConsent null', { store, allowSkippingConsent: null }, 'allowSkippingConsent'],
    ['denyList null', { store, denyList: null }, 'denyList'],
    ['limits null', { store, limits: null }, 'limits'],
    ['storeTimeout null', { store, storeTimeout: null }, 'storeTimeout'],
    ['isFirstParty true', { store, isFirstParty: true }, 'isFirstParty'],
    ['isFirstParty a list', { store, isFirstParty: ['app'] }, 'isFirstParty'],
    ['allowSkippingConsent a string', { store, allowSkippingConsent: 'https://api.example.com' }, 'allowSkippingConsent'],
    ['allowSkippingConsent true', { store, allowSkippingConsent: true }, 'allowSkippingConsent'],
    ['allowSkippingConsent a Set', { store, allowSkippingConsent: new Set(['https://api.example.com']) }, 'allowSkippingConsent'],
    ['allowSkippingConsent with a relative URI', { store, allowSkippingConsent: ['https://api.example.com', '/api'] }, 'allowSkippingConsent[1]'],
    ['allowSkippingConsent with a fragment', { store, allowSkippingConsent: ['https://api.example.com/#x'] }, 'allowSkippingConsent[0]'],
    ['allowSkippingConsent with a non-string', { store, allowSkippingConsent: [42] }, 'allowSkippingConsent[0]'],
    ['denyList a string', { store, denyList: 'https://admin.example.com' }, 'denyList'],
    ['denyList with a non-URI', { store, denyList: ['admin api'] }, 'denyList[0]'],
    ['denyList with a relative URI', { store, denyList: ['https://admin.example.com', 'admin'] }, 'denyList[1]'],
    ['denyList with an empty string', { store, denyList: [''] }, 'denyList[0]'],
    ['limits a number', { store, limits: 10 }, 'limits'],
    ['limits an array', { store, limits: [10] }, 'limits'],
    ['limits with an unknown key', { store, limits: { maxAudiences: 5 } }, 'limits.maxAudiences'],
    ['limits with an inherited key', { store, limits: { constructor: 5 } }, 'limits.constructor'],
    ['limits with toString', { store, limits: { toString: 5 } }, 'limits.toString'],
    ['limits.maxEntries 0', { store, limits: { maxEntries: 0 } }, 'limits.maxEntries'],
    ['limits.maxEntries negative', { store, limits: { maxEntries: -5 } }, 'limits.maxEntries'],
    ['limits.maxEntries 1.5', { store, limits: { maxEntries: 1.5 } }, 'limits.maxEntries'],
    ['limits.maxEntries a string', { store, limits: { maxEntries: '10' } }, 'limits.maxEntries'],
    ['limits.maxEntries Infinity', { store, limits: { maxEntries: Infinity } }, 'limits.maxEntries'],
    ['limits.maxEntries NaN', { store, limits: { maxEntries: Number.NaN } }, 'limits.maxEntries'],
    ['limits.maxEntries null', { store, limits: { maxEntries: null } }, 'limits.maxEntries'],
    ['limits.maxScopesPerEntry 0', { store, limits: { maxScopesPerEntry: 0 } }, 'limits.maxScopesPerEntry'],
    ['limits.maxScopesPerEntry 2.5', { store, limits: { maxScopesPerEntry: 2.5 } }, 'limits.maxScopesPerEntry'],
    ['limits.maxScopesPerEntry too large', { store, limits: { maxScopesPerEntry: 1001 } }, 'limits.maxScopesPerEntry'],
    ['storeTimeout 0', { store, storeTimeout: 0 }, 'storeTimeout'],
    ['storeTimeout negative', { store, storeTimeout: -1 }, 'storeTimeout'],
    ['storeTimeout 1.5', { store, storeTimeout: 1.5 }, 'storeTimeout'],
    ['storeTimeout too large', { store, storeTimeout: 60_001 }, 'storeTimeout'],
    ['cache null', { store, cache: null }, 'cache'],
    ['cache true', { store, cache: true }, 'cache'],
    ['cache with an unknown key', { store, cache: { ttl: 5 } }, 'cache.ttl'],
    ['cache.maxAge 0', { store, cache: { maxAge: 0 } }, 'cache.maxAge'],
    ['cache.maxEntries 1.5', { store, cache: { maxEntries: 1.5 } }, 'cache.maxEntries'],
    ['publicClients unknown value', { store, publicClients: 'never' }, 'publicClients'],
    ['publicClients null', { store, publicClients: null }, 'publicClients'],
    ['profile unknown value', { store, profile: 'okta' }, 'profile'],
    ['storeTimeout Infinity', { store, storeTimeout: Infinity }, 'storeTimeout'],
    ['storeTimeout a string', { store, storeTimeout: '2000' }, 'storeTimeout'],
  ];

  test.each(bad)('%s -> TypeError naming the option', (_, options, name) => {
    expectOptionError(options, name);
  });

  test.each([null, 'store', [store], 42])('options %p -> TypeError', (options) => {
    expect(() => withMrrt(Provider, options as unknown as MrrtOptions)).toThrow(TypeError);
  });

  test('no options at withMrrt: the provider configuration must hold them (see below)', () => {
    expect(() => new (withMrrt(Provider))(ISSUER, {})).toThrow(TypeError);
  });

  test('the first argument must be the Provider class or a subclass', () => {
    for (const base of [undefined, null, {}, class NotAProvider {}, () => Provider, Object, function Provider() {}]) {
      expect(() => withMrrt(base as unknown as typeof Provider, { store })).toThrow(TypeError);
      expect(() => withMrrt(base as unknown as typeof Provider, { store })).toThrow(/Provider class/);
    }
    class Subclass extends Provider {}
    expect(() => withMrrt(Subclass, { store })).not.toThrow();
  });

  test('a configuration that is not an object -> TypeError at construction', () => {
    const MrrtProvider = withMrrt(Provider, { store });
    expect(() => new MrrtProvider(ISSUER, null as never)).toThrow(TypeError);
    // with the feature on (explicitly or by default) the provider is constructed
    expect(new MrrtProvider(ISSUER, { features: { resourceIndicators: { enabled: true } } })).toBeInstanceOf(Provider);
    expect(new MrrtProvider(ISSUER)).toBeInstanceOf(Provider);
  });
});

describe('resolved configuration', () => {
  const client = { clientId: 'app' } as unknown as MrrtClient;

  test('defaults', async () => {
    const config = configurationOf({ store });
    expect(config.store).toBe(store);
    expect(config.storeTimeout).toBe(2000);
    expect(config.limits).toEqual(DEFAULT_LIMITS);
    expect([...config.denyList]).toEqual([]);
    // the default first-party rule reads the provider's static clients (see the first-party tests)
    expect(config.isFirstParty).toBeUndefined();
    expect(await config.allowSkippingConsent('https://api.example.com', client)).toBe(false);
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.limits)).toBe(true);
  });

  test('given values', async () => {
    const isFirstParty = (c: MrrtClient): boolean => c.clientId === 'app';
    const config = configurationOf({
      store,
      isFirstParty,
      allowSkippingConsent: ['https://api.example.com', 'urn:example:api'],
      denyList: ['https://admin.example.com'],
      limits: { maxEntries: 5, maxScopesPerEntry: undefined },
      storeTimeout: 60_000,
    });
    expect(config.isFirstParty).toBe(isFirstParty);
    expect(await config.allowSkippingConsent('https://api.example.com', client)).toBe(true);
    expect(await config.allowSkippingConsent('urn:example:api', client)).toBe(true);
    expect(await config.allowSkippingConsent('https://api.example.com/', client)).toBe(false);
    expect([...config.denyList]).toEqual(['https://admin.example.com']);
    expect(config.limits).toEqual({ maxEntries: 5, maxScopesPerEntry: DEFAULT_LIMITS.maxScopesPerEntry });
    expect(config.storeTimeout).toBe(60_000);
    expect(configurationOf({ store, storeTimeout: 1, limits: { maxEntries: 1000, maxScopesPerEntry: 1 } })).toMatchObject({
      storeTimeout: 1,
      limits: { maxEntries: 1000, maxScopesPerEntry: 1 },
    });
  });

  test('allowSkippingConsent as a function is used as is', async () => {
    const seen: string[] = [];
    const config = configurationOf({
      store,
      allowSkippingConsent: (resource, c) => {
        seen.push(`${c.clientId} ${resource}`);
        return resource.startsWith('https://internal.');
      },
    });
    expect(await config.allowSkippingConsent('https://internal.example.com', client)).toBe(true);
    expect(await config.allowSkippingConsent('https://external.example.com', client)).toBe(false);
    expect(seen).toEqual(['app https://internal.example.com', 'app https://external.example.com']);
  });

  test('the options list is copied: later changes to it do not widen MRRT', async () => {
    const allow = ['https://api.example.com'];
    const deny = ['https://admin.example.com'];
    const config = configurationOf({ store, allowSkippingConsent: allow, denyList: deny });
    allow.push('https://other.example.com');
    deny.length = 0;
    expect(await config.allowSkippingConsent('https://other.example.com', client)).toBe(false);
    expect([...config.denyList]).toEqual(['https://admin.example.com']);
  });
});

describe('options in the provider configuration', () => {
  const other = new MemoryPolicyStore();

  test('the "mrrt" key configures each instance; oidc-provider never sees it', () => {
    const MrrtProvider = withMrrt(Provider);
    const first = new MrrtProvider(ISSUER, { mrrt: { store, denyList: ['https://admin.example.com'] } });
    const second = new MrrtProvider(ISSUER, { mrrt: { store: other, storeTimeout: 500 } });
    const configOf = (provider: Provider): MrrtConfiguration => (provider as Provider & { [mrrtConfiguration]: MrrtConfiguration })[mrrtConfiguration];
    expect(configOf(first).store).toBe(store);
    expect([...configOf(first).denyList]).toEqual(['https://admin.example.com']);
    expect(configOf(second).store).toBe(other);
    expect(configOf(second).storeTimeout).toBe(500);
  });

  test("the configuration's keys win over withMrrt's options, which stay the defaults of the class", () => {
    const MrrtProvider = withMrrt(Provider, { store, storeTimeout: 700 });
    const configOf = (provider: Provider): MrrtConfiguration => (provider as Provider & { [mrrtConfiguration]: MrrtConfiguration })[mrrtConfiguration];
    expect(configOf(new MrrtProvider(ISSUER, {})).storeTimeout).toBe(700);
    const overridden = configOf(new MrrtProvider(ISSUER, { mrrt: { store: other } }));
    expect(overridden.store).toBe(other);
    expect(overridden.storeTimeout).toBe(700);
  });

  test("an undefined key keeps the class's value (an unset environment variable never empties the deny-list)", () => {
    const MrrtProvider = withMrrt(Provider, { store, denyList: ['https://admin.example.com'], storeTimeout: 700 });
    const configOf = (provider: Provider): MrrtConfiguration => (provider as Provider & { [mrrtConfiguration]: MrrtConfiguration })[mrrtConfiguration];
    const fromEnvironment = configOf(new MrrtProvider(ISSUER, { mrrt: { store, denyList: undefined, storeTimeout: undefined } }));
    expect([...fromEnvironment.denyList]).toEqual(['https://admin.example.com']);
    expect(fromEnvironment.storeTimeout).toBe(700);
    expect([...configOf(new MrrtProvider(ISSUER, { mrrt: undefined })).denyList]).toEqual(['https://admin.example.com']);
  });

  test('missing or invalid options are a TypeError naming what is wrong', () => {
    const MrrtProvider = withMrrt(Provider);
    expect(() => new MrrtProvider(ISSUER, {})).toThrow(/MRRT options are required/);
    expect(() => new MrrtProvider(ISSUER, { mrrt: null as never })).toThrow(/"mrrt" configuration must be an object/);
    expect(() => new MrrtProvider(ISSUER, { mrrt: { store, storeTimeout: -1 } })).toThrow(/"storeTimeout" option/);
    expect(() => new MrrtProvider(ISSUER, { mrrt: { store, extra: 1 } as never })).toThrow(/"extra" is not a recognized MRRT option/);
  });
});
