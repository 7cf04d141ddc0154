// Parallel refreshes of one rotated refresh token on RedisAdapter: exactly one request wins, every
// other one is an OAuth error (never a 5xx), and the winner's refresh token keeps working. The
// benign race is one client refreshing several times at once (two tabs, a retry); the hostile race
// is an attacker with a stolen refresh token flooding the token endpoint while the victim refreshes.
import { randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import type request from 'supertest';

import { MemoryPolicyStore, RedisAdapter, type RedisAdapterOptions } from '../lib/index.js';
import { API, SKIP_CONSENT, claims, login, refresh, startServer, type ClientName, type TestServer } from './support/fixture.js';

const LEVELS = [2, 10, 50] as const;
const redis = new Redis(process.env.MRRT_TEST_REDIS_URL!);
const prefix = `mrrt-test:race-${randomBytes(6).toString('hex')}:`;
const servers: TestServer[] = [];
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

afterAll(async () => {
  await Promise.all(servers.map((server) => server.close()));
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
    cursor = next;
    if (keys.length) await redis.del(...keys);
  } while (cursor !== '0');
  await redis.quit();
}, 30_000);

async function server(mrrt: boolean, adapter: Omit<RedisAdapterOptions, 'prefix'> = {}): Promise<TestServer> {
  const store = new MemoryPolicyStore();
  for (const client of ['app', 'spa']) await store.set(client, [{ audience: API.B, scope: ['b:read'] }]);
  const started = await startServer({
    adapter: RedisAdapter.factory(redis, { prefix, ...adapter }),
    mrrt: mrrt ? { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] } : false,
    rotate: true,
  });
  servers.push(started);
  return started;
}

interface Attempt {
  readonly who: 'victim' | 'attacker' | 'client';
  readonly params: Record<string, string>;
}

interface Race {
  readonly attempts: readonly Attempt[];
  readonly responses: readonly request.Response[];
  readonly winners: number[];
  /** `"<status> <error>"` -> count */
  readonly outcomes: Record<string, number>;
  readonly serverErrors: number;
  readonly grantRevoked: boolean;
}

const count = (events: readonly string[], name: string) => events.filter((event) => event === name).length;

/** Sends every attempt with the same refresh token at once and sorts out what came back. */
async function race(target: TestServer, refreshToken: string, client: ClientName, attempts: readonly Attempt[]): Promise<Race> {
  const errorsBefore = count(target.providerEvents, 'server_error');
  const revokedBefore = count(target.providerEvents, 'grant.revoked');
  const responses = await Promise.all(attempts.map((attempt) => refresh(target, refreshToken, attempt.params, { client })));
  const outcomes: Record<string, number> = {};
  for (const res of responses) {
    const key = `${res.status} ${res.body.error ?? ''}`.trim();
    outcomes[key] = (outcomes[key] ?? 0) + 1;
  }
  return {
    attempts,
    responses,
    winners: responses.flatMap((res, i) => (res.status === 200 ? [i] : [])),
    outcomes,
    serverErrors: count(target.providerEvents, 'server_error') - errorsBefore,
    grantRevoked: count(target.providerEvents, 'grant.revoked') > revokedBefore,
  };
}

/** One winner, every loser `400 invalid_grant`, no 5xx and no server_error event. */
function expectOneWinner(result: Race): request.Response {
  expect(result.winners).toHaveLength(1);
  expect(result.outcomes).toEqual({ 200: 1, '400 invalid_grant': result.attempts.length - 1 });
  expect(result.serverErrors).toBe(0);
  return result.responses[result.winners[0]!]!;
}

/** The access token matches what the winning request asked for. */
function expectTokenFor(winner: request.Response, attempt: Attempt): void {
  const audience = attempt.params.audience ?? attempt.params.resource;
  expect(claims(winner.body.access_token).aud).toBe(audience);
  if (attempt.params.audience) expect(winner.body.resource).toBe(API.B);
}

