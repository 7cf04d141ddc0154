// When Redis misbehaves: stopped in the middle of a run and started again, or answering slowly.
// Every Redis here is a redis-server this file starts itself (test/support/redis-server.ts); the
// shared test Redis is never stopped or slowed down.

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Redis, type RedisOptions } from 'ioredis';
import request from 'supertest';

import { RedisAdapter, RedisPolicyStore, type Policy } from '../lib/index.js';
import { API, SKIP_CONSENT, claims, login, refresh, startServer, type TestServer } from './support/fixture.js';
import { instanceConfig, startInstance, type Instance } from './support/instances.js';
import { QUICK_FAILURE, RedisServer, rawCommand } from './support/redis-server.js';

const POLICY: Policy = [
  { audience: API.A, scope: ['a:write'] },
  { audience: API.B, scope: ['b:read'] },
];
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

const redisServers: RedisServer[] = [];
const clients: Redis[] = [];
const servers: TestServer[] = [];
const stores: RedisPolicyStore[] = [];
const instances: Instance[] = [];

afterAll(async () => {
  for (const instance of instances) await instance.stop();
  for (const server of servers) await server.close();
  for (const store of stores) await store.close().catch(() => {});
  for (const client of clients) client.disconnect();
  await Promise.all(redisServers.map((server) => server.destroy()));
}, 30_000);

async function ownRedis(extraArgs: string[] = []): Promise<RedisServer> {
  const server = await RedisServer.start({ extraArgs });
  redisServers.push(server);
  return server;
}

async function client(server: RedisServer, options: RedisOptions = {}): Promise<Redis> {
  const redis = new Redis(server.url, { ...QUICK_FAILURE, ...options });
  redis.on('error', () => {});
  clients.push(redis);
  for (let attempt = 0; redis.status !== 'ready'; attempt += 1) {
    if (attempt > 200) throw new Error(`no connection to ${server.url}`);
    await sleep(10);
  }
  return redis;
}

/** Resolves once the redis-server on `port` stops answering PING within 150 ms (it is inside DEBUG SLEEP). */
async function untilAsleep(port: number): Promise<void> {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    try {
      await rawCommand(port, ['PING'], { timeout: 150 });
    } catch {
      return;
    }
    await sleep(10);
  }
  throw new Error(`redis-server on port ${port} never went to sleep`);
}

/** A failed request: a 5xx OAuth error without any token. */
function expectFailedClosed(res: request.Response): void {
  expect(res.status).toBeGreaterThanOrEqual(500);
  expect(res.body.error).toEqual(expect.any(String));
  expect(res.body).not.toHaveProperty('access_token');
  expect(res.body).not.toHaveProperty('refresh_token');
}

