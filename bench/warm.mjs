// `npm run bench:warm`: the extension's own CPU cost per request, with warm caches and no
// process-to-process variation. One process hosts a plain oidc-provider and a withMrrt provider
// with the same configuration (per adapter and rotation mode) and sends them requests one at a
// time, A, B, C and F in turn (the scenarios of bench/run.mjs), timing each with process.cpuUsage():
// the client's work is in every number and the same for all, so differences are the servers'. F
// (A′) is A again, on its own refresh token: what this method reads for two identical requests.
//
// What it measures and what it leaves out, next to `npm run bench` (docs/benchmark.md):
// - both providers share one JIT and one heap: the work the extension adds per request, not what a
//   process running only plain oidc-provider would save by never loading it;
// - each request follows another one in the same process: warm CPU caches, whereas the main
//   bench's interleaved rounds send each request to a process that sat idle meanwhile;
// - per block of 100 requests per scenario the ratio A ÷ X is taken on trimmed means (10 % off each
//   end, so that a garbage collection falling on one request does not decide the block) and on
//   plain means (garbage collections included); the 95 % interval is the bench's bootstrap over blocks.
//
//   node bench/warm.mjs [--requests N] [--only memory/off,redis/on] [--json]
import http from 'node:http';
import { parseArgs } from 'node:util';

import { Redis } from 'ioredis';
import Provider from 'oidc-provider';

import { MemoryAdapter, MemoryPolicyStore, MemoryStorage, RedisAdapter, RedisPolicyStore, withMrrt } from '../dist/index.js';
import { configuration, handler, login, signingKey } from './provider-setup.mjs';
import { API, CLIENT, DENY_LIST, POLICY, SKIP_CONSENT, deleteByPrefix, refreshBody } from './shared.mjs';
import { fmt, fmtInt, revision } from './report.mjs';
import { median, spread, verdict } from './stats.mjs';
import { log } from './util.mjs';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '3000' },
    only: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const REQUESTS = Number(args.requests);
if (!Number.isInteger(REQUESTS) || REQUESTS < 200 || REQUESTS > 100_000) throw new Error('--requests must be an integer from 200 to 100 000');
const ALL_VARIANTS = ['memory/off', 'memory/on', 'redis/off', 'redis/on'];
const variants = args.only ? args.only.split(',').map((v) => v.trim()) : ALL_VARIANTS;
for (const v of variants) if (!ALL_VARIANTS.includes(v)) throw new Error(`--only: unknown variant "${v}" (one of ${ALL_VARIANTS.join(', ')})`);
const BLOCK = 100; // requests per scenario in one block
const WARM_UP = 300; // requests per scenario before anything counts
const TRIM = 0.1;
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const PREFIX = `mrrt-bench-warm:${process.pid}:`;

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