/** The winner's new refresh token still refreshes (twice: its successor too); the raced one stays refused. */
async function expectWinnerKeepsSession(target: TestServer, client: ClientName, raced: string, winner: request.Response): Promise<void> {
  const again = await refresh(target, raced, { resource: API.A }, { client });
  expect(again.status).toBe(400);
  expect(again.body.error).toBe('invalid_grant');
  const next = await refresh(target, winner.body.refresh_token, { resource: API.A }, { client });
  expect(next.status).toBe(200);
  expect(claims(next.body.access_token).aud).toBe(API.A);
  const after = await refresh(target, next.body.refresh_token, { resource: API.A }, { client });
  expect(after.status).toBe(200);
}

const FLAVOURS = [
  { name: 'plain oidc-provider, plain refreshes', mrrt: false, params: { resource: API.A } },
  { name: 'withMrrt, plain refreshes', mrrt: true, params: { resource: API.A } },
  { name: 'withMrrt, MRRT exchanges', mrrt: true, params: { audience: API.B } },
] as const;

const log: string[] = [];
afterAll(() => {
  if (log.length)
    console.log(`[rotation-race] RedisAdapter, rotation on, one refresh token raced by N requests:\n${log.map((line) => `  ${line}`).join('\n')}`);
});

describe('benign race: one client sends N identical refreshes at once (default reuseInterval)', () => {
  const targets = new Map<boolean, TestServer>();
  beforeAll(async () => {
    targets.set(false, await server(false));
    targets.set(true, await server(true));
  });

  for (const flavour of FLAVOURS) {
    test.each(LEVELS)(`${flavour.name}: N = %i -> one winner, the rest invalid_grant, the grant survives and the winner's token works`, async (n) => {
      const target = targets.get(flavour.mrrt)!;
      const tokens = await login(target);
      const attempts = Array.from({ length: n }, (): Attempt => ({ who: 'client', params: flavour.params }));
      const result = await race(target, tokens.refresh_token, 'app', attempts);
      const winner = expectOneWinner(result);
      expectTokenFor(winner, attempts[0]!);
      expect(result.grantRevoked).toBe(false);
      await expectWinnerKeepsSession(target, 'app', tokens.refresh_token, winner);
      log.push(`benign, ${flavour.name}, N=${n}: ${JSON.stringify(result.outcomes)}, grant ${result.grantRevoked ? 'revoked' : 'kept'}`);
    });
  }
});

describe('hostile race: an attacker floods N - 1 refreshes (MRRT exchanges and plain refreshes) with a stolen public-client refresh token while the victim refreshes once', () => {
  let target: TestServer;
  let plain: TestServer;
  beforeAll(async () => {
    target = await server(true);
    plain = await server(false);
  });

  function hostileAttempts(n: number, victim: Record<string, string>, mrrt: boolean): Attempt[] {
    const attempts = Array.from({ length: n - 1 }, (_, i): Attempt => ({
      who: 'attacker',
      params: mrrt && i % 2 === 0 ? { audience: API.B } : { resource: API.A },
    }));
    attempts.splice(Math.floor(Math.random() * n), 0, { who: 'victim', params: victim });
    return attempts;
  }

  test.each(LEVELS)('withMrrt, victim plain refresh: N = %i -> one winner, the rest invalid_grant, whoever won keeps a working session', async (n) => {
    const tokens = await login(target, { client: 'spa' });
    const result = await race(target, tokens.refresh_token, 'spa', hostileAttempts(n, { resource: API.A }, true));
    const winner = expectOneWinner(result);
    const won = result.attempts[result.winners[0]!]!;
    expectTokenFor(winner, won);
    expect(result.grantRevoked).toBe(false);
    await expectWinnerKeepsSession(target, 'spa', tokens.refresh_token, winner);
    log.push(`hostile, withMrrt, victim refreshes A, N=${n}: ${JSON.stringify(result.outcomes)}, won by the ${won.who} (${JSON.stringify(won.params)})`);
  });

  test.each(LEVELS)("withMrrt, victim MRRT exchange: N = %i -> one winner, no 5xx, the winner's token works", async (n) => {
    const tokens = await login(target, { client: 'spa' });
    const result = await race(target, tokens.refresh_token, 'spa', hostileAttempts(n, { audience: API.B }, true));
    const winner = expectOneWinner(result);
    const won = result.attempts[result.winners[0]!]!;
    expectTokenFor(winner, won);
    await expectWinnerKeepsSession(target, 'spa', tokens.refresh_token, winner);
    log.push(`hostile, withMrrt, victim exchanges for B, N=${n}: ${JSON.stringify(result.outcomes)}, won by the ${won.who} (${JSON.stringify(won.params)})`);
  });

  test.each(LEVELS)("plain oidc-provider: N = %i -> one winner, no 5xx, the winner's token works", async (n) => {
    const tokens = await login(plain, { client: 'spa' });
    const result = await race(plain, tokens.refresh_token, 'spa', hostileAttempts(n, { resource: API.A }, false));
    const winner = expectOneWinner(result);
    expectTokenFor(winner, result.attempts[result.winners[0]!]!);
    await expectWinnerKeepsSession(plain, 'spa', tokens.refresh_token, winner);
    log.push(`hostile, plain oidc-provider, N=${n}: ${JSON.stringify(result.outcomes)}`);
  });
});

