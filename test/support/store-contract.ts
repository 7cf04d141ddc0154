// The behaviour every PolicyStore must have, shared by test/policy-store.contract.test.ts (Memory and
// Redis stores) and test/cluster.test.ts (RedisPolicyStore on a real Redis Cluster).
import { describe, test, expect, beforeEach } from '@jest/globals';

import { PolicyConflictError, PolicyValidationError, type Policy, type PolicyRecord, type PolicyStore } from '../../lib/index.js';

export const A = 'https://a.example.com';
export const B = 'https://b.example.com';
export const P1: Policy = [{ audience: A, scope: ['read'] }];
export const P2: Policy = [
  { audience: A, scope: ['read', 'write'] },
  { audience: B, scope: ['b:all'] },
];
export const P3: Policy = [{ audience: B, scope: ['b:read'] }];

/** Expects `promise` to reject with a PolicyConflictError and returns it. */
export async function conflict(promise: Promise<unknown>): Promise<PolicyConflictError> {
  const error = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(error).toBeInstanceOf(PolicyConflictError);
  expect((error as PolicyConflictError).code).toBe('ERR_MRRT_POLICY_CONFLICT');
  return error as PolicyConflictError;
}

export function expectDeeplyFrozen(record: PolicyRecord): void {
  expect(Object.isFrozen(record)).toBe(true);
  expect(Object.isFrozen(record.policies)).toBe(true);
  for (const entry of record.policies) {
    expect(Object.isFrozen(entry)).toBe(true);
    expect(Object.isFrozen(entry.scope)).toBe(true);
  }
}

/**
 * The behaviour every {@link PolicyStore} must have. `makeStore` returns an empty store, a new one
 * for every test.
 */
