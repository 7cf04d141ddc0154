// Property-based tests of the MRRT exchange against a real provider.
//
// Every run builds a random world (provider options, store, client, login, policy), logs in once
// through the real authorization endpoint, sends 1–3 random refresh requests and compares each
// answer with a small independent model of README "The exchange" / "Errors" written below. It never
// calls lib code to predict an outcome. Checked on every generated request:
//   - the status and `error` are the model's, and never a 5xx (all requests here are client mistakes or valid);
//   - a 200 token has exactly one `aud`: the granted API or an eligible policy target, and its scope is
//     exactly the model's, a subset of (granted ∪ policy) ∩ defined, without openid/offline_access for
//     a policy-only target; the response `scope` equals the token's scope;
//   - a refusal leaves the stored refresh token and Grant byte-for-byte unchanged;
//   - after every request, every stored refresh token of the grant has the original resource and scope
//     and the Grant is unchanged (nothing from a policy is persisted);
//   - at the end the refresh token (or its rotated successor) still works for its granted API.
// Set MRRT_FC_SEED to replay a failing run with the seed fast-check prints.
import { randomBytes } from 'node:crypto';

import { afterAll, describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { Redis } from 'ioredis';

import { MemoryPolicyStore, RedisPolicyStore, type MrrtReason, type PolicyStore } from '../lib/index.js';
import { API, RESOURCE_SERVERS, dpopKey, login, refresh, snapshot, startServer, type ClientName, type DpopKey, type TestServer } from './support/fixture.js';
import { SCOPE_SYNTAX, accessTokenView, expectNothingPersisted, type Snapshot } from './support/security.js';
import { deleteKeys } from './support/redis-keys.js';

const redis = new Redis(process.env.MRRT_TEST_REDIS_URL!);
const prefix = `mrrt-test:{property-${randomBytes(6).toString('hex')}}:`;
const redisStore = new RedisPolicyStore(redis, { prefix });

afterAll(async () => {
  await redisStore.close();
  await deleteKeys(redis, prefix);
  await redis.quit();
});

const SEED = process.env.MRRT_FC_SEED === undefined ? {} : { seed: Number(process.env.MRRT_FC_SEED) };
/** MRRT_FC_RUNS_FACTOR=10 runs every property ten times as often (for a longer hunt; the default keeps the file under ~15 s). */
const FACTOR = Math.max(1, Number(process.env.MRRT_FC_RUNS_FACTOR ?? 1) || 1);
const runs = (n: number): { numRuns: number; seed?: number } => ({ numRuns: n * FACTOR, ...SEED });

// ---------------------------------------------------------------------------------------------
// The world: what the fixture's provider knows, restated as data for the model
// ---------------------------------------------------------------------------------------------

const UNKNOWN = 'https://unknown.example.com';
/** Every API a policy or a request may name: the fixture's resource servers, one that is gone, one never known. */
const APIS = [API.A, API.B, API.C, API.ADMIN, API.CONSENT, API.GONE, UNKNOWN];
/** Scopes each known resource server defines (`getResourceServerInfo(...).scope`). */
const DEFINED = new Map(Object.entries(RESOURCE_SERVERS).map(([api, info]) => [api, String(info.scope).split(' ')]));
const OIDC = ['openid', 'offline_access'];
const SCOPES = [...new Set([...DEFINED.values()].flat()), 'g:read', 'a:admin', 'zz:undefined', ...OIDC];
/** Near misses of real APIs: never equal to one, so never allowed. */
const NEAR = [`${API.B}/`, 'https://API-B.example.com', `${API.A}#x`, 'https://\u0430pi-b.example.com'];
const TARGETS = [...APIS, ...NEAR];

const FIRST_PARTY: Record<ClientName, boolean> = { app: true, spa: true, partner: false, other: true };
const PUBLIC: Record<ClientName, boolean> = { app: false, spa: true, partner: false, other: false };

interface Entry {
  readonly audience: string;
  readonly scope: readonly string[];
}

interface World {
  rotate: boolean | undefined;
  skip: readonly string[];
  deny: readonly string[];
  publicClients: 'any' | undefined;
  storeKind: 'memory' | 'redis';
  cache: boolean;
  client: ClientName;
  dpop: boolean;
  openid: boolean;
  /** Scopes of API.A the user granted at login (the login always names API.A as its resource). */
  grantedA: readonly string[];
  policy: readonly Entry[] | undefined;
}

interface TokenRequest {
  readonly resource: readonly string[];
  readonly audience: readonly string[];
  readonly scope: string | undefined;
}

type Expected =
  | { status: 200; via: 'plain' | 'mrrt'; aud: string | undefined; scope: string[]; idToken: boolean }
  | { status: 400; error: string; reason: MrrtReason | undefined };

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

const union = (...lists: ReadonlyArray<readonly string[]>): string[] => [...new Set(lists.flat())];
const refusal = (error: string, reason?: MrrtReason): Expected => ({ status: 400, error, reason });
const loginScopes = (w: World): string[] => [...(w.openid ? ['openid'] : []), 'offline_access', ...w.grantedA];

/** oidc-provider's default rotateRefreshToken: public clients without a sender-constrained token (fresh tokens). */
const rotates = (w: World): boolean => w.rotate === true || (w.rotate === undefined && PUBLIC[w.client] && !w.dpop);

/** The policy entry that makes `target` reachable through MRRT, or why not (README "The exchange"). */
function eligibility(w: World, target: string): Entry | MrrtReason {
  if (!FIRST_PARTY[w.client]) return 'not_first_party';
  if (w.deny.includes(target)) return 'deny_listed';
  if (!w.policy) return 'no_policy';
  const entry = w.policy.find((candidate) => candidate.audience === target);
  if (!entry) return 'not_in_policy';
  if (!w.skip.includes(target)) return 'consent_required';
  if (!DEFINED.has(target)) return 'unknown_resource';
  return entry;
}

/** Plain oidc-provider refresh (no MRRT), for no target or the granted API.A. */
function plain(w: World, requested: Set<string> | undefined, target: string | undefined): Expected {
  const granted = loginScopes(w);
  if (requested && [...requested].some((scope) => !granted.includes(scope))) return refusal('invalid_scope');
  const scope = requested ? [...requested] : granted;
  const idToken = scope.includes('openid');
  // without a resource parameter, oidc-provider uses the token's resource unless openid asks for a userinfo token
  const resource = target ?? (scope.includes('openid') ? undefined : API.A);
  if (resource === undefined)
    return { status: 200, via: 'plain', aud: undefined, scope: loginScopes(w).filter((s) => OIDC.includes(s) && scope.includes(s)), idToken };
  return { status: 200, via: 'plain', aud: resource, scope: w.grantedA.filter((s) => scope.includes(s) && DEFINED.get(resource)!.includes(s)), idToken };
}

/** The documented outcome of one refresh request. */
function model(w: World, req: TokenRequest): Expected {
  const scopeParam = req.scope === '' ? undefined : req.scope;
  if (scopeParam !== undefined && !SCOPE_SYNTAX.test(scopeParam)) return refusal('invalid_scope');
  const requested = scopeParam === undefined ? undefined : new Set(scopeParam.split(' '));
  // a single empty value is no value (form semantics); repeated values always count
  const values = (list: readonly string[]): readonly string[] => (list.length === 1 && list[0] === '' ? [] : list);
  const resource = values(req.resource);
  const audience = values(req.audience);

  if (resource.length === 0 && audience.length === 0) return plain(w, requested, undefined);
  if (resource.length === 1 && audience.length === 1 && resource[0] !== audience[0]) return refusal('invalid_request');
  const targets = resource.length === 1 && audience.length === 1 ? resource : [...resource, ...audience];
  if (targets.length !== 1) return refusal('invalid_target', 'multiple_targets');

  const target = targets[0]!;
  const granted = target === API.A;
  const eligible = eligibility(w, target);
  // README "The exchange": the policy's rules first, then oidc-provider's own checks (the scope parameter
  // among them), then the rules that need the resource server's answer for the loaded account
  if (typeof eligible === 'string' && eligible !== 'unknown_resource') return granted ? plain(w, requested, target) : refusal('invalid_target', eligible);
  const entry = w.policy!.find((candidate) => candidate.audience === target)!;

  const rt = loginScopes(w);
  const policyScopes = entry.scope.filter((s) => !OIDC.includes(s));
  if (requested && [...requested].some((s) => !rt.includes(s) && !policyScopes.includes(s))) return refusal('invalid_scope', 'scope_not_allowed');
  if (eligible === 'unknown_resource') return granted ? plain(w, requested, target) : refusal('invalid_target', eligible);
  const candidates = requested ? [...requested] : union(rt, policyScopes);
  const scope = union(granted ? w.grantedA : [], policyScopes).filter((s) => candidates.includes(s) && DEFINED.get(target)!.includes(s));
  if (!granted && scope.length === 0) return refusal('invalid_scope', 'empty_scope');
  if (PUBLIC[w.client] && w.publicClients !== 'any' && !rotates(w) && !w.dpop) {
    // README: for a granted target the invalid_target rows do not apply, it is served as without MRRT
    if (!granted) return refusal('invalid_target', 'public_client_unprotected');
    return plain(w, requested, target);
  }
  return { status: 200, via: 'mrrt', aud: target, scope, idToken: (requested ? [...requested] : rt).includes('openid') };
}

/** An unprotected public client whose policy makes its own granted API eligible (README: served as without MRRT). */
const unprotectedWithGrantedPolicy = (w: World): boolean =>
  PUBLIC[w.client] && w.publicClients !== 'any' && !rotates(w) && !w.dpop && typeof eligibility(w, API.A) !== 'string';

// ---------------------------------------------------------------------------------------------
// Running a world against the real provider
// ---------------------------------------------------------------------------------------------

const seen = { mrrt: 0, plain: 0, refused: 0, reasons: new Set<string>() };

function describeCase(w: World, req: TokenRequest): string {
  return JSON.stringify({ world: w, request: req });
}

/** The invariants of the exchange (never wider than granted ∪ policy), checked independently of the model's exact answer. */
function expectWithinBounds(w: World, aud: unknown, scope: string, body: Record<string, unknown>): void {
  if (typeof aud !== 'string') return; // a userinfo token of a plain refresh, not an API token
  const granted = aud === API.A;
  const entry = eligibility(w, aud);
  expect(granted || typeof entry !== 'string').toBe(true);
  const allowed = union(granted ? w.grantedA : [], typeof entry === 'string' ? [] : entry.scope).filter((s) => DEFINED.get(aud)?.includes(s));
  for (const s of scope.split(' ').filter(Boolean)) {
    expect(allowed).toContain(s);
    if (!granted) expect(OIDC).not.toContain(s);
  }
  expect(body.scope).toBe(scope);
}

async function exchange(server: TestServer, w: World, req: TokenRequest, current: string, key: DpopKey | undefined, original: Snapshot): Promise<string> {
  const expected = model(w, req);
  const before = snapshot(server, current);
  const eventsBefore = server.events.length;
  const params: Record<string, string[]> = {};
  if (req.resource.length) params.resource = [...req.resource];
  if (req.audience.length) params.audience = [...req.audience];
  if (req.scope !== undefined) params.scope = [req.scope];
  const res = await refresh(server, current, params, { client: w.client, dpop: key });
  const events = server.events.slice(eventsBefore);
  const body = res.body as Record<string, unknown>;

  expect(res.status).toBeLessThan(500);
  if (expected.status !== 200) {
    seen.refused += 1;
    if (expected.reason) seen.reasons.add(expected.reason);
    expect({ status: res.status, error: body.error }).toEqual({ status: expected.status, error: expected.error });
    expect(body).not.toHaveProperty('access_token');
    expect(snapshot(server, current)).toEqual(before);
    expect(events).toEqual(expected.reason ? [expect.objectContaining({ outcome: 'refused', reason: expected.reason, error: expected.error })] : []);
    expectNothingPersisted(server, original);
    return current;
  }

  seen[expected.via] += 1;
  expect({ status: res.status, error: body.error }).toEqual({ status: 200, error: undefined });
  const token = await accessTokenView(server, body.access_token as string);
  expect(token.aud).toEqual(expected.aud);
  expect(new Set(token.scope.split(' ').filter(Boolean))).toEqual(new Set(expected.scope));
  expect(body.scope).toBe(token.scope);
  expectWithinBounds(w, token.aud, token.scope, body);
  expect(typeof body.id_token === 'string').toBe(expected.idToken);
  if (expected.via === 'mrrt') {
    expect(body.resource).toBe(expected.aud);
    expect(events).toEqual([expect.objectContaining({ outcome: 'issued', reason: 'policy', resolvedAudience: expected.aud, grantedScope: token.scope })]);
  } else {
    expect(body).not.toHaveProperty('resource');
    expect(events).toEqual([]);
  }
  const next = body.refresh_token as string;
  if (rotates(w)) expect(next).not.toBe(current);
  else expect(next).toBe(current);
  // the grant is untouched, the rotated token (if any) carries the original resource and scope
  expectNothingPersisted(server, original);
  return next;
}

async function run(w: World, requests: TokenRequest[]): Promise<void> {
  const store: PolicyStore = w.storeKind === 'redis' ? redisStore : new MemoryPolicyStore();
  if (w.policy) await store.set(w.client, w.policy);
  else await store.delete(w.client);
  const server = await startServer({
    mrrt: {
      store,
      allowSkippingConsent: w.skip,
      denyList: w.deny,
      ...(w.publicClients ? { publicClients: w.publicClients } : {}),
      ...(w.cache ? {} : { cache: false as const }),
    },
    rotate: w.rotate,
  });
  let req: TokenRequest | undefined;
  try {
    const key = w.dpop ? await dpopKey() : undefined;
    const tokens = await login(server, { client: w.client, scope: loginScopes(w).join(' '), dpop: key });
    const original = snapshot(server, tokens.refresh_token);
    let current = tokens.refresh_token;
    for (req of requests) current = await exchange(server, w, req, current, key, original);
    req = undefined;

    // the refresh token (or its rotated successor) still refreshes for its granted API
    const res = await refresh(server, current, { resource: API.A }, { client: w.client, dpop: key });
    expect(res.status).toBe(200);
    expect((await accessTokenView(server, res.body.access_token)).aud).toBe(API.A);
    expectNothingPersisted(server, original);
  } catch (err) {
    if (err instanceof Error && req) err.message = `${err.message}\nwhile sending ${describeCase(w, req)}`;
    throw err;
  } finally {
    await server.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

const entryArb: fc.Arbitrary<Entry> = fc.record({
  // the reachable APIs more often, so that many runs exercise a real exchange
  audience: fc.constantFrom(API.A, API.B, API.B, API.C, API.C, API.ADMIN, API.CONSENT, API.GONE, UNKNOWN),
  scope: fc.shuffledSubarray(SCOPES, { minLength: 1, maxLength: 4 }),
});

const worldArb: fc.Arbitrary<World> = fc.record({
  rotate: fc.constantFrom(true, false, undefined),
  skip: fc.oneof(fc.constant([...APIS]), fc.subarray(APIS)),
  deny: fc.oneof(fc.constant([API.ADMIN]), fc.constant([]), fc.subarray(APIS, { maxLength: 2 })),
  publicClients: fc.constantFrom(undefined, 'any' as const),
  storeKind: fc.constantFrom('memory' as const, 'redis' as const),
  cache: fc.boolean(),
  client: fc.constantFrom<ClientName>('app', 'spa', 'partner', 'other'),
  dpop: fc.boolean(),
  openid: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  grantedA: fc.subarray(['a:read', 'a:write']),
  policy: fc.option(fc.uniqueArray(entryArb, { selector: (entry) => entry.audience, minLength: 1, maxLength: 4 }), { nil: undefined, freq: 6 }),
});

function targetsArb(target: fc.Arbitrary<string>): fc.Arbitrary<Pick<TokenRequest, 'resource' | 'audience'>> {
  return fc.oneof(
    { weight: 1, arbitrary: fc.constant({ resource: [], audience: [] }) },
    { weight: 3, arbitrary: target.map((t) => ({ resource: [], audience: [t] })) },
    { weight: 3, arbitrary: target.map((t) => ({ resource: [t], audience: [] })) },
    { weight: 1, arbitrary: target.map((t) => ({ resource: [t], audience: [t] })) },
    {
      weight: 2,
      arbitrary: fc
        .tuple(target, target, fc.constantFrom('resource', 'audience', 'split'))
        .map(([x, y, how]) =>
          how === 'split' ? { resource: [x], audience: [y] } : how === 'resource' ? { resource: [x, y], audience: [] } : { resource: [], audience: [x, y] },
        ),
    },
  );
}

const scopeListArb = fc.option(
  fc.shuffledSubarray(SCOPES, { maxLength: 4 }).map((scopes) => scopes.join(' ')),
  { nil: undefined },
);

const requestArb: fc.Arbitrary<TokenRequest> = fc
  .record({ targets: targetsArb(fc.constantFrom(...TARGETS)), scope: scopeListArb })
  .map(({ targets, scope }) => ({ ...targets, scope }));

/** Hostile values: real APIs with characters inserted or case changed, random URLs, random text. */
const hostileTarget: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(...TARGETS),
  fc.tuple(fc.constantFrom(API.A, API.B, API.ADMIN), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 3 }), fc.nat()).map(([base, text, at]) => {
    const i = at % (base.length + 1);
    return base.slice(0, i) + text + base.slice(i);
  }),
  fc.constantFrom(API.A, API.B, API.ADMIN).map((base) => base.toUpperCase()),
  fc.webUrl({ withFragments: true, withQueryParameters: true }),
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty'),
);