/** POSTs a refresh request; resolves with the response body (JSON), rejects on anything but 200. */
function refresh(url, refreshToken, resource) {
  const body = refreshBody(refreshToken, resource);
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${url}/token`,
      { method: 'POST', agent, headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) } },
      (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          if (res.statusCode === 200) resolve(JSON.parse(text));
          else reject(new Error(`refresh for ${resource}: ${res.statusCode} ${text}`));
        });
      },
    );
    req.setTimeout(10_000, () => req.destroy(new Error('refresh: no answer within 10 s')));
    req.on('error', reject);
    req.end(body);
  });
}

/** One provider on 127.0.0.1: plain oidc-provider, or withMrrt with the bench's policy. */
async function startProvider({ mrrt, adapterKind, rotate, redis, jwk, servers }) {
  const prefix = `${PREFIX}${adapterKind}-${rotate ? 'on' : 'off'}-${mrrt ? 'mrrt' : 'plain'}:`;
  let adapter;
  let store;
  if (adapterKind === 'redis') {
    adapter = RedisAdapter.factory(redis, { prefix });
    if (mrrt) store = new RedisPolicyStore(redis, { prefix: `${prefix}{policies}:` });
  } else {
    const storage = new MemoryStorage();
    adapter = (model) => new MemoryAdapter(model, storage);
    if (mrrt) store = new MemoryPolicyStore();
  }
  if (store) await store.set(CLIENT.client_id, POLICY);
  const ProviderClass = mrrt ? withMrrt(Provider, { store, allowSkippingConsent: SKIP_CONSENT, denyList: DENY_LIST }) : Provider;
  const server = http.createServer();
  servers.push(server);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  server.on('request', handler(new ProviderClass(url, configuration({ adapter, rotate, jwk }))));
  server.keepAliveTimeout = 60_000;
  return url;
}

/** A scenario's request source: with rotation, each request uses the refresh token the previous one returned. */
async function chain(url, resource) {
  let { refreshToken } = await login(url);
  return async () => {
    const body = await refresh(url, refreshToken, resource);
    if (body.refresh_token) refreshToken = body.refresh_token;
  };
}

/** A deterministic pseudo-random source in [0, 1) (mulberry32). */
function seeded(seed) {
  let state = seed;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `list` in a random order (Fisher–Yates). */
function shuffled(list, random) {
  const copy = [...list];
  for (let i = copy.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [copy[i], copy[j]] = [copy[j], copy[i]];
  }
  return copy;
}

const trimmedMean = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const cut = Math.floor(sorted.length * TRIM);
  const kept = sorted.slice(cut, sorted.length - cut);
  return kept.reduce((sum, v) => sum + v, 0) / kept.length;
};
const mean = (values) => values.reduce((sum, v) => sum + v, 0) / values.length;

async function measureVariant(variant, { redis, jwk, servers }) {
  const [adapterKind, rotation] = variant.split('/');
  const rotate = rotation === 'on';
  const plainUrl = await startProvider({ mrrt: false, adapterKind, rotate, redis, jwk, servers });
  const mrrtUrl = await startProvider({ mrrt: true, adapterKind, rotate, redis, jwk, servers });
  const scenarios = {
    A: await chain(plainUrl, API.A),
    B: await chain(mrrtUrl, API.A),
    C: await chain(mrrtUrl, API.C),
    F: await chain(plainUrl, API.A),
  };
  const names = Object.keys(scenarios);
  for (let i = 0; i < WARM_UP; i += 1) for (const name of names) await scenarios[name]();

  const samples = Object.fromEntries(names.map((name) => [name, []]));
  // a request costs less after one that ran the same code: each cycle takes the scenarios in a
  // fresh random order (fixed seed), so that every scenario follows every other equally often
  const random = seeded(0x5eed);
  for (let i = 0; i < REQUESTS; i += 1) {
    for (const name of shuffled(names, random)) {
      const before = process.cpuUsage();
      await scenarios[name]();
      const { user, system } = process.cpuUsage(before);
      samples[name].push(user + system);
    }
  }
  const blocks = Math.floor(REQUESTS / BLOCK);
  const blockOf = (name, b) => samples[name].slice(b * BLOCK, (b + 1) * BLOCK);
  const ratios = (statistic, name) => Array.from({ length: blocks }, (_, b) => statistic(blockOf('A', b)) / statistic(blockOf(name, b)));
  const result = { variant, requests: REQUESTS, us: {}, trimmed: {}, all: {} };
  for (const name of names)
    result.us[name] = { trimmed: Math.round(trimmedMean(samples[name])), mean: Math.round(mean(samples[name])), median: median(samples[name]) };
  for (const name of ['B', 'C', 'F']) {
    result.trimmed[name] = spread(ratios(trimmedMean, name));
    result.all[name] = spread(ratios(mean, name));
  }
  return result;
}

async function main() {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, lazyConnect: true, retryStrategy: () => null });
  const servers = [];
  const usesRedis = variants.some((v) => v.startsWith('redis/'));
  if (usesRedis) {
    try {
      await redis.connect();
    } catch (err) {
      throw new Error(`no Redis at ${REDIS_URL} (set REDIS_URL, or --only memory/off,memory/on): ${err.message}`);
    }
  }
  const jwk = await signingKey('ES256');
  const results = [];
  try {
    for (const variant of variants) {
      log(`${variant}: ${REQUESTS} requests per scenario`);
      results.push(await measureVariant(variant, { redis, jwk, servers }));
    }
  } finally {
    agent.destroy();
    for (const server of servers) server.close();
    if (usesRedis) {
      const removed = await deleteByPrefix(redis, PREFIX);
      log(`removed ${removed} Redis keys under ${PREFIX}`);
      redis.disconnect();
    }
  }
  const report = { revision: revision(), node: process.version, block: BLOCK, trim: TRIM, results };
  if (args.json) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return;
  }
  const ratio = (r) => `${fmt(r.median, 3)} (${fmt(r.ci95[0], 3)}–${fmt(r.ci95[1], 3)})`;
  const lines = [
    `Warm CPU per request in one process (${report.revision}, Node ${process.version}, ${REQUESTS} requests per scenario, client included)`,
    '',
    '| variant | A µs | B − A µs | C − A µs | A′/A trimmed | B/A trimmed | verdict (≥ 0.98) | C/A trimmed | verdict (≥ 0.95) | A′/A all | B/A all | C/A all |',
    '| --- | ---: | ---: | ---: | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...results.map(
      (r) =>
        `| ${r.variant} | ${fmtInt(r.us.A.trimmed)} | ${fmtInt(r.us.B.trimmed - r.us.A.trimmed)} | ${fmtInt(r.us.C.trimmed - r.us.A.trimmed)} | ${ratio(r.trimmed.F)} | ${ratio(r.trimmed.B)} | ${verdict(r.trimmed.B, 0.98, true)} | ${ratio(r.trimmed.C)} | ${verdict(r.trimmed.C, 0.95, true)} | ${ratio(r.all.F)} | ${ratio(r.all.B)} | ${ratio(r.all.C)} |`,
    ),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

main().then(
  () => process.exit(0),
  (err) => {
    log(`failed: ${err?.stack ?? err}`);
    process.exit(1);
  },
);
