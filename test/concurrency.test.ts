// Parallel load on one refresh token and on one policy: MRRT must behave exactly as plain
// oidc-provider does under the same burst, and concurrent admin writes must serialize.
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import express from 'express';
import { Redis } from 'ioredis';
import request from 'supertest';

import { RedisAdapter, RedisPolicyStore, type PolicyRecord, type Policy } from '../lib/index.js';
import { createPolicyRouter, type PolicyAuditEvent } from '../lib/express.js';
import { API, SKIP_CONSENT, claims, login, refresh, startServer, type TestServer } from './support/fixture.js';
import { deleteKeys } from './support/redis-keys.js';

const BURST = 20;
const REDIS_URL = process.env.MRRT_TEST_REDIS_URL!;
const run = randomBytes(6).toString('hex');
const adapterPrefix = `mrrt-test:concurrency-${run}:`;
const storePrefix = `mrrt-test:{concurrency-${run}}:`;
const clients: Redis[] = [];
const stores: RedisPolicyStore[] = [];
const closers: (() => Promise<void>)[] = [];

const POLICY: Policy = [
  { audience: API.B, scope: ['b:read'] },
  { audience: API.C, scope: ['c:read'] },
];

function connect(): Redis {
  const redis = new Redis(REDIS_URL);
  clients.push(redis);
  return redis;
}
function newStore(redis: Redis = connect()): RedisPolicyStore {
  const store = new RedisPolicyStore(redis, { prefix: storePrefix });
  stores.push(store);
  return store;
}

afterAll(async () => {
  for (const close of closers) await close();
  for (const store of stores) await store.close();
  const redis = clients[0]!;
  for (const prefix of [adapterPrefix, storePrefix]) await deleteKeys(redis, prefix);
  await Promise.all(clients.map((client) => client.quit()));
}, 30_000);

async function server(options: { mrrt: boolean; rotate: boolean }): Promise<TestServer> {
  const store = newStore();
  await store.set('app', POLICY);
  const started = await startServer({
    adapter: RedisAdapter.factory(connect(), { prefix: adapterPrefix }),
    mrrt: options.mrrt ? { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] } : false,
    rotate: options.rotate,
  });
  closers.push(() => started.close());
  return started;
}

interface Burst {
  /** `"<status> <error>"` -> count */
  outcomes: Record<string, number>;
  successes: request.Response[];
  /** How many of the refresh tokens returned by successful requests still refresh afterwards. */
  usableAfter: number;
  grantRevoked: boolean;
}

/** Sends BURST identical refresh requests for one fresh refresh token at once, then probes what is left. */
async function burst(target: TestServer, params: Record<string, string>): Promise<Burst> {
  const tokens = await login(target);
  const revocationsBefore = target.providerEvents.filter((e) => e === 'grant.revoked').length;
  const results = await Promise.all(Array.from({ length: BURST }, () => refresh(target, tokens.refresh_token, params)));
  const outcomes: Record<string, number> = {};
  for (const res of results) {
    const key = `${res.status} ${res.body.error ?? ''}`.trim();
    outcomes[key] = (outcomes[key] ?? 0) + 1;
  }
  const successes = results.filter((res) => res.status === 200);
  let usableAfter = 0;
  for (const token of new Set(successes.map((res) => res.body.refresh_token as string))) {
    if ((await refresh(target, token, { resource: API.A })).status === 200) usableAfter += 1;
  }
  const grantRevoked = target.providerEvents.filter((e) => e === 'grant.revoked').length > revocationsBefore;
  return { outcomes, successes, usableAfter, grantRevoked };
}

