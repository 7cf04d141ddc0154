// The refresh_token wrapper's own work per request, without oidc-provider: the handler `withMrrt`
// installs, built as the provider builds it, in front of a stub of oidc-provider's handler, against
// the stub alone. A whole request costs ~1,500 µs of server CPU and moves by a few per cent from one
// process to another, so the whole-server bench cannot resolve a few µs; this can.
//
//   npm run build && node bench/handler-cost.mjs [--dist <dir>] [--rounds 9]
//
// Two settings: hot (the same request 100,000 times: code and data in the CPU caches) and cold
// (48 MB touched before every call, so that the handler finds its code and data out of cache, as it
// does in a server that runs the rest of a request and other processes between two refreshes).
// Figures are the median over rounds of µs per request beyond the stub. `--dist` measures another
// build (a directory with the same layout as dist/, inside this checkout so that it finds
// node_modules), to compare two builds on the same machine.
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({ options: { dist: { type: 'string', default: 'dist' }, rounds: { type: 'string', default: '9' } } });
const dist = pathToFileURL(path.resolve(args.dist)).href;
const { createExchangeHandler } = await import(`${dist}/exchange.js`);
const { resolveOptions } = await import(`${dist}/options.js`);
const { MemoryPolicyStore } = await import(`${dist}/stores/memory.js`);

const API = { granted: 'https://api-a.example.com', policy: ['https://api-b.example.com', 'https://api-c.example.com', 'https://api-d.example.com'] };
const store = new MemoryPolicyStore();
await store.set(
  'app',
  API.policy.map((audience) => ({ audience, scope: ['read'] })),
);
const setup = {
  config: resolveOptions({ store, allowSkippingConsent: API.policy }),
  isFirstParty: (client) => client.clientId === 'app',
  getResourceServerInfo: undefined,
  oidcScopes: new Set(['openid', 'offline_access']),
};
const installed = new Map();
const install = (ctx, exchange) => (exchange ? installed.set(ctx, exchange) : installed.delete(ctx));
// oidc-provider's handler, reduced to answering
const builtin = async (ctx) => {
  ctx.body = { token_type: 'Bearer' };
};
const handler = createExchangeHandler(setup, install, { rotationObserved: true })(builtin);

const request = (resource) => () => ({
  oidc: {
    client: { clientId: 'app', clientAuthMethod: 'client_secret_basic' },
    params: { grant_type: 'refresh_token', refresh_token: 'x'.repeat(43), resource, audience: undefined, scope: undefined },
    entities: {},
    provider: { emit() {}, listenerCount: () => 0 },
  },
});
const requests = { 'no target': request(undefined), 'the granted API, outside the policy (B)': request(API.granted) };

const flush = new Uint32Array((48 * 1024 * 1024) / 4);
let sink = 0;
function evict() {
  for (let i = 0; i < flush.length; i += 16) sink += flush[i]++;
}
async function perRequest(fn, make, count, cold) {
  let ns = 0n;
  for (let i = 0; i < count; i += 1) {
    if (cold) evict();
    const ctx = make();
    const start = process.hrtime.bigint();
    await fn(ctx);
    ns += process.hrtime.bigint() - start;
  }
  return Number(ns) / count / 1000;
}
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

const rounds = Number(args.rounds);
// the first request of the client reads its policy into the cache, as a server's first one does
await handler(requests['the granted API, outside the policy (B)']());
process.stdout.write(
  `refresh_token wrapper (${path.relative(process.cwd(), path.resolve(args.dist)) || '.'}), µs per request beyond oidc-provider's handler, median of ${rounds} rounds\n`,
);
for (const [name, make] of Object.entries(requests)) {
  const hot = [];
  const cold = [];
  for (let round = 0; round < rounds; round += 1) {
    hot.push((await perRequest(handler, make, 100_000, false)) - (await perRequest(builtin, make, 100_000, false)));
    cold.push((await perRequest(handler, make, 1_000, true)) - (await perRequest(builtin, make, 1_000, true)));
  }
  process.stdout.write(`  ${name}: hot ${median(hot).toFixed(2)}, cold ${median(cold).toFixed(2)}\n`);
}
if (sink === 0.5) process.stdout.write('\n');