// The provider runs in its own process here: it must survive the outage on its own, and its
// process.on('unhandledRejection') (test/support/instance.mjs) sees every rejection nobody handled.
// (Inside a jest test file process.on never fires: `process` is jest's copy, and jest-circus puts
// its own listener on the real process, failing the running test instead.)
describe('Redis stopped mid-run and started again (policy store and adapter on it, provider in its own process)', () => {
  let redisServer: RedisServer;
  let store: RedisPolicyStore;
  let instance: Instance;
  const issuer = 'http://auth.mrrt.test';

  beforeAll(async () => {
    redisServer = await ownRedis();
    const storePrefix = 'mrrt-test:{outage}:';
    store = new RedisPolicyStore(await client(redisServer), { prefix: storePrefix });
    stores.push(store);
    await store.set('app', POLICY);
    const { config } = await instanceConfig({
      issuer,
      redisUrl: redisServer.url,
      adapterPrefix: 'mrrt-test:outage:',
      storePrefix,
      quickFailure: true,
      storeTimeout: 500,
    });
    instance = await startInstance('outage', config);
    instances.push(instance);
  }, 30_000);

  test('fails closed while Redis is down, keeps serving, and recovers by itself once Redis is back on the same port', async () => {
    const { server } = instance;
    const tokens = await login(server);
    const healthy = await refresh(server, tokens.refresh_token, { audience: API.B });
    expect(healthy.status).toBe(200);
    expect(claims(healthy.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
    const spare = await login(server); // a second token chain, still valid when Redis goes away

    await redisServer.stop(); // SHUTDOWN NOSAVE: every key is gone
    const outcomes: Record<string, string> = {};
    const started = performance.now();
    const policyOnly = await refresh(server, healthy.body.refresh_token, { audience: API.B });
    expectFailedClosed(policyOnly);
    outcomes['policy-only target'] = `${policyOnly.status} ${policyOnly.body.error}`;
    const other = await refresh(server, spare.refresh_token, { resource: API.B });
    expectFailedClosed(other);
    const granted = await refresh(server, spare.refresh_token, { resource: API.A });
    expectFailedClosed(granted);
    outcomes['granted target'] = `${granted.status} ${granted.body.error}`;
    const plain = await refresh(server, spare.refresh_token);
    expectFailedClosed(plain);
    outcomes['no target'] = `${plain.status} ${plain.body.error}`;
    const elapsed = performance.now() - started;

    // the process keeps serving what needs no Redis, and refuses what does without crashing
    const discovery = await request(server.url).get('/.well-known/openid-configuration');
    expect(discovery.status).toBe(200);
    expect(discovery.body.issuer).toBe(issuer);
    expect((await request(server.url).get('/jwks')).status).toBe(200);
    const authorization = await request(server.url)
      .get('/auth')
      .query({
        client_id: 'app',
        response_type: 'code',
        scope: 'openid',
        redirect_uri: 'https://app.example.com/cb',
        code_challenge: 'x'.repeat(43),
        code_challenge_method: 'S256',
      });
    expect(authorization.status).toBeGreaterThanOrEqual(500);
    outcomes['authorization request'] = `${authorization.status}`;
    expect(instance.alive).toBe(true);

    // Redis comes back, empty, on the same port: the provider reconnects without a restart
    await redisServer.start();
    const recoveryStarted = performance.now();
    let recovered: request.Response | undefined;
    let attempts = 0;
    for (; attempts < 100 && !recovered; attempts += 1) {
      try {
        await store.set('app', POLICY); // the operator re-seeds the policies the restart lost
        const fresh = await login(server);
        const res = await refresh(server, fresh.refresh_token, { audience: API.B });
        if (res.status === 200) recovered = res;
      } catch {
        // not reconnected yet
      }
      if (!recovered) await sleep(100);
    }
    expect(recovered).toBeDefined();
    expect(claims(recovered!.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
    expect(recovered!.body).toMatchObject({ resource: API.B, scope: 'b:read' });
    // tokens issued before the restart died with the data
    const lost = await refresh(server, spare.refresh_token, { resource: API.A });
    expect(lost.status).toBe(400);
    expect(lost.body.error).toBe('invalid_grant');

    const report = await instance.report();
    expect(instance.alive).toBe(true);
    expect(report.unhandledRejections).toEqual([]);
    console.log(
      `[outage] Redis stopped: ${JSON.stringify(outcomes)} (4 token requests answered in ${Math.round(elapsed)}ms); discovery 200; ` +
        `recovered ${Math.round(performance.now() - recoveryStarted)}ms after redis-server answered again (${attempts} attempt(s)); ` +
        `ioredis error events: ${report.redisErrors}; mrrt.store_error events: ${report.storeErrors}; ` +
        `MRRT refusals: ${JSON.stringify(report.events.filter((e) => e.outcome === 'refused').map((e) => `${e.reason}/${e.error}`))}; ` +
        `unhandled rejections: ${report.unhandledRejections.length}`,
    );
  }, 60_000);
});

describe('only the policy store down (adapter on another Redis)', () => {
  test('a policy-only target gets 503 when the store cannot answer and nothing is cached; a warm cache keeps serving within maxAge', async () => {
    const storeServer = await ownRedis();
    const adapterServer = await ownRedis();
    const store = new RedisPolicyStore(await client(storeServer), { prefix: 'mrrt-test:{store-down}:' });
    stores.push(store);
    await store.set('app', POLICY);
    const adapter = RedisAdapter.factory(await client(adapterServer), { prefix: 'mrrt-test:store-down:' });
    const cold = await startServer({ adapter, mrrt: { store, allowSkippingConsent: SKIP_CONSENT, storeTimeout: 500, cache: false }, rotate: true });
    servers.push(cold);
    const warm = await startServer({ adapter, mrrt: { store, allowSkippingConsent: SKIP_CONSENT, storeTimeout: 500 }, rotate: true });
    servers.push(warm);
    const [coldTokens, warmTokens] = await Promise.all([login(cold), login(warm)]);
    const warmed = await refresh(warm, warmTokens.refresh_token, { audience: API.B });
    expect(warmed.status).toBe(200);

    await storeServer.stop({ kill: true });
    const refused = await refresh(cold, coldTokens.refresh_token, { audience: API.B });
    expect(refused.status).toBe(503);
    expect(refused.body).toMatchObject({ error: 'temporarily_unavailable' });
    expect(refused.body).not.toHaveProperty('access_token');
    expect(cold.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'store_unavailable', error: 'temporarily_unavailable' });
    // degraded, never widened: the granted API without its policy scope a:write
    const granted = await refresh(cold, coldTokens.refresh_token, { resource: API.A });
    expect(granted.status).toBe(200);
    expect(claims(granted.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });

    // the warm instance answers from its cache (documented staleness bound: cache.maxAge)
    const cached = await refresh(warm, warmed.body.refresh_token, { audience: API.B });
    expect(cached.status).toBe(200);
    expect(claims(cached.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
    console.log(
      `[outage] policy store killed, adapter up: cache off -> policy-only ${refused.status} ${refused.body.error}, granted ${granted.status} ` +
        `(scope ${granted.body.scope}); warm cache -> policy-only ${cached.status} (served from the cache, at most cache.maxAge)`,
    );
  }, 30_000);
});

describe('a Redis that answers slowly (DEBUG SLEEP)', () => {
  let slow: RedisServer;
  let slowRedis: Redis;
  let server: TestServer;
  const storeErrors: unknown[] = [];

  beforeAll(async () => {
    slow = await ownRedis(['--enable-debug-command', 'local']);
    const adapterServer = await ownRedis();
    slowRedis = await client(slow);
    const store = new RedisPolicyStore(slowRedis, { prefix: 'mrrt-test:{slow}:' });
    stores.push(store);
    await store.set('app', POLICY);
    server = await startServer({
      adapter: RedisAdapter.factory(await client(adapterServer), { prefix: 'mrrt-test:slow-adapter:' }),
      mrrt: { store, allowSkippingConsent: SKIP_CONSENT, storeTimeout: 300, cache: false },
      rotate: true,
    });
    servers.push(server);
    server.provider.on('mrrt.store_error', (_ctx, err) => storeErrors.push(err));
  }, 30_000);

  test('a policy store slower than storeTimeout: 503 for a policy-only target, the granted target served without policy scopes, nothing consumed', async () => {
    const [one, two] = await Promise.all([login(server), login(server)]);
    const sleeping = rawCommand(slow.port, ['DEBUG', 'SLEEP', '2'], { timeout: 10_000 }); // not awaited: Redis is blocked for 2s
    await untilAsleep(slow.port);
    const started = performance.now();
    const [policyOnly, granted] = await Promise.all([
      refresh(server, one.refresh_token, { audience: API.B }),
      refresh(server, two.refresh_token, { resource: API.A }),
    ]);
    const elapsed = performance.now() - started;
    const stillSleeping = await Promise.race([sleeping.then(() => false), sleep(0).then(() => true)]);

    expect(policyOnly.status).toBe(503);
    expect(policyOnly.body).toMatchObject({ error: 'temporarily_unavailable' });
    expect(policyOnly.body).not.toHaveProperty('access_token');
    expect(server.events).toContainEqual(
      expect.objectContaining({ outcome: 'refused', reason: 'store_unavailable', error: 'temporarily_unavailable', requestedAudience: API.B }),
    );
    // degraded, never widened: the granted API without its policy scope a:write
    expect(granted.status).toBe(200);
    expect(claims(granted.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });
    expect(granted.body).not.toHaveProperty('resource');
    expect(storeErrors.length).toBeGreaterThanOrEqual(2);

    await sleeping;
    // the refused request consumed nothing: the same refresh token works once Redis answers again
    const retry = await refresh(server, one.refresh_token, { audience: API.B });
    expect(retry.status).toBe(200);
    expect(claims(retry.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
    console.log(
      `[outage] policy store blocked by DEBUG SLEEP 2 (storeTimeout 300, cache off): policy-only target ${policyOnly.status} ${policyOnly.body.error}, ` +
        `granted target ${granted.status} (scope ${granted.body.scope}), both answered in ${Math.round(elapsed)}ms, Redis still asleep when they were: ${stillSleeping}`,
    );
  }, 30_000);

  test('adapter and store on the same stalled Redis: commandTimeout bounds the token endpoint (5xx, no token) instead of a hang', async () => {
    const stalled = await ownRedis(['--enable-debug-command', 'local']);
    const redis = await client(stalled, { commandTimeout: 500 });
    const store = new RedisPolicyStore(redis, { prefix: 'mrrt-test:{stalled}:' });
    stores.push(store);
    await store.set('app', POLICY);
    const shared = await startServer({
      adapter: RedisAdapter.factory(redis, { prefix: 'mrrt-test:stalled-adapter:' }),
      mrrt: { store, allowSkippingConsent: SKIP_CONSENT, storeTimeout: 300, cache: false },
      rotate: true,
    });
    servers.push(shared);
    const tokens = await login(shared);
    const sleeping = rawCommand(stalled.port, ['DEBUG', 'SLEEP', '3'], { timeout: 10_000 });
    await untilAsleep(stalled.port);
    const started = performance.now();
    const res = await refresh(shared, tokens.refresh_token, { audience: API.B });
    const elapsed = performance.now() - started;
    const stillSleeping = await Promise.race([sleeping.then(() => false), sleep(0).then(() => true)]);
    expectFailedClosed(res);
    await sleeping;
    const retry = await refresh(shared, tokens.refresh_token, { audience: API.B });
    expect(retry.status).toBe(200);
    console.log(
      `[outage] adapter + store on one Redis blocked by DEBUG SLEEP 3 (commandTimeout 500): ${res.status} ${res.body.error} after ${Math.round(elapsed)}ms, ` +
        `Redis still asleep: ${stillSleeping}; same refresh token afterwards: ${retry.status}`,
    );
  }, 30_000);
});