describe('after the reuse interval, the raced refresh token is reuse: the grant is revoked for the winner too', () => {
  const INTERVAL = 0.5;

  test.each([
    ['plain refresh', { resource: API.A }],
    ['MRRT exchange', { audience: API.B }],
  ] as const)("%s: the loser retries after reuseInterval -> invalid_grant, grant revoked, the winner's token refused", async (_label, params) => {
    const target = await server(true, { reuseInterval: INTERVAL });
    const tokens = await login(target, { client: 'spa' });
    const result = await race(target, tokens.refresh_token, 'spa', [
      { who: 'victim', params },
      { who: 'attacker', params },
    ]);
    const winner = expectOneWinner(result);
    expect(result.grantRevoked).toBe(false);

    await sleep(INTERVAL * 1000 + 100);
    const retry = await refresh(target, tokens.refresh_token, params, { client: 'spa' });
    expect(retry.status).toBe(400);
    expect(retry.body.error).toBe('invalid_grant');
    expect(count(target.providerEvents, 'grant.revoked')).toBe(1);
    const refused = await refresh(target, winner.body.refresh_token, { resource: API.A }, { client: 'spa' });
    expect(refused.status).toBe(400);
    expect(refused.body.error).toBe('invalid_grant');
  });
});

describe('reuseInterval: 0 (reuse detection for every request that reads the token after the rotation)', () => {
  let target: TestServer;
  beforeAll(async () => {
    target = await server(true, { reuseInterval: 0 });
  });

  test.each(LEVELS)(
    "N = %i MRRT exchanges and plain refreshes -> one winner, no 5xx; the winner's token works unless reuse detection revoked the grant",
    async (n) => {
      const tokens = await login(target);
      const attempts = Array.from({ length: n }, (_, i): Attempt => ({ who: 'client', params: i % 2 ? { resource: API.A } : { audience: API.B } }));
      const result = await race(target, tokens.refresh_token, 'app', attempts);
      const winner = expectOneWinner(result);
      expectTokenFor(winner, result.attempts[result.winners[0]!]!);
      const next = await refresh(target, winner.body.refresh_token, { resource: API.A });
      expect(next.status).toBe(result.grantRevoked ? 400 : 200);
      log.push(
        `reuseInterval 0, withMrrt, mixed, N=${n}: ${JSON.stringify(result.outcomes)}, grant ${result.grantRevoked ? 'revoked (a loser read the token after the rotation)' : 'kept'}`,
      );
    },
  );
});