export function describeStoreContract(name: string, makeStore: () => PolicyStore | Promise<PolicyStore>): void {
  describe(`PolicyStore contract: ${name}`, () => {
    let store: PolicyStore;
    beforeEach(async () => {
      store = await makeStore();
    });

    test('get of a client without a policy resolves undefined', async () => {
      await expect(store.get('nobody')).resolves.toBeUndefined();
      await expect(store.list()).resolves.toEqual({ clientIds: [] });
    });

    test('set then get round-trips the policy', async () => {
      const written = await store.set('app', P2);
      expect(written).toEqual({ clientId: 'app', policies: P2, version: expect.any(String) });
      expect(written.version.length).toBeGreaterThan(0);
      const read = await store.get('app');
      expect(read).toEqual(written);
      expect(read!.policies).toEqual([
        { audience: A, scope: ['read', 'write'] },
        { audience: B, scope: ['b:all'] },
      ]);
      // policies of other clients are separate
      await expect(store.get('app2')).resolves.toBeUndefined();
      await expect(store.get('ap')).resolves.toBeUndefined();
    });

    test('every write changes the version', async () => {
      const versions = new Set<string>();
      for (const policy of [P1, P2, P1, P1]) {
        const { version } = await store.set('app', policy);
        expect(versions.has(version)).toBe(false);
        versions.add(version);
        expect((await store.get('app'))!.version).toBe(version);
      }
      expect(versions.size).toBe(4);
      await store.delete('app');
      const { version } = await store.set('app', P1);
      expect(versions.has(version)).toBe(false);
    });

    test('ifMatch: null creates a policy only when there is none', async () => {
      const created = await store.set('app', P1, { ifMatch: null });
      expect(created.policies).toEqual(P1);
      const error = await conflict(store.set('app', P2, { ifMatch: null }));
      expect(error.currentVersion).toBe(created.version);
      await expect(store.get('app')).resolves.toEqual(created);
    });

    test('a stale ifMatch is a conflict that changes nothing', async () => {
      const first = await store.set('app', P1);
      const second = await store.set('app', P2);
      const error = await conflict(store.set('app', P3, { ifMatch: first.version }));
      expect(error.currentVersion).toBe(second.version);
      await expect(store.get('app')).resolves.toEqual(second);
    });

    test('an ifMatch on a client without a policy is a conflict without a current version', async () => {
      const error = await conflict(store.set('app', P1, { ifMatch: 'some-version' }));
      expect(error.currentVersion).toBeUndefined();
      await expect(store.get('app')).resolves.toBeUndefined();
      const empty = await conflict(store.set('app', P1, { ifMatch: '' }));
      expect(empty.currentVersion).toBeUndefined();
      await expect(store.get('app')).resolves.toBeUndefined();
    });

    test('a matching ifMatch writes', async () => {
      const first = await store.set('app', P1);
      const second = await store.set('app', P2, { ifMatch: first.version });
      expect(second.version).not.toBe(first.version);
      await expect(store.get('app')).resolves.toEqual(second);
      const third = await store.set('app', P3, { ifMatch: second.version });
      await expect(store.get('app')).resolves.toEqual({ clientId: 'app', policies: P3, version: third.version });
    });

    test('delete resolves true, then false', async () => {
      await store.set('app', P1);
      await store.set('other', P2);
      await expect(store.delete('app')).resolves.toBe(true);
      await expect(store.get('app')).resolves.toBeUndefined();
      await expect(store.delete('app')).resolves.toBe(false);
      await expect(store.delete('never')).resolves.toBe(false);
      await expect(store.get('other')).resolves.toMatchObject({ policies: P2 });
      await expect(store.list()).resolves.toEqual({ clientIds: ['other'] });
    });

    test('delete honours ifMatch', async () => {
      const first = await store.set('app', P1);
      const second = await store.set('app', P2);
      const stale = await conflict(store.delete('app', { ifMatch: first.version }));
      expect(stale.currentVersion).toBe(second.version);
      await expect(store.get('app')).resolves.toEqual(second);
      const absent = await conflict(store.delete('app', { ifMatch: null }));
      expect(absent.currentVersion).toBe(second.version);
      await expect(store.get('app')).resolves.toEqual(second);
      await expect(store.delete('app', { ifMatch: second.version })).resolves.toBe(true);
      await expect(store.get('app')).resolves.toBeUndefined();
      const gone = await conflict(store.delete('app', { ifMatch: second.version }));
      expect(gone.currentVersion).toBeUndefined();
    });

    test('list pages through the clients in lexicographic order', async () => {
      const ids = Array.from({ length: 25 }, (_, i) => `app-${i}`);
      // insertion order differs from lexicographic order (and from numeric order: app-10 < app-2)
      const shuffled = [...ids].sort(() => Math.random() - 0.5);
      for (const id of shuffled) await store.set(id, P1);
      const sorted = [...ids].sort();
      expect(sorted.slice(0, 4)).toEqual(['app-0', 'app-1', 'app-10', 'app-11']);

      const page1 = await store.list({ limit: 10 });
      expect(page1).toEqual({ clientIds: sorted.slice(0, 10), next: sorted[9] });
      const page2 = await store.list({ limit: 10, after: page1.next });
      expect(page2).toEqual({ clientIds: sorted.slice(10, 20), next: sorted[19] });
      const page3 = await store.list({ limit: 10, after: page2.next });
      expect(page3).toEqual({ clientIds: sorted.slice(20) });
      expect('next' in page3).toBe(false);

      // the default page holds all 25; `after` is exclusive and need not be a stored id
      await expect(store.list()).resolves.toEqual({ clientIds: sorted });
      await expect(store.list({ after: 'app-1', limit: 2 })).resolves.toEqual({ clientIds: ['app-10', 'app-11'], next: 'app-11' });
      await expect(store.list({ after: 'app-15x', limit: 3 })).resolves.toEqual({ clientIds: ['app-16', 'app-17', 'app-18'], next: 'app-18' });
      await expect(store.list({ after: 'app-9' })).resolves.toEqual({ clientIds: [] });
      await expect(store.list({ after: '', limit: 1 })).resolves.toEqual({ clientIds: ['app-0'], next: 'app-0' });

      // deleted clients disappear; a last page that is exactly full has no `next`
      for (const id of ['app-0', 'app-12', 'app-2', 'app-20', 'app-9']) await expect(store.delete(id)).resolves.toBe(true);
      const remaining = sorted.filter((id) => !['app-0', 'app-12', 'app-2', 'app-20', 'app-9'].includes(id));
      expect(remaining).toHaveLength(20);
      const again1 = await store.list({ limit: 10 });
      expect(again1).toEqual({ clientIds: remaining.slice(0, 10), next: remaining[9] });
      const again2 = await store.list({ limit: 10, after: again1.next });
      expect(again2).toEqual({ clientIds: remaining.slice(10) });
      expect(again2.next).toBeUndefined();

      // a failed write does not list a client
      await conflict(store.set('app-0', P1, { ifMatch: 'nope' }));
      await expect(store.list({ limit: 1 })).resolves.toEqual({ clientIds: ['app-1'], next: 'app-1' });
    });

    test('list orders client ids by code point (UTF-8 byte order)', async () => {
      // U+FF01 sorts before U+1F600 by code point, after it by UTF-16 code unit
      const ids = ['\u{1F600}', '\uFF01', 'z', 'Z', '\u00e9'];
      for (const id of ids) await store.set(id, P1);
      await expect(store.list()).resolves.toEqual({ clientIds: ['Z', 'z', '\u00e9', '\uFF01', '\u{1F600}'] });
      await expect(store.list({ after: '\uFF01' })).resolves.toEqual({ clientIds: ['\u{1F600}'] });
      await expect(store.get('\u{1F600}')).resolves.toMatchObject({ clientId: '\u{1F600}', policies: P1 });
    });

    test('an invalid policy is rejected and nothing is stored', async () => {
      for (const bad of [[], [{ audience: 'relative', scope: ['read'] }], [{ audience: A, scope: [] }], [{ audience: A, scope: ['read'], x: 1 }], null]) {
        await expect(store.set('app', bad as unknown as Policy)).rejects.toBeInstanceOf(PolicyValidationError);
      }
      await expect(store.get('app')).resolves.toBeUndefined();
      await expect(store.list()).resolves.toEqual({ clientIds: [] });

      const stored = await store.set('app', P1);
      const error = await store.set('app', [{ audience: A, scope: ['a b'] }]).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(PolicyValidationError);
      expect((error as PolicyValidationError).issues).toEqual([{ path: '$[0].scope[0]', message: expect.any(String) }]);
      await expect(store.get('app')).resolves.toEqual(stored);
    });

    test('invalid client ids and options are TypeErrors', async () => {
      const badIds: unknown[] = ['', 'x'.repeat(1025), 42, null, undefined, {}, '\uD800', 'a\uDC00b'];
      for (const id of badIds) {
        await expect(store.get(id as string)).rejects.toThrow(TypeError);
        await expect(store.set(id as string, P1)).rejects.toThrow(TypeError);
        await expect(store.delete(id as string)).rejects.toThrow(TypeError);
      }
      await expect(store.list()).resolves.toEqual({ clientIds: [] });
      // the longest allowed id works
      const long = 'x'.repeat(1024);
      await store.set(long, P1);
      await expect(store.get(long)).resolves.toMatchObject({ clientId: long });

      for (const ifMatch of [1, {}, true]) {
        await expect(store.set('app', P1, { ifMatch } as never)).rejects.toThrow(/"ifMatch"/);
        await expect(store.delete(long, { ifMatch } as never)).rejects.toThrow(TypeError);
      }
      await expect(store.get('app')).resolves.toBeUndefined();
      await expect(store.get(long)).resolves.toBeDefined();

      for (const limit of [0, -1, 1.5, 1001, Number.NaN, '10', null]) {
        await expect(store.list({ limit } as never)).rejects.toThrow(/"limit"/);
      }
      for (const after of [1, null, {}]) {
        await expect(store.list({ after } as never)).rejects.toThrow(/"after"/);
      }
      await expect(store.list({ limit: 1000 })).resolves.toEqual({ clientIds: [long] });
      await expect(store.list({ limit: 1 })).resolves.toEqual({ clientIds: [long] });
    });

    test("records are frozen and independent of the caller's input", async () => {
      const input = [
        { audience: A, scope: ['read'] },
        { audience: B, scope: ['b:read'] },
      ];
      const written = await store.set('app', input);
      expectDeeplyFrozen(written);
      input[0]!.scope.push('write');
      input[0]!.audience = 'https://evil.example.com';
      input.push({ audience: 'https://c.example.com', scope: ['c'] });
      input.splice(1, 1);
      const read = await store.get('app');
      expectDeeplyFrozen(read!);
      expect(read!.policies).toEqual([
        { audience: A, scope: ['read'] },
        { audience: B, scope: ['b:read'] },
      ]);
      expect(written.policies).toEqual(read!.policies);
      expect(() => {
        (read!.policies[0]!.scope as string[]).push('x');
      }).toThrow(TypeError);
      await expect(store.get('app')).resolves.toMatchObject({
        policies: [
          { audience: A, scope: ['read'] },
          { audience: B, scope: ['b:read'] },
        ],
      });
    });

    test('concurrent writes with the same ifMatch: exactly one wins', async () => {
      const base = await store.set('app', P1);
      const writers = Array.from({ length: 10 }, (_, i) => store.set('app', [{ audience: A, scope: [`w${i}`] }], { ifMatch: base.version }));
      const results = await Promise.allSettled(writers);
      const won = results.filter((r): r is PromiseFulfilledResult<PolicyRecord> => r.status === 'fulfilled');
      const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      expect(won).toHaveLength(1);
      expect(lost).toHaveLength(9);
      for (const { reason } of lost) expect(reason).toBeInstanceOf(PolicyConflictError);
      await expect(store.get('app')).resolves.toEqual(won[0]!.value);
    });

    test('concurrent creates with ifMatch null: exactly one wins', async () => {
      const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => store.set('new', [{ audience: A, scope: [`w${i}`] }], { ifMatch: null })));
      const won = results.filter((r): r is PromiseFulfilledResult<PolicyRecord> => r.status === 'fulfilled');
      expect(won).toHaveLength(1);
      expect(results.filter((r) => r.status === 'rejected' && r.reason instanceof PolicyConflictError)).toHaveLength(9);
      await expect(store.get('new')).resolves.toEqual(won[0]!.value);
      await expect(store.list()).resolves.toEqual({ clientIds: ['new'] });
    });
  });
}
