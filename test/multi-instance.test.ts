// Three provider instances as separate OS processes (test/support/instance.mjs, running dist/) on the
// shared test Redis, under this run's own prefixes: tokens, rotation, reuse detection and policy
// changes must hold across instances exactly as on one.
import { randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import * as jose from 'jose';
import request from 'supertest';

import { RedisPolicyStore, type Policy } from '../lib/index.js';
import { API, CLIENTS, login, refresh } from './support/fixture.js';
import { instanceConfig, startInstance, type Instance } from './support/instances.js';
import { deleteKeys } from './support/redis-keys.js';

const ISSUER = 'http://auth.mrrt.test';
/** The documented default `cache.maxAge`: the longest a policy change may take to apply anywhere. */
const MAX_AGE = 30_000;

const REDIS_URL = process.env.MRRT_TEST_REDIS_URL!;
const run = randomBytes(6).toString('hex');
const adapterPrefix = `mrrt-test:multi-${run}:oidc:`;
const storePrefix = `mrrt-test:{multi-${run}}:`;
const redis = new Redis(REDIS_URL);
const store = new RedisPolicyStore(redis, { prefix: storePrefix });

const FULL: Policy = [
  { audience: API.B, scope: ['b:read', 'b:write'] },
  { audience: API.C, scope: ['c:read'] },
];
const NARROW: Policy = [{ audience: API.B, scope: ['b:read'] }];

const instances: Instance[] = [];
let publicKey: jose.CryptoKey;

beforeAll(async () => {
  const { config, publicKey: key } = await instanceConfig({ issuer: ISSUER, redisUrl: REDIS_URL, adapterPrefix, storePrefix });
  publicKey = key;
  await store.set('app', FULL);
  const started = await Promise.allSettled(['one', 'two', 'three'].map((name) => startInstance(name, config)));
  for (const result of started) if (result.status === 'fulfilled') instances.push(result.value);
  const failed = started.find((result): result is PromiseRejectedResult => result.status === 'rejected');
  if (failed) throw failed.reason;
}, 60_000);

afterAll(async () => {
  await Promise.all(instances.map((instance) => instance.stop()));
  await store.close();
  for (const prefix of [adapterPrefix, storePrefix]) await deleteKeys(redis, prefix);
  await redis.quit();
}, 30_000);

const events = async (instance: Instance) => (await instance.report()).events;

async function verify(token: string): Promise<jose.JWTPayload> {
  const { payload } = await jose.jwtVerify(token, publicKey, { issuer: ISSUER });
  return payload;
}

describe('provider instances in separate processes on one Redis', () => {
  test('three processes, one issuer', async () => {
    const [one, two, three] = instances;
    expect(new Set(instances.map((i) => i.pid)).size).toBe(3);
    expect(instances.map((i) => i.pid)).not.toContain(process.pid);
    for (const instance of [one!, two!, three!]) {
      const res = await request(instance.url).get('/.well-known/openid-configuration');
      expect(res.status).toBe(200);
      expect(res.body.issuer).toBe(ISSUER);
    }
  });

  test('a refresh token issued through instance 1 is MRRT-exchanged through instances 2 and 3; tokens verify and introspect everywhere', async () => {
    const [one, two, three] = instances as [Instance, Instance, Instance];
    const tokens = await login(one.server);

    const viaTwo = await refresh(two.server, tokens.refresh_token, { audience: API.B });
    expect(viaTwo.status).toBe(200);
    expect(viaTwo.body).toMatchObject({ scope: 'b:read b:write', resource: API.B });
    expect(await verify(viaTwo.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read b:write', sub: 'alice', client_id: 'app' });
    expect(viaTwo.body.refresh_token).not.toBe(tokens.refresh_token);

    const viaThree = await refresh(three.server, viaTwo.body.refresh_token, { resource: API.C });
    expect(viaThree.status).toBe(200);
    expect(viaThree.body).toMatchObject({ scope: 'c:read', resource: API.C });
    // an opaque token issued by instance 3 is known to instance 1 (it lives in Redis)
    const introspection = await request(one.url)
      .post('/token/introspection')
      .type('form')
      .send({ token: viaThree.body.access_token, client_id: CLIENTS.app.client_id, client_secret: CLIENTS.app.client_secret });
    expect(introspection.status).toBe(200);
    expect(introspection.body).toMatchObject({ active: true, aud: API.C, scope: 'c:read', client_id: 'app', sub: 'alice', iss: ISSUER });

    // and back on instance 1 for the originally granted API
    const back = await refresh(one.server, viaThree.body.refresh_token, { resource: API.A });
    expect(back.status).toBe(200);
    expect(await verify(back.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });

    expect(await events(two)).toContainEqual({ event: 'mrrt.exchange', outcome: 'issued', reason: 'policy', audience: API.B });
    expect(await events(three)).toContainEqual({ event: 'mrrt.exchange', outcome: 'issued', reason: 'policy', audience: API.C });
  });

  test('a policy change written by one process applies on every instance; propagation delay measured', async () => {
    // one login (one token chain) per instance, so that the instances can be polled in parallel
    const chains = await Promise.all(instances.map(async (instance) => ({ instance, token: (await login(instance.server)).refresh_token })));
    /** An exchange on the chain's instance; a success rotates the chain's token. */
    const exchange = async (chain: (typeof chains)[number], audience: string) => {
      const res = await refresh(chain.instance.server, chain.token, { audience });
      if (res.status === 200) chain.token = res.body.refresh_token;
      return res;
    };
    // warm every instance's policy cache, so that only the change announcement can make it see the change
    for (const chain of chains) {
      expect((await exchange(chain, API.C)).status).toBe(200);
      expect((await exchange(chain, API.B)).body.scope).toBe('b:read b:write');
    }

    // a listener in this process with its own subscriber connection: when the announcement arrives
    const listenerRedis = new Redis(REDIS_URL);
    const listener = new RedisPolicyStore(listenerRedis, { prefix: storePrefix });
    let announcedAt = 0;
    const off = listener.subscribe((id) => {
      if (id === 'app') announcedAt = performance.now();
    });
    for (let attempt = 0; announcedAt === 0 && attempt < 100; attempt += 1) {
      await redis.publish(listener.channel, 'app');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(announcedAt).toBeGreaterThan(0);

    const samples: { instance: string; round: number; ms: number; stale: number }[] = [];
    const announcements: number[] = [];
    for (let round = 0; round < 6; round += 1) {
      const narrowing = round % 2 === 0;
      announcedAt = 0;
      await store.set('app', narrowing ? NARROW : FULL);
      const written = performance.now();
      await Promise.all(
        chains.map(async (chain) => {
          let stale = 0;
          for (let attempt = 0; ; attempt += 1) {
            const res = await exchange(chain, API.C);
            const applied = narrowing ? res.status === 400 && res.body.error === 'invalid_target' : res.status === 200;
            if (applied) break;
            // still the previous policy, nothing else
            if (narrowing) expect(res.status).toBe(200);
            else expect(res.body.error).toBe('invalid_target');
            stale += 1;
            const elapsed = performance.now() - written;
            if (elapsed > MAX_AGE || attempt >= 3000)
              throw new Error(`instance ${chain.instance.name} still used the old policy ${Math.round(elapsed)}ms after the write`);
            await new Promise((resolve) => setTimeout(resolve, 10));
          }
          samples.push({ instance: chain.instance.name, round, ms: performance.now() - written, stale });
          const b = await exchange(chain, API.B);
          expect(b.status).toBe(200);
          expect(b.body.scope).toBe(narrowing ? 'b:read' : 'b:read b:write');
        }),
      );
      for (let attempt = 0; announcedAt === 0 && attempt < 100; attempt += 1) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(announcedAt).toBeGreaterThan(0);
      announcements.push(announcedAt - written);
    }
    off();
    await listener.close();
    listenerRedis.disconnect();

    const stats = (values: number[]): string => {
      const sorted = [...values].sort((a, b) => a - b);
      return `min ${sorted[0]!.toFixed(1)}ms, median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(1)}ms, max ${sorted.at(-1)!.toFixed(1)}ms`;
    };
    const delays = samples.map((sample) => sample.ms);
    const stale = samples.reduce((sum, sample) => sum + sample.stale, 0);
    console.log(
      `[multi-instance] policy propagation across 3 instance processes, ${samples.length} samples ` +
        `(write resolved -> first exchange on that instance that reflects it, HTTP round trip included): ${stats(delays)}; ` +
        `exchanges answered with the old policy after the write resolved: ${stale}; ` +
        `pub/sub announcement seen by another connection, relative to the write resolving: ${stats(announcements)}`,
    );
    for (const ms of delays) expect(ms).toBeLessThan(MAX_AGE);
    await store.set('app', FULL);
  });

  test('rotation and reuse detection hold across instances: exchange on 2, reuse on 3 -> invalid_grant and the grant is revoked everywhere', async () => {
    const [one, two, three] = instances as [Instance, Instance, Instance];
    const tokens = await login(one.server);
    const stored = await redis.hget(`${adapterPrefix}RefreshToken:${tokens.refresh_token}`, 'payload');
    const { grantId } = JSON.parse(stored!) as { grantId: string };

    const rotated = await refresh(two.server, tokens.refresh_token, { audience: API.B });
    expect(rotated.status).toBe(200);
    const next: string = rotated.body.refresh_token;
    expect(next).not.toBe(tokens.refresh_token);
    expect(await redis.hget(`${adapterPrefix}RefreshToken:${tokens.refresh_token}`, 'consumed')).toEqual(expect.any(String));

    const reuse = await refresh(three.server, tokens.refresh_token, { audience: API.B });
    expect(reuse.status).toBe(400);
    expect(reuse.body.error).toBe('invalid_grant');
    expect(reuse.body).not.toHaveProperty('access_token');
    expect(await events(three)).toContainEqual({ event: 'grant.revoked' });

    // the rotated token died with the grant, on every instance
    for (const instance of [one, two, three]) {
      for (const params of [{}, { audience: API.B }, { resource: API.A }] as Record<string, string>[]) {
        const res = await refresh(instance.server, next, params);
        expect(res.status).toBe(400);
        expect(res.body.error).toBe('invalid_grant');
      }
    }
    expect(
      await redis.exists(
        `${adapterPrefix}RefreshToken:${tokens.refresh_token}`,
        `${adapterPrefix}RefreshToken:${next}`,
        `${adapterPrefix}Grant:${grantId}`,
        `${adapterPrefix}grant:${grantId}`,
      ),
    ).toBe(0);
  });

  test('every instance is still running and saw no unhandled rejection', async () => {
    for (const instance of instances) {
      expect(instance.alive).toBe(true);
      const report = await instance.report();
      expect(report.pid).toBe(instance.pid);
      expect(report.unhandledRejections).toEqual([]);
      expect(report.events.filter((e) => e.event === 'server_error')).toEqual([]);
    }
  });
});
