import { describe, test, expect } from '@jest/globals';

import { DEFAULT_LIMITS, PolicyValidationError, isResourceIndicator, parsePolicies, type PolicyIssue, type PolicyLimits } from '../lib/index.js';

const A = 'https://a.example.com/api';
const B = 'https://b.example.com';

/** Runs parsePolicies and returns the issues of the PolicyValidationError it must throw. */
function issuesOf(input: unknown, limits?: PolicyLimits): readonly PolicyIssue[] {
  let thrown: unknown;
  try {
    parsePolicies(input, limits);
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toBeInstanceOf(PolicyValidationError);
  const error = thrown as PolicyValidationError;
  expect(error.code).toBe('ERR_MRRT_POLICY_INVALID');
  expect(error.name).toBe('PolicyValidationError');
  for (const issue of error.issues) {
    expect(typeof issue.message).toBe('string');
    expect(issue.message.length).toBeGreaterThan(0);
    expect(error.message).toContain(`${issue.path}: ${issue.message}`);
  }
  return error.issues;
}

const entries = (n: number): { audience: string; scope: string[] }[] =>
  Array.from({ length: n }, (_, i) => ({ audience: `https://api${i}.example.com`, scope: ['read'] }));
const scopes = (n: number): string[] => Array.from({ length: n }, (_, i) => `s${i}`);

interface Case {
  name: string;
  input: unknown;
  /** The exact issues expected, in order: a path and a pattern its message must match. */
  issues: [path: string, message: RegExp][];
  limits?: PolicyLimits;
}

const invalid: Case[] = [
  { name: 'an object instead of an array', input: { audience: A, scope: ['read'] }, issues: [['$', /must be an array.*got object/]] },
  { name: 'null', input: null, issues: [['$', /must be an array.*got null/]] },
  { name: 'undefined', input: undefined, issues: [['$', /must be an array.*got undefined/]] },
  { name: 'a JSON string of a valid policy', input: JSON.stringify([{ audience: A, scope: ['read'] }]), issues: [['$', /got string/]] },
  { name: 'an empty array', input: [], issues: [['$', /at least one entry/]] },
  { name: 'too many entries (default limit 50)', input: entries(51), issues: [['$', /at most 50 entries, got 51/]] },
  { name: 'a null entry', input: [null], issues: [['$[0]', /must be an object.*got null/]] },
  { name: 'an array entry', input: [{ audience: A, scope: ['read'] }, [A, ['read']]], issues: [['$[1]', /must be an object.*got an array/]] },
  { name: 'a string entry', input: [A], issues: [['$[0]', /got string/]] },
  {
    name: 'a class instance entry',
    input: [
      new (class Entry {
        audience = A;
        scope = ['read'];
      })(),
    ],
    issues: [['$[0]', /must be an object/]],
  },
  {
    name: 'a hole in a sparse array',
    input: Object.assign(new Array(2), { 1: { audience: A, scope: ['read'] } }),
    issues: [['$[0]', /must be an object.*got undefined/]],
  },
  {
    name: 'an array of holes only',
    input: new Array(2),
    issues: [
      ['$[0]', /must be an object/],
      ['$[1]', /must be an object/],
    ],
  },
  { name: 'an unknown key', input: [{ audience: A, scope: ['read'], extra: 1 }], issues: [['$[0].extra', /not an allowed property/]] },
  {
    name: 'an unknown key that is not an identifier',
    input: [{ audience: A, scope: ['read'], 'x-y': 1 }],
    issues: [['$[0]["x-y"]', /not an allowed property/]],
  },
  {
    name: 'a JSON.parse\'d "__proto__" key',
    input: JSON.parse(`[{"audience":"${A}","scope":["read"],"__proto__":{"audience":"x"}}]`),
    issues: [['$[0]["__proto__"]', /not an allowed property/]],
  },
  { name: 'a "constructor" key', input: [{ audience: A, scope: ['read'], constructor: 1 }], issues: [['$[0].constructor', /not an allowed property/]] },
  { name: 'a missing audience', input: [{ scope: ['read'] }], issues: [['$[0].audience', /must be a string, got nothing/]] },
  { name: 'a numeric audience', input: [{ audience: 42, scope: ['read'] }], issues: [['$[0].audience', /must be a string, got number/]] },
  { name: 'an array audience', input: [{ audience: [A], scope: ['read'] }], issues: [['$[0].audience', /must be a string, got an array/]] },
  { name: 'an empty audience', input: [{ audience: '', scope: ['read'] }], issues: [['$[0].audience', /1 to 600 characters/]] },
  { name: 'a relative URI (path)', input: [{ audience: '/api', scope: ['read'] }], issues: [['$[0].audience', /absolute URI/]] },
  { name: 'a relative URI (host only)', input: [{ audience: 'api.example.com', scope: ['read'] }], issues: [['$[0].audience', /absolute URI/]] },
  { name: 'a scheme-relative URI', input: [{ audience: '//api.example.com/', scope: ['read'] }], issues: [['$[0].audience', /absolute URI/]] },
  { name: 'a URI with a fragment', input: [{ audience: `${A}#part`, scope: ['read'] }], issues: [['$[0].audience', /without a fragment/]] },
  { name: 'a URI with an empty fragment', input: [{ audience: `${A}#`, scope: ['read'] }], issues: [['$[0].audience', /without a fragment/]] },
  { name: 'an audience with a space', input: [{ audience: 'https://api.example.com/a b', scope: ['read'] }], issues: [['$[0].audience', /spaces/]] },
  { name: 'an audience with a leading space', input: [{ audience: ` ${A}`, scope: ['read'] }], issues: [['$[0].audience', /absolute URI/]] },
  { name: 'an audience with a NUL', input: [{ audience: `${A}\u0000`, scope: ['read'] }], issues: [['$[0].audience', /control characters/]] },
  { name: 'an audience with a newline', input: [{ audience: `${A}\n`, scope: ['read'] }], issues: [['$[0].audience', /control characters/]] },
  { name: 'an audience with DEL', input: [{ audience: `${A}\u007f`, scope: ['read'] }], issues: [['$[0].audience', /absolute URI/]] },
  {
    name: 'an audience with a non-ASCII character',
    input: [{ audience: 'https://api.example.com/\u00e4', scope: ['read'] }],
    issues: [['$[0].audience', /absolute URI/]],
  },
  {
    name: 'an audience of 601 characters',
    input: [{ audience: `https://api.example.com/${'a'.repeat(601 - 24)}`, scope: ['read'] }],
    issues: [['$[0].audience', /1 to 600 characters long, got 601/]],
  },
  {
    name: 'a duplicate audience',
    input: [
      { audience: A, scope: ['read'] },
      { audience: B, scope: ['read'] },
      { audience: A, scope: ['write'] },
    ],
    issues: [['$[2].audience', /duplicates the entry for "https:\/\/a\.example\.com\/api"/]],
  },
  { name: 'a missing scope', input: [{ audience: A }], issues: [['$[0].scope', /must be an array.*got nothing/]] },
  { name: 'a space-delimited scope string', input: [{ audience: A, scope: 'read write' }], issues: [['$[0].scope', /must be an array.*got string/]] },
  { name: 'a scope object', input: [{ audience: A, scope: { 0: 'read' } }], issues: [['$[0].scope', /must be an array.*got object/]] },
  { name: 'an empty scope array', input: [{ audience: A, scope: [] }], issues: [['$[0].scope', /at least one scope/]] },
  { name: 'a scope array of holes only', input: [{ audience: A, scope: new Array(1) }], issues: [['$[0].scope[0]', /must be a string, got undefined/]] },
  { name: 'a non-string scope', input: [{ audience: A, scope: ['read', 7] }], issues: [['$[0].scope[1]', /must be a string, got number/]] },
  { name: 'a null scope', input: [{ audience: A, scope: [null] }], issues: [['$[0].scope[0]', /must be a string, got null/]] },
  { name: 'an empty scope string', input: [{ audience: A, scope: [''] }], issues: [['$[0].scope[0]', /1 to 280 characters long, got 0/]] },
  { name: 'a scope with a space', input: [{ audience: A, scope: ['read', 'a b'] }], issues: [['$[0].scope[1]', /scope token/]] },
  { name: 'a scope with a double quote', input: [{ audience: A, scope: ['a"b'] }], issues: [['$[0].scope[0]', /scope token/]] },
  { name: 'a scope with a backslash', input: [{ audience: A, scope: ['a\\b'] }], issues: [['$[0].scope[0]', /scope token/]] },
  { name: 'a scope with a control character', input: [{ audience: A, scope: ['a\tb'] }], issues: [['$[0].scope[0]', /scope token/]] },
  { name: 'a scope with a non-ASCII character', input: [{ audience: A, scope: ['r\u00e9ad'] }], issues: [['$[0].scope[0]', /scope token/]] },
  { name: 'a scope of 281 characters', input: [{ audience: A, scope: ['s'.repeat(281)] }], issues: [['$[0].scope[0]', /1 to 280 characters long, got 281/]] },
  { name: 'a duplicate scope', input: [{ audience: A, scope: ['read', 'write', 'read'] }], issues: [['$[0].scope[2]', /duplicates scope "read"/]] },
  { name: 'too many scopes (default limit 100)', input: [{ audience: A, scope: scopes(101) }], issues: [['$[0].scope', /at most 100 scopes, got 101/]] },
  {
    name: 'problems in the second entry are located there',
    input: [
      { audience: A, scope: ['read'] },
      { audience: B, scope: ['read', 'write', ''] },
    ],
    issues: [['$[1].scope[2]', /1 to 280/]],
  },
  {
    name: 'three problems at once',
    input: [
      { audience: 'relative', scope: ['read'] },
      { audience: B, scope: ['a b'], extra: true },
    ],
    issues: [
      ['$[0].audience', /absolute URI/],
      ['$[1].extra', /not an allowed property/],
      ['$[1].scope[0]', /scope token/],
    ],
  },
  {
    name: 'every problem of a bad policy',
    input: [{ audience: 1, scope: [], x: 1 }, 'nope', { audience: A, scope: ['a', 'a', 3] }, { audience: A, scope: 'read' }],
    issues: [
      ['$[0].x', /not an allowed property/],
      ['$[0].audience', /must be a string/],
      ['$[0].scope', /at least one scope/],
      ['$[1]', /must be an object/],
      ['$[2].scope[1]', /duplicates scope/],
      ['$[2].scope[2]', /must be a string/],
      ['$[3].audience', /duplicates the entry/],
      ['$[3].scope', /must be an array/],
    ],
  },
  {
    name: 'too many entries reported together with entry problems',
    input: [...entries(2), { audience: '/x', scope: ['read'] }],
    limits: { maxEntries: 2 },
    issues: [
      ['$', /at most 2 entries, got 3/],
      ['$[2].audience', /absolute URI/],
    ],
  },
  { name: 'a custom maxEntries', input: entries(3), limits: { maxEntries: 2 }, issues: [['$', /at most 2 entries, got 3/]] },
  {
    name: 'a custom maxScopesPerEntry',
    input: [
      { audience: A, scope: ['a'] },
      { audience: B, scope: ['a', 'b'] },
    ],
    limits: { maxScopesPerEntry: 1 },
    issues: [['$[1].scope', /at most 1 scopes, got 2/]],
  },
  { name: 'limits given as undefined keep their defaults', input: entries(51), limits: { maxEntries: undefined }, issues: [['$', /at most 50 entries/]] },
];

describe('parsePolicies: invalid input', () => {
  test.each(invalid)('$name', ({ input, limits, issues }) => {
    const actual = issuesOf(input, limits);
    expect(actual.map((i) => i.path)).toEqual(issues.map(([path]) => path));
    expect(actual).toEqual(issues.map(([path, message]) => ({ path, message: expect.stringMatching(message) })));
  });

  test('the error message lists every issue', () => {
    const issues = issuesOf([{ audience: 'x', scope: [''] }]);
    expect(issues).toHaveLength(2);
    expect(() => parsePolicies([{ audience: 'x', scope: [''] }])).toThrow(/^invalid MRRT policy: \$\[0\]\.audience: .*; \$\[0\]\.scope\[0\]: /);
  });

  test('a policy with more problems than are listed: the first 100, then a note that there may be more', () => {
    const issues = issuesOf(
      Array.from({ length: 300 }, () => null),
      { maxEntries: 1000 },
    );
    expect(issues).toHaveLength(101);
    expect(issues.slice(0, 100).map((i) => i.path)).toEqual(Array.from({ length: 100 }, (_, i) => `$[${i}]`));
    expect(issues[100]).toEqual({ path: '$', message: expect.stringMatching(/possibly more problems \(the first 100 are listed\)/) });
  });

  test('an array over the limit is reported for its length and its items up to the largest configurable limit (1000)', () => {
    const input = [...entries(1200)];
    input[3] = { audience: '/x', scope: ['read'] };
    input[999] = { audience: '/x', scope: ['read'] };
    input[1000] = { audience: '/x', scope: ['read'] };
    expect(issuesOf(input, { maxEntries: 50 }).map((i) => i.path)).toEqual(['$', '$[3].audience', '$[999].audience']);
  });
});

describe('parsePolicies: valid input', () => {
  test('returns an equal, deeply frozen copy', () => {
    const input = [
      { audience: A, scope: ['read', 'write'] },
      { audience: 'urn:example:api', scope: ['admin:all'] },
    ];
    const policy = parsePolicies(input);
    expect(policy).toEqual(input);
    expect(policy).not.toBe(input);
    expect(policy[0]).not.toBe(input[0]);
    expect(policy[0]!.scope).not.toBe(input[0]!.scope);
    expect(Object.isFrozen(policy)).toBe(true);
    for (const entry of policy) {
      expect(Object.isFrozen(entry)).toBe(true);
      expect(Object.isFrozen(entry.scope)).toBe(true);
    }
    // the input is left alone and later changes to it do not leak into the result
    expect(Object.isFrozen(input)).toBe(false);
    input[0]!.scope.push('delete');
    input.push({ audience: B, scope: ['x'] });
    expect(policy).toEqual([
      { audience: A, scope: ['read', 'write'] },
      { audience: 'urn:example:api', scope: ['admin:all'] },
    ]);
  });

  test('copies only audience and scope, in that order', () => {
    const policy = parsePolicies(JSON.parse(`[{"scope":["read"],"audience":"${A}"}]`));
    expect(Object.keys(policy[0]!)).toEqual(['audience', 'scope']);
  });

  test('accepts null-prototype entries (as from a safe JSON parser)', () => {
    const entry = Object.assign(Object.create(null) as object, { audience: A, scope: ['read'] });
    expect(parsePolicies([entry])).toEqual([{ audience: A, scope: ['read'] }]);
  });

  test('accepts values at the limits', () => {
    const audience = `https://api.example.com/${'a'.repeat(600 - 24)}`;
    expect(audience).toHaveLength(600);
    const scope = 's'.repeat(280);
    expect(parsePolicies([{ audience, scope: [scope] }])).toEqual([{ audience, scope: [scope] }]);
    expect(parsePolicies(entries(50))).toHaveLength(50);
    expect(parsePolicies([{ audience: A, scope: scopes(100) }])[0]!.scope).toHaveLength(100);
    expect(parsePolicies([{ audience: A, scope: ['!#[]~:*.'] }])[0]!.scope).toEqual(['!#[]~:*.']);
  });

  test('respects raised and lowered limits', () => {
    expect(parsePolicies(entries(60), { maxEntries: 60 })).toHaveLength(60);
    expect(parsePolicies([{ audience: A, scope: scopes(150) }], { maxScopesPerEntry: 150 })[0]!.scope).toHaveLength(150);
    expect(parsePolicies(entries(2), { maxEntries: 2 })).toHaveLength(2);
    expect(issuesOf(entries(61), { maxEntries: 60 }).map((i) => i.path)).toEqual(['$']);
    expect(DEFAULT_LIMITS).toEqual({ maxEntries: 50, maxScopesPerEntry: 100 });
    expect(Object.isFrozen(DEFAULT_LIMITS)).toBe(true);
  });

  test.each([
    [{ maxEntries: Number.NaN }, 'limits.maxEntries'],
    [{ maxEntries: 0 }, 'limits.maxEntries'],
    [{ maxScopesPerEntry: -1 }, 'limits.maxScopesPerEntry'],
    [{ maxScopesPerEntry: '5' as unknown as number }, 'limits.maxScopesPerEntry'],
  ])('rejects the unusable limits %j with a TypeError', (limits, name) => {
    expect(() => parsePolicies(entries(1), limits)).toThrow(TypeError);
    expect(() => parsePolicies(entries(1), limits)).toThrow(name);
  });
});

describe('isResourceIndicator', () => {
  test.each([A, B, 'urn:example:api', 'https://api.example.com:8443/v1?x=1'])('accepts %s', (value) => {
    expect(isResourceIndicator(value)).toBe(true);
  });
  test.each(['', '/api', 'api', `${A}#x`, 'https://a b', `${A}\r`, 'http://[::1', `https://x/${'a'.repeat(600)}`])('rejects %j', (value) => {
    expect(isResourceIndicator(value)).toBe(false);
  });
});

describe('errors', () => {
  test('every error class has a stable code and the MrrtError base', async () => {
    const { MrrtError, PolicyConflictError, PolicyStoreError, PolicyValidationError, MemoryPolicyStore: Store } = await import('../lib/index.js');
    const invalid = (() => {
      try {
        parsePolicies([]);
      } catch (err) {
        return err;
      }
      return undefined;
    })();
    expect(invalid).toBeInstanceOf(PolicyValidationError);
    expect(invalid).toBeInstanceOf(MrrtError);
    expect(invalid).toMatchObject({ code: 'ERR_MRRT_POLICY_INVALID', name: 'PolicyValidationError' });
    const memory = new Store();
    await memory.set('app', [{ audience: 'https://api.example.com', scope: ['read'] }]);
    const conflict = await memory.set('app', [{ audience: 'https://api.example.com', scope: ['read'] }], { ifMatch: 'stale' }).catch((err: unknown) => err);
    expect(conflict).toBeInstanceOf(PolicyConflictError);
    expect(conflict).toMatchObject({ code: 'ERR_MRRT_POLICY_CONFLICT', name: 'PolicyConflictError' });
    expect(new PolicyStoreError('ERR_MRRT_STORE_CORRUPT', 'x')).toMatchObject({ code: 'ERR_MRRT_STORE_CORRUPT', name: 'PolicyStoreError' });
    expect(() => parsePolicies([], { maxEntries: 0 })).toThrow(expect.objectContaining({ code: 'ERR_MRRT_INVALID_ARGUMENT' }));
  });
});