const hostileScope: fc.Arbitrary<string | undefined> = fc.oneof(
  scopeListArb,
  fc.string({ unit: 'grapheme', maxLength: 30 }),
  fc.array(fc.constantFrom(...SCOPES, '__proto__', 'constructor', 'b:read\t', 'b:r\u0435ad'), { maxLength: 6 }).map((scopes) => scopes.join(' ')),
);

const hostileRequestArb: fc.Arbitrary<TokenRequest> = fc
  .record({ targets: targetsArb(hostileTarget), scope: hostileScope })
  .map(({ targets, scope }) => ({ ...targets, scope }));

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

describe('MRRT exchange properties against a real provider', () => {
  test(
    "random policies, grants and token requests: every answer is the model's and within the invariants",
    async () => {
      await fc.assert(
        fc.asyncProperty(worldArb, fc.array(requestArb, { minLength: 1, maxLength: 3 }), async (w, requests) => {
          await run(w, requests);
        }),
        runs(60),
      );
    },
    120_000 * FACTOR,
  );

  test(
    'hostile audience/resource/scope values: never a 5xx, never a token beyond the grant and the eligible policy',
    async () => {
      await fc.assert(
        fc.asyncProperty(worldArb, fc.array(hostileRequestArb, { minLength: 1, maxLength: 3 }), async (w, requests) => {
          await run(w, requests);
        }),
        runs(40),
      );
    },
    120_000 * FACTOR,
  );

  test(
    'a policy-only target never widens what is stored, over a chain of successful exchanges',
    async () => {
      // worlds where the chain is made of MRRT successes: a first-party client, a policy for B and C, both reachable
      const chainWorld = worldArb.map((w): World => ({
        ...w,
        client: w.client === 'partner' ? 'app' : w.client,
        deny: w.deny.filter((api) => api !== API.B && api !== API.C),
        skip: union(w.skip, [API.B, API.C]),
        policy: [
          { audience: API.B, scope: ['b:read', 'b:write', 'openid'] },
          { audience: API.C, scope: ['c:read', 'offline_access'] },
          ...(w.policy ?? []).filter((entry) => entry.audience !== API.B && entry.audience !== API.C),
        ],
      }));
      const chain = fc.array(
        fc
          .record({
            target: fc.constantFrom(API.B, API.C, API.A),
            scope: fc.option(fc.constantFrom('b:read', 'c:read', 'openid b:write', 'b:read c:read'), { nil: undefined }),
          })
          .map(({ target, scope }): TokenRequest => ({ resource: [], audience: [target], scope })),
        { minLength: 2, maxLength: 4 },
      );
      await fc.assert(
        fc.asyncProperty(chainWorld, chain, async (w, requests) => {
          await run(w, requests);
        }),
        runs(30),
      );
    },
    120_000 * FACTOR,
  );

  test(
    'an unprotected public client whose policy lists its granted API is served for it as without MRRT',
    async () => {
      // README "Errors": for a granted target the invalid_target rows (public_client_unprotected among
      // them) do not apply. Worlds: the SPA, refresh tokens neither rotated nor DPoP-bound, API.A eligible.
      const unprotected = worldArb.map((w): World => ({
        ...w,
        client: 'spa',
        rotate: false,
        dpop: false,
        publicClients: undefined,
        deny: w.deny.filter((api) => api !== API.A),
        skip: union(w.skip, [API.A]),
        policy: [{ audience: API.A, scope: ['a:write', 'a:read'] }, ...(w.policy ?? []).filter((entry) => entry.audience !== API.A)],
      }));
      const granted = fc
        .record({
          target: fc.constantFrom<Pick<TokenRequest, 'resource' | 'audience'>>({ resource: [API.A], audience: [] }, { resource: [], audience: [API.A] }),
          scope: fc.option(
            fc.shuffledSubarray(['a:read', 'a:write', ...OIDC], { maxLength: 3 }).map((scopes) => scopes.join(' ')),
            { nil: undefined },
          ),
        })
        .map(({ target, scope }): TokenRequest => ({ ...target, scope }));
      await fc.assert(
        fc.asyncProperty(unprotected, fc.array(fc.oneof(granted, requestArb), { minLength: 1, maxLength: 3 }), async (w, requests) => {
          expect(unprotectedWithGrantedPolicy(w)).toBe(true);
          await run(w, requests);
        }),
        runs(30),
      );
    },
    120_000 * FACTOR,
  );

  test('the properties were not vacuous: issued, plain and refused outcomes all occurred', () => {
    if (process.env.MRRT_FC_STATS) console.log(JSON.stringify({ ...seen, reasons: [...seen.reasons] }));
    if (seen.mrrt + seen.plain + seen.refused === 0) return; // the properties were filtered out (jest -t)
    expect(seen.mrrt).toBeGreaterThan(0);
    expect(seen.plain).toBeGreaterThan(0);
    expect(seen.refused).toBeGreaterThan(0);
  });
});
