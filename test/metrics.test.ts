import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { Registry, type OpenMetricsContentType } from 'prom-client';

import { MemoryPolicyStore, MrrtMetrics, PolicyStoreError, type Policy, type PolicyRecord } from '../lib/index.js';
import { API, SKIP_CONSENT, login, refresh, startServer, type TestServer } from './support/fixture.js';

/** A memory store whose reads fail while `failing` is set, to produce `mrrt.store_error` events. */
class FlakyStore extends MemoryPolicyStore {
  failing = false;

  override async get(clientId: string): Promise<PolicyRecord | undefined> {
    if (this.failing) throw new PolicyStoreError('ERR_MRRT_STORE_UNAVAILABLE', 'the test store is down');
    return super.get(clientId);
  }
}

let server: TestServer;
const store = new FlakyStore();

beforeAll(async () => {
  await store.set('app', [{ audience: API.B, scope: ['b:read'] }] satisfies Policy);
  server = await startServer({ mrrt: { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN], cache: false }, rotate: false });
});
afterAll(async () => {
  await server.close();
});

/** Every sample of a Prometheus or OpenMetrics text, `name{labels}` (labels sorted) → value. */
function samples(text: string): Map<string, number> {
  const map = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const labels = match[2]
      ? match[2]
          .split(/,(?=[a-z_]+=")/)
          .sort()
          .join(',')
      : '';
    map.set(`${match[1]}{${labels}}`, Number(match[3]));
  }
  return map;
}

/** Three exchanges issued, two refused by MRRT, one granted refresh that MRRT leaves alone. */
async function exchanges(): Promise<void> {
  const tokens = await login(server);
  for (let i = 0; i < 3; i += 1) expect((await refresh(server, tokens.refresh_token, { audience: API.B })).status).toBe(200);
  expect((await refresh(server, tokens.refresh_token, { audience: API.ADMIN })).status).toBe(400);
  expect((await refresh(server, tokens.refresh_token, { audience: API.C })).status).toBe(400);
  expect((await refresh(server, tokens.refresh_token, { resource: API.A })).status).toBe(200);
}

test('exchanges are counted by outcome and reason, with a latency histogram, in Prometheus format', async () => {
  const metrics = new MrrtMetrics();
  const detach = metrics.attach(server.provider);
  await exchanges();
  detach();

  const text = metrics.toPrometheus();
  const values = samples(text);
  expect(values.get('mrrt_exchanges_total{outcome="issued",reason="policy"}')).toBe(3);
  expect(values.get('mrrt_exchanges_total{outcome="refused",reason="deny_listed"}')).toBe(1);
  expect(values.get('mrrt_exchanges_total{outcome="refused",reason="not_in_policy"}')).toBe(1);
  expect(text).not.toContain('reason="provider_check"');
  expect(values.get('mrrt_exchange_duration_seconds_count{outcome="issued"}')).toBe(3);
  expect(values.get('mrrt_exchange_duration_seconds_bucket{le="+Inf",outcome="issued"}')).toBe(3);
  expect(values.get('mrrt_exchange_duration_seconds_sum{outcome="issued"}')).toBeGreaterThan(0);
  expect(values.get('mrrt_store_errors_total{}')).toBe(0);
  const buckets = text
    .split('\n')
    .filter((l) => l.startsWith('mrrt_exchange_duration_seconds_bucket{outcome="refused"'))
    .map((l) => Number(l.split(' ')[1]));
  expect(buckets).toHaveLength(10);
  expect(buckets).toEqual([...buckets].sort((a, b) => a - b));
  expect(text).toMatch(/# TYPE mrrt_exchange_duration_seconds histogram/);
});

test('registered in a prom-client Registry: the same names, labels and values, read at every scrape', async () => {
  const registry = new Registry();
  registry.setDefaultLabels({ instance: 'test' });
  const metrics = new MrrtMetrics({ registers: [registry], buckets: [0.5, 5] });
  const detach = metrics.attach(server.provider);

  expect((await registry.getMetricsAsJSON()).map(({ name, type, aggregator }) => ({ name, type, aggregator }))).toEqual([
    { name: 'mrrt_exchanges_total', type: 'counter', aggregator: 'sum' },
    { name: 'mrrt_store_errors_total', type: 'counter', aggregator: 'sum' },
    { name: 'mrrt_exchange_duration_seconds', type: 'histogram', aggregator: 'sum' },
  ]);

  await exchanges();
  store.failing = true;
  const fresh = await login(server);
  expect((await refresh(server, fresh.refresh_token, { audience: API.B })).status).toBe(503);
  store.failing = false;
  detach();

  const json = await registry.getMetricsAsJSON();
  const exchangesTotal = json.find((m) => m.name === 'mrrt_exchanges_total')!;
  expect(exchangesTotal.help).toBe('MRRT exchanges by outcome and reason.');
  expect(exchangesTotal.values).toEqual([
    { value: 3, labels: { outcome: 'issued', reason: 'policy', instance: 'test' } },
    { value: 1, labels: { outcome: 'refused', reason: 'deny_listed', instance: 'test' } },
    { value: 1, labels: { outcome: 'refused', reason: 'not_in_policy', instance: 'test' } },
    { value: 1, labels: { outcome: 'refused', reason: 'store_unavailable', instance: 'test' } },
  ]);
  expect(json.find((m) => m.name === 'mrrt_store_errors_total')!.values).toEqual([{ value: 1, labels: { instance: 'test' } }]);

  const text = await registry.metrics();
  expect(text).toContain('# TYPE mrrt_exchange_duration_seconds histogram');
  const scraped = samples(text);
  expect(scraped.get('mrrt_exchange_duration_seconds_count{instance="test",outcome="issued"}')).toBe(3);
  expect(scraped.get('mrrt_exchange_duration_seconds_count{instance="test",outcome="refused"}')).toBe(3);
  expect(scraped.get('mrrt_exchange_duration_seconds_bucket{instance="test",le="+Inf",outcome="refused"}')).toBe(3);
  expect(scraped.get('mrrt_exchange_duration_seconds_bucket{instance="test",le="5",outcome="issued"}')).toBe(3);
  expect(scraped.get('mrrt_exchange_duration_seconds_sum{instance="test",outcome="issued"}')).toBeGreaterThan(0);

  // The registry and the instance's own rendering agree sample for sample (the registry adds its default label).
  const withoutDefaultLabel = new Map([...scraped].map(([key, value]) => [key.replace(/instance="test",?/, ''), value]));
  expect(withoutDefaultLabel).toEqual(samples(metrics.toPrometheus()));

  registry.resetMetrics();
  expect(samples(metrics.toPrometheus())).toEqual(new Map([['mrrt_store_errors_total{}', 0]]));
});

test('an OpenMetrics registry gets its counter naming (family without _total, samples with it)', async () => {
  const registry = new Registry<OpenMetricsContentType>();
  registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
  const metrics = new MrrtMetrics({ registers: [registry] });
  metrics.observe({
    outcome: 'issued',
    reason: 'policy',
    clientId: 'app',
    subject: 'alice',
    grantId: 'g',
    requestedAudience: API.B,
    resolvedAudience: API.B,
    requestedScope: undefined,
    grantedScope: 'b:read',
    durationMs: 12,
  });
  const text = await registry.metrics();
  expect(text).toContain('# TYPE mrrt_exchanges counter');
  expect(text).toContain('mrrt_exchanges_total{outcome="issued",reason="policy"} 1');
  expect(text).toContain('mrrt_store_errors_total 0');
  expect(text).toContain('mrrt_exchange_duration_seconds_bucket{le="0.025",outcome="issued"} 1');
  expect(text).toContain('mrrt_exchange_duration_seconds_bucket{le="0.01",outcome="issued"} 0');
  expect(text.endsWith('# EOF\n')).toBe(true);
  expect(metrics.toPrometheus()).toContain('mrrt_exchanges_total{outcome="issued",reason="policy"} 1');
});

test('one registry holds one MrrtMetrics: a second is refused by prom-client', () => {
  const registry = new Registry();
  new MrrtMetrics({ registers: [registry] });
  expect(() => new MrrtMetrics({ registers: [registry] })).toThrow(/mrrt_exchanges_total has already been registered/);
});

test('bad options are refused with a TypeError naming the option', () => {
  expect(() => new MrrtMetrics({ buckets: [0.1, 0.05] })).toThrow(/"buckets" option/);
  expect(() => new MrrtMetrics({ buckets: [] })).toThrow(/"buckets" option/);
  expect(() => new MrrtMetrics({ registers: [{}] as never })).toThrow(/"registers" option/);
  expect(() => new MrrtMetrics({ registers: new Registry() as never })).toThrow(/"registers" option/);
});
