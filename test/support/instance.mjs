// One provider instance in its own OS process, for test/multi-instance.test.ts.
//
// Runs the compiled package (dist/, built by `npm test`'s pretest) with the provider setup of
// provider-fixture.mjs, as every test server. What must be identical across instances and differs
// per test (issuer, signing key, cookie keys, prefixes) comes from the parent as JSON in the
// MRRT_INSTANCE environment variable; the instance shares nothing with the others but Redis
// (RedisAdapter + RedisPolicyStore under the given prefixes).
//
// Prints one JSON line on stdout once it listens: {"port":<port>,"pid":<pid>}. Exits on SIGTERM,
// SIGINT, or when its stdin closes (the parent went away).
import http from 'node:http';
import process from 'node:process';

import express from 'express';
import { Redis } from 'ioredis';
import Provider from 'oidc-provider';

import { RedisAdapter, RedisPolicyStore, withMrrt } from '../../dist/index.js';
import { SKIP_CONSENT, interactionHandler, providerConfiguration } from './provider-fixture.mjs';

const config = JSON.parse(process.env.MRRT_INSTANCE ?? 'null');
if (!config) {
  console.error('MRRT_INSTANCE (JSON configuration) is not set');
  process.exit(2);
}
const { name, issuer, jwks, cookieKeys, redisUrl, adapterPrefix, storePrefix, rotate, denyList, quickFailure = false, storeTimeout } = config;

// every promise rejection nobody handled in this process (Node would otherwise crash on the first one)
const unhandledRejections = [];
process.on('unhandledRejection', (reason) => {
  unhandledRejections.push(String(reason?.stack ?? reason));
  console.error(`[${name}] unhandled rejection: ${reason?.stack ?? reason}`);
});

// quickFailure: the settings of QUICK_FAILURE in test/support/redis-server.ts
const redisOptions = quickFailure
  ? { maxRetriesPerRequest: 1, commandTimeout: 1000, connectTimeout: 1000, retryStrategy: (times) => Math.min(times * 100, 1000) }
  : { maxRetriesPerRequest: 1 };
const redis = new Redis(redisUrl, { ...redisOptions, connectionName: `mrrt-test-instance-${name}` });
let redisErrors = 0;
redis.on('error', () => {
  redisErrors += 1;
});
const store = new RedisPolicyStore(redis, { prefix: storePrefix });

const MrrtProvider = withMrrt(Provider, { store, allowSkippingConsent: SKIP_CONSENT, denyList, ...(storeTimeout === undefined ? {} : { storeTimeout }) });
const provider = new MrrtProvider(
  issuer,
  providerConfiguration({
    adapter: RedisAdapter.factory(redis, { prefix: adapterPrefix, reuseInterval: 0 }), // reuse right after a rotation is reuse here
    jwks,
    cookieKeys,
    rotate,
  }),
);

// what happened on this instance, for the test to read back (never token values)
const events = [];
let storeErrors = 0;
provider.on('mrrt.exchange', (_ctx, event) =>
  events.push({
    event: 'mrrt.exchange',
    outcome: event.outcome,
    reason: event.reason,
    audience: event.resolvedAudience ?? event.requestedAudience,
    ...(event.error ? { error: event.error } : {}),
  }),
);
provider.on('mrrt.store_error', () => {
  storeErrors += 1;
});
for (const event of ['grant.revoked', 'refresh_token.consumed', 'server_error']) {
  provider.on(event, () => events.push({ event }));
}

const app = express();
app.get('/__test/events', (_req, res) => {
  res.json({ name, pid: process.pid, events, storeErrors, redisErrors, unhandledRejections });
});
app.use(interactionHandler(provider));
app.use(provider.callback());

const server = http.createServer(app);
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port, pid: process.pid })}\n`);
});

let stopping = false;
async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  server.closeAllConnections();
  server.close();
  await store.close().catch(() => {});
  await redis.quit().catch(() => redis.disconnect());
  process.exit(code);
}
process.on('SIGTERM', () => {
  void shutdown(0);
});
process.on('SIGINT', () => {
  void shutdown(0);
});
process.stdin.on('end', () => {
  void shutdown(0);
});
process.stdin.resume();
