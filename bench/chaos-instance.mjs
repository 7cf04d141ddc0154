// One provider instance for `npm run chaos` (bench/chaos.mjs), in its own OS process: withMrrt on
// oidc-provider with RedisAdapter + RedisPolicyStore from the compiled package (dist/), the ioredis
// settings docs/production.md recommends, and the shared provider setup and login/consent interaction. Everything the
// instances must share comes from the parent as JSON in CHAOS_INSTANCE. Prints one JSON line
// {"port":…,"pid":…} once it listens on 127.0.0.1; GET /__chaos/stats reports what it saw (never
// token values). Exits on SIGTERM or when its stdin closes.
import http from 'node:http';
import process from 'node:process';

import express from 'express';
import { Redis } from 'ioredis';
import Provider from 'oidc-provider';

import { RedisAdapter, RedisPolicyStore, withMrrt } from '../dist/index.js';
import { interactionHandler, providerConfiguration } from '../test/support/provider-fixture.mjs';

const config = JSON.parse(process.env.CHAOS_INSTANCE ?? 'null');
if (!config) {
  console.error('CHAOS_INSTANCE (JSON configuration) is not set');
  process.exit(2);
}
const { name, issuer, jwks, cookieKeys, redisUrl, adapterPrefix, storePrefix, clients, resourceServers, skipConsent, denyList, port = 0 } = config;

const unhandled = [];
process.on('unhandledRejection', (reason) => {
  unhandled.push(String(reason?.stack ?? reason).slice(0, 500));
});

const redis = new Redis(redisUrl, {
  maxRetriesPerRequest: 1,
  commandTimeout: 1000,
  connectTimeout: 1000,
  retryStrategy: (times) => Math.min(times * 100, 1000),
  connectionName: `mrrt-chaos-${name}`,
});
let redisErrors = 0;
redis.on('error', () => {
  redisErrors += 1;
});
const store = new RedisPolicyStore(redis, { prefix: storePrefix });

const MrrtProvider = withMrrt(Provider, { store, allowSkippingConsent: skipConsent, denyList, storeTimeout: 300 });
// the shared provider setup (test/support/provider-fixture.mjs) with the chaos run's clients, APIs and TTLs
const provider = new MrrtProvider(
  issuer,
  providerConfiguration({
    adapter: RedisAdapter.factory(redis, { prefix: adapterPrefix }),
    jwks,
    clients,
    resourceServers,
    cookieKeys,
    rotate: true,
    ttl: { AccessToken: 300, AuthorizationCode: 60, Grant: 86_400, IdToken: 300, Interaction: 600, RefreshToken: 86_400, Session: 86_400 },
    dpop: false,
    introspection: false,
  }),
);

const stats = { serverErrors: 0, storeErrors: 0 };
provider.on('server_error', () => {
  stats.serverErrors += 1;
});
provider.on('mrrt.store_error', () => {
  stats.storeErrors += 1;
});

const app = express();
app.get('/__chaos/stats', (_req, res) => {
  res.json({ name, pid: process.pid, ...stats, redisErrors, unhandled });
});
app.use(interactionHandler(provider));
app.use(provider.callback());

const server = http.createServer(app);
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port, pid: process.pid })}\n`);
});

let stopping = false;
async function shutdown() {
  if (stopping) return;
  stopping = true;
  server.closeAllConnections();
  server.close();
  await store.close().catch(() => {});
  await redis.quit().catch(() => redis.disconnect());
  process.exit(0);
}
process.on('SIGTERM', () => {
  void shutdown();
});
process.on('SIGINT', () => {
  void shutdown();
});
process.stdin.on('end', () => {
  void shutdown();
});
process.stdin.resume();