describe(`${BURST} parallel refresh requests with one refresh token`, () => {
  let plain: TestServer;
  let mrrt: TestServer;
  let plainNoRotation: TestServer;
  let mrrtNoRotation: TestServer;

  beforeAll(async () => {
    plain = await server({ mrrt: false, rotate: true });
    mrrt = await server({ mrrt: true, rotate: true });
    plainNoRotation = await server({ mrrt: false, rotate: false });
    mrrtNoRotation = await server({ mrrt: true, rotate: false });
  });

  /**
   * A burst with rotation on, on the package's RedisAdapter (atomic consume, default reuseInterval):
   * exactly one request rotates the token and wins; every other one is refused with invalid_grant
   * (the token is already consumed, or reads as absent within the reuse interval), never a 5xx; a
   * benign double refresh does not revoke the grant, so the winner's new refresh token keeps working.
   */
  function expectOneWinner(result: Burst): void {
    expect(Object.keys(result.outcomes).every((key) => key === '200' || key === '400 invalid_grant')).toBe(true);
    expect(result.successes).toHaveLength(1);
    expect(result.outcomes['400 invalid_grant']).toBe(BURST - 1);
    expect(result.grantRevoked).toBe(false);
    expect(result.usableAfter).toBe(1);
  }

  test('rotation on: MRRT behaves as plain oidc-provider on the same adapter (one winner, the others invalid_grant, the grant survives)', async () => {
    const rounds: { plain: Burst; mrrtPolicy: Burst; mrrtGranted: Burst }[] = [];
    for (let round = 0; round < 3; round += 1) {
      const [plainBurst, policyBurst, grantedBurst] = await Promise.all([
        burst(plain, { resource: API.A }),
        burst(mrrt, { audience: API.B }),
        burst(mrrt, { resource: API.A }),
      ]);
      rounds.push({ plain: plainBurst, mrrtPolicy: policyBurst, mrrtGranted: grantedBurst });
    }
    for (const { plain: p, mrrtPolicy, mrrtGranted } of rounds) {
      expectOneWinner(p);
      expectOneWinner(mrrtPolicy);
      expectOneWinner(mrrtGranted);
      for (const res of p.successes) expect(claims(res.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });
      for (const res of mrrtGranted.successes) expect(claims(res.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });
      for (const res of mrrtPolicy.successes) {
        expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
        expect(res.body).toMatchObject({ resource: API.B, scope: 'b:read' });
      }
    }
    const summary = (b: Burst): string =>
      `${JSON.stringify(b.outcomes)} grant ${b.grantRevoked ? 'revoked' : 'survives'}, new refresh tokens usable afterwards: ${b.usableAfter}`;
    console.log(
      `[concurrency] ${BURST} parallel refreshes of one refresh token, rotation on, RedisAdapter, 3 rounds:\n` +
        rounds
          .map(
            (r, i) =>
              `  round ${i + 1}: plain oidc-provider (resource A): ${summary(r.plain)}\n` +
              `           withMrrt, policy-only target B: ${summary(r.mrrtPolicy)}\n` +
              `           withMrrt, granted target A:     ${summary(r.mrrtGranted)}`,
          )
          .join('\n'),
    );
  });

  test('rotation off: every request succeeds and the refresh token stays usable, plain and MRRT alike', async () => {
    const [plainBurst, policyBurst] = await Promise.all([burst(plainNoRotation, { resource: API.A }), burst(mrrtNoRotation, { audience: API.B })]);
    for (const result of [plainBurst, policyBurst]) {
      expect(result.outcomes).toEqual({ 200: BURST });
      expect(new Set(result.successes.map((res) => res.body.refresh_token)).size).toBe(1);
      expect(result.usableAfter).toBe(1);
      expect(result.grantRevoked).toBe(false);
    }
    for (const res of policyBurst.successes) expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
    console.log(
      `[concurrency] ${BURST} parallel refreshes, rotation off: plain ${JSON.stringify(plainBurst.outcomes)}, MRRT ${JSON.stringify(policyBurst.outcomes)}`,
    );
  });

  test("parallel exchanges of different tokens for different targets never see each other's overlay", async () => {
    const logins = await Promise.all(Array.from({ length: 8 }, (_, i) => login(mrrtNoRotation, { sub: `user-${i}` })));
    const cases: { params: Record<string, string>; status: number; aud?: string; scope?: string; resource?: string; error?: string }[] = [
      { params: { audience: API.B }, status: 200, aud: API.B, scope: 'b:read', resource: API.B },
      { params: { resource: API.C }, status: 200, scope: 'c:read', resource: API.C }, // opaque access token
      { params: { resource: API.A }, status: 200, aud: API.A, scope: 'a:read' },
      { params: { audience: API.CONSENT }, status: 400, error: 'invalid_target' },
      { params: {}, status: 200, scope: 'openid offline_access' },
    ];
    const requests = logins.flatMap((tokens, i) => cases.map((c) => ({ ...c, sub: `user-${i}`, token: tokens.refresh_token })));
    const results = await Promise.all(requests.map((r) => refresh(mrrtNoRotation, r.token, r.params)));
    results.forEach((res, i) => {
      const expected = requests[i]!;
      expect(res.status).toBe(expected.status);
      if (expected.status !== 200) {
        expect(res.body.error).toBe(expected.error);
        return;
      }
      expect(res.body.scope).toBe(expected.scope);
      expect(res.body.resource).toBe(expected.resource);
      if (expected.aud) expect(claims(res.body.access_token)).toMatchObject({ aud: expected.aud, scope: expected.scope, sub: expected.sub });
      expect(res.body.id_token && claims(res.body.id_token).sub).toBe(expected.sub);
    });
  });
});

