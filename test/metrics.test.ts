import { afterAll, beforeAll, expect, test } from '@jest/globals';

import { MemoryPolicyStore, MrrtMetrics } from '../lib/index.js';
import { API, SKIP_CONSENT, login, refresh, startServer, type TestServer } from './helpers/fixture.js';

let server: TestServer;
const metrics = new MrrtMetrics();
let detach: () => void;

beforeAll(async () => {
  const store = new MemoryPolicyStore();
  await store.set('app', [{ audience: API.B, scope: ['b:read'] }]);
  server = await startServer({ mrrt: { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] }, rotate: false });
  detach = metrics.attach(server.provider);
});
afterAll(async () => {
  detach();
  await server.close();
});

const sample = (text: string, name: string): number | undefined => {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
};

test('exchanges are counted by outcome and reason, with a latency histogram, in Prometheus format', async () => {
  const tokens = await login(server);
  for (let i = 0; i < 3; i += 1) expect((await refresh(server, tokens.refresh_token, { audience: API.B })).status).toBe(200);
  expect((await refresh(server, tokens.refresh_token, { audience: API.ADMIN })).status).toBe(400);
  expect((await refresh(server, tokens.refresh_token, { audience: API.C })).status).toBe(400);
  expect((await refresh(server, tokens.refresh_token, { resource: API.A })).status).toBe(200);

  const text = metrics.toPrometheus();
  expect(sample(text, 'mrrt_exchanges_total{outcome="issued",reason="policy"}')).toBe(3);
  expect(sample(text, 'mrrt_exchanges_total{outcome="refused",reason="deny_listed"}')).toBe(1);
  expect(sample(text, 'mrrt_exchanges_total{outcome="refused",reason="not_in_policy"}')).toBe(1);
  expect(text).not.toContain('reason="provider_check"');
  expect(sample(text, 'mrrt_exchange_duration_seconds_count{outcome="issued"}')).toBe(3);
  expect(sample(text, 'mrrt_exchange_duration_seconds_bucket{outcome="issued",le="+Inf"}')).toBe(3);
  expect(sample(text, 'mrrt_exchange_duration_seconds_sum{outcome="issued"}')).toBeGreaterThan(0);
  expect(sample(text, 'mrrt_store_errors_total')).toBe(0);
  const buckets = text.split('\n').filter((l) => l.startsWith('mrrt_exchange_duration_seconds_bucket{outcome="refused"')).map((l) => Number(l.split(' ')[1]));
  expect(buckets).toEqual([...buckets].sort((a, b) => a - b));
  expect(text).toMatch(/# TYPE mrrt_exchange_duration_seconds histogram/);
});

test('bad buckets are refused with a TypeError naming the option', () => {
  expect(() => new MrrtMetrics({ buckets: [0.1, 0.05] })).toThrow(/"buckets" option/);
  expect(() => new MrrtMetrics({ buckets: [] })).toThrow(/"buckets" option/);
});