describe('parallel policy writes with the same If-Match', () => {
  test(`${BURST} RedisPolicyStore writes from 4 connections: exactly one wins`, async () => {
    const writers = Array.from({ length: 4 }, () => newStore());
    const base = await writers[0]!.set('race', POLICY);
    const results = await Promise.allSettled(
      Array.from({ length: BURST }, (_, i) => writers[i % 4]!.set('race', [{ audience: API.B, scope: [`w${i}`] }], { ifMatch: base.version })),
    );
    const won = results.filter((r): r is PromiseFulfilledResult<PolicyRecord> => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    expect(results.filter((r) => r.status === 'rejected' && (r.reason as Error).name === 'PolicyConflictError')).toHaveLength(BURST - 1);
    for (const writer of writers) expect(await writer.get('race')).toEqual(won[0]!.value);
  });

  test(`${BURST} admin API PUTs through two provider instances: exactly one 200, the rest 412, one audit event, the next exchange sees the winner`, async () => {
    const audits: PolicyAuditEvent[] = [];
    const admins: { provider: TestServer; url: string }[] = [];
    for (let i = 0; i < 2; i += 1) {
      const provider = await server({ mrrt: true, rotate: true });
      const app = express();
      app.use(
        '/admin',
        createPolicyRouter({
          provider: provider.provider,
          authorize: (req) => (req.get('authorization') === 'Bearer test-admin' ? { actor: 'tester' } : false),
          audience: API.ADMIN,
          onAudit: (event) => audits.push(event),
        }),
      );
      const admin = http.createServer(app);
      await new Promise<void>((resolve) => admin.listen(0, '127.0.0.1', resolve));
      closers.push(
        () =>
          new Promise<void>((resolve) => {
            admin.closeAllConnections();
            admin.close(() => resolve());
          }),
      );
      admins.push({ provider, url: `http://127.0.0.1:${(admin.address() as AddressInfo).port}` });
    }

    const current = await request(admins[0]!.url).get('/admin/clients/app/policy').set('Authorization', 'Bearer test-admin');
    expect(current.status).toBe(200);
    const etag = current.headers.etag!;
    expect(etag).toEqual(expect.any(String));
    // warm both instances' caches with the current policy
    for (const { provider } of admins) {
      const tokens = await login(provider);
      expect((await refresh(provider, tokens.refresh_token, { audience: API.C })).status).toBe(200);
    }

    const variants: Policy[] = [
      [{ audience: API.B, scope: ['b:read'] }],
      [{ audience: API.B, scope: ['b:write'] }],
      [{ audience: API.B, scope: ['b:read', 'b:write'] }],
      [{ audience: API.C, scope: ['c:write'] }],
    ];
    const results = await Promise.all(
      Array.from({ length: BURST }, (_, i) =>
        request(admins[i % 2]!.url)
          .put('/admin/clients/app/policy')
          .set('Authorization', 'Bearer test-admin')
          .set('If-Match', etag)
          .send({ policies: variants[i % variants.length] }),
      ),
    );
    const statuses = results.map((res) => res.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    expect(statuses.filter((s) => s === 412)).toHaveLength(BURST - 1);
    for (const res of results.filter((r) => r.status === 412)) expect(res.body.error).toBe('precondition_failed');
    const winner = results.find((res) => res.status === 200)!;
    expect(audits).toHaveLength(1);
    expect(audits[0]).toMatchObject({ action: 'put', clientId: 'app', actor: 'tester', version: winner.body.version });

    const stored = await request(admins[1]!.url).get('/admin/clients/app/policy').set('Authorization', 'Bearer test-admin');
    expect(stored.body).toEqual(winner.body);
    // C left the policy unless the winner is the C variant; every instance applies the winner
    const winnerHasC = (winner.body.policies as Policy).some((entry) => entry.audience === API.C);
    for (const { provider } of admins) {
      let token = (await login(provider)).refresh_token;
      let res = await refresh(provider, token, { audience: API.C });
      for (let attempt = 0; attempt < 100 && res.status !== (winnerHasC ? 200 : 400); attempt += 1) {
        if (res.status === 200) token = res.body.refresh_token;
        await new Promise((resolve) => setTimeout(resolve, 20));
        res = await refresh(provider, token, { audience: API.C });
      }
      expect(res.status).toBe(winnerHasC ? 200 : 400);
      if (!winnerHasC) expect(res.body.error).toBe('invalid_target');
    }
    console.log(
      `[concurrency] ${BURST} parallel admin PUTs with one If-Match over 2 instances: ${JSON.stringify(statuses.reduce<Record<number, number>>((acc, s) => ({ ...acc, [s]: (acc[s] ?? 0) + 1 }), {}))}`,
    );
  });
});
