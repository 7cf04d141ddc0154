import { createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import { Redis } from 'ioredis';
import * as jose from 'jose';
import Provider, { errors, type ClientMetadata, type Configuration, type ResourceServer } from 'oidc-provider';

import {
  MemoryAdapter,
  MemoryPolicyStore,
  MemoryStorage,
  MrrtMetrics,
  PolicyConflictError,
  RedisAdapter,
  RedisPolicyStore,
  parsePolicies,
  withMrrt,
  type PolicyStore,
} from '../lib/index.js';
import { createPolicyRouter, jwtAuthorizer } from '../lib/express.js';
import { bffRoutes } from './bff.js';
import { config as defaultConfig, type DemoClient, type ExampleConfig } from './config.js';
import { html, sendPage, renderError } from './html.js';
import { interactionRoutes } from './interactions.js';
import { createLogger, requestLogger, type LogLevel, type LogSink, type Logger } from './log.js';
import { demoApis, resourceServerOf } from './resource-api.js';
import { createSpaTenant } from './spa.js';

/** Options of {@link createExampleApp}. */
export interface ExampleOptions {
  /** The public base URL of the server, without a trailing slash, e.g. `http://127.0.0.1:3000`. The issuer is `<baseUrl>/oidc`. */
  readonly baseUrl: string;
  /** Where the server reaches itself for its server-side calls (the demo app's token requests and API calls). Default `baseUrl`. */
  readonly internalUrl?: string;
  /** With a Redis URL: RedisAdapter + RedisPolicyStore. Without: MemoryAdapter + MemoryPolicyStore. */
  readonly redisUrl?: string;
  /** Prefix of every Redis key of the example. Default `mrrt-example:`. */
  readonly redisPrefix?: string;
  /** The provider's private signing keys (JWKS with at least one RSA key). Default: an RS256 key generated now. */
  readonly jwks?: { keys: jose.JWK[] };
  /** Keys for oidc-provider's signed cookies, newest first. Default: a random key (sessions end on restart). */
  readonly cookieKeys?: readonly string[];
  /** Default `info`. */
  readonly logLevel?: LogLevel;
  /** Where structured log entries go. Default: one JSON line each on stdout. */
  readonly logSink?: LogSink;
  /** Seed data. Default `./config.ts`. */
  readonly config?: ExampleConfig;
}

/** A running example: the Express app plus what tests and `main.ts` need around it. */
export interface ExampleApp {
  readonly app: Express;
  readonly provider: Provider;
  readonly issuer: string;
  readonly store: PolicyStore;
  /** The provider's public keys (what `<issuer>/jwks` serves). */
  readonly publicJwks: { keys: jose.JWK[] };
  readonly logger: Logger;
  readonly mode: 'memory' | 'redis';
  /** Closes the Redis connection, if any. */
  close(): Promise<void>;
}

const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

/** Validates a private JWKS (an RSA key for RS256 is required) and returns it with its public half. */
export function prepareKeys(jwks: unknown): { privateJwks: { keys: jose.JWK[] }; publicJwks: { keys: jose.JWK[] } } {
  const keys = (jwks as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.length === 0) throw new TypeError('JWKS must be {"keys":[...]} with at least one private key');
  const privateKeys: jose.JWK[] = [];
  const publicKeys: jose.JWK[] = [];
  keys.forEach((key: jose.JWK, i) => {
    if (typeof key !== 'object' || key === null || typeof key.d !== 'string') throw new TypeError(`JWKS keys[${i}] must be a private key (with "d")`);
    if (typeof key.kid !== 'string' || key.kid.length === 0) throw new TypeError(`JWKS keys[${i}] must have a "kid"`);
    let publicJwk: jose.JWK;
    try {
      publicJwk = createPublicKey(createPrivateKey({ key: key as import('node:crypto').JsonWebKey, format: 'jwk' })).export({ format: 'jwk' }) as jose.JWK;
    } catch (err) {
      throw new TypeError(`JWKS keys[${i}] is not a valid private key: ${(err as Error).message}`);
    }
    const alg = key.alg ?? (key.kty === 'RSA' ? 'RS256' : undefined);
    const meta = { kid: key.kid, use: 'sig', ...(alg ? { alg } : {}) };
    privateKeys.push({ ...key, ...meta });
    publicKeys.push({ ...Object.fromEntries(Object.entries(publicJwk).filter(([name]) => !PRIVATE_MEMBERS.includes(name))), ...meta });
  });
  if (!privateKeys.some((key) => key.kty === 'RSA' && key.alg === 'RS256')) throw new TypeError('JWKS must contain an RSA key usable with RS256');
  return { privateJwks: { keys: privateKeys }, publicJwks: { keys: publicKeys } };
}

/** A new RS256 signing key as a private JWKS. */
export async function generateJwks(): Promise<{ keys: jose.JWK[] }> {
  const { privateKey } = await jose.generateKeyPair('RS256', { modulusLength: 2048, extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { keys: [{ ...jwk, kid: await jose.calculateJwkThumbprint(jwk), alg: 'RS256', use: 'sig' }] };
}

/**
 * Builds the example in one Express app: oidc-provider with MRRT at `/oidc`, the login/consent
 * pages at `/interaction`, the demo APIs at `/api/messages` and `/api/billing`, the admin API at
 * `/admin`, and the demo app (home page) at `/`.
 */
export async function createExampleApp(options: ExampleOptions): Promise<ExampleApp> {
  const config = options.config ?? defaultConfig;
  const baseUrl = new URL(options.baseUrl).origin;
  const internalUrl = new URL(options.internalUrl ?? baseUrl).origin;
  const issuer = `${baseUrl}/oidc`;
  const logger = createLogger(options.logLevel ?? 'info', options.logSink);
  const { privateJwks, publicJwks } = prepareKeys(options.jwks ?? (await generateJwks()));
  const keySet = jose.createLocalJWKSet(publicJwks);
  const cookieKeys = options.cookieKeys?.length ? [...options.cookieKeys] : [randomBytes(32).toString('base64url')];

  // stores: Redis when configured, otherwise in process memory
  let redis: Redis | undefined;
  let store: PolicyStore;
  let adapter: NonNullable<Configuration['adapter']>;
  if (options.redisUrl) {
    const prefix = options.redisPrefix ?? 'mrrt-example:';
    redis = new Redis(options.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 2 });
    redis.on('error', (err: Error) => logger.error({ event: 'redis.error', message: err.message }));
    await redis.connect();
    store = new RedisPolicyStore(redis, { prefix: `${prefix}{policies}:` });
    adapter = RedisAdapter.factory(redis, { prefix: `${prefix}oidc:` });
  } else {
    const storage = new MemoryStorage();
    store = new MemoryPolicyStore();
    adapter = (name: string) => new MemoryAdapter(name, storage);
  }

  const apis = new Map(config.apis.map((api) => [api.audience, api]));
  const resourceServer = (resource: string, clientId: string): ResourceServer => {
    const api = apis.get(resource);
    // an API may restrict which clients get tokens for it at all (the admin API: only admin-cli)
    if (!api || (api.clients && !api.clients.includes(clientId))) throw new errors.InvalidTarget();
    return resourceServerOf(api);
  };
  const clientMetadata = (client: DemoClient) => {
    const { redirect_paths: paths, ...metadata } = client;
    return {
      ...metadata,
      grant_types: [...client.grant_types],
      response_types: [...client.response_types],
      redirect_uris: paths.map((path) => new URL(path, baseUrl).href),
      // clients that sign users in come back to the home page after the provider's logout
      ...(paths.length ? { post_logout_redirect_uris: [new URL('/', baseUrl).href] } : {}),
    } as ClientMetadata;
  };
  const users = new Map(config.users.map((user) => [user.id, user]));

  const MrrtProvider = withMrrt(Provider, {
    store,
    allowSkippingConsent: config.apis.filter((api) => api.skipConsent).map((api) => api.audience),
    denyList: config.apis.filter((api) => api.denyListed).map((api) => api.audience),
  });
  const configuration: Configuration = {
    adapter,
    clients: config.clients.map(clientMetadata),
    jwks: privateJwks as Configuration['jwks'],
    cookies: { keys: cookieKeys },
    claims: { openid: ['sub'], profile: ['name'], email: ['email', 'email_verified'] },
    findAccount: (_ctx, sub) => {
      const user = users.get(sub);
      return user && { accountId: user.id, claims: () => ({ sub: user.id, name: user.name, email: user.email, email_verified: true }) };
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
      AuthorizationCode: 60,
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 300,
      Grant: 14 * 24 * 3600,
      IdToken: 3600,
      Interaction: 3600,
      RefreshToken: 14 * 24 * 3600,
      Session: 14 * 24 * 3600,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      revocation: {
        enabled: true,
        // a client may revoke only its own tokens (the demo app does so on sign-out)
        allowedPolicy: (_ctx, client, token) => token.clientId === client.clientId,
      },
      resourceIndicators: {
        enabled: true,
        // admin-cli's client credentials default to the admin API; everything else names its API
        defaultResource: (_ctx, client, oneOf) =>
          oneOf ?? (config.admin.clientId === client.clientId ? config.admin.audience : (undefined as unknown as string)),
        getResourceServerInfo: (_ctx, resource, client) => resourceServer(resource, client.clientId),
      },
    },
    renderError: renderError({ href: '/', label: 'Back to the demo' }),
  };
  const provider = new MrrtProvider(issuer, configuration);
  provider.on('mrrt.exchange', (_ctx, event) => logger.info({ event: 'mrrt.exchange', ...event }));
  provider.on('mrrt.store_error', (_ctx, error) => logger.error({ event: 'mrrt.store_error', message: (error as Error).message }));
  provider.on('mrrt.check_error', (_ctx, error) => logger.error({ event: 'mrrt.check_error', message: (error as Error).message }));
  provider.on('server_error', (_ctx, error) => logger.error({ event: 'oidc.server_error', message: error.message }));
  provider.on('grant.success', (ctx) => {
    logger.info({ event: 'oidc.grant', grant_type: ctx.oidc.params?.grant_type, client_id: ctx.oidc.client?.clientId });
  });
  provider.on('grant.error', (ctx, error) => {
    logger.info({
      event: 'oidc.grant_error',
      grant_type: ctx.oidc.params?.grant_type,
      client_id: ctx.oidc.client?.clientId,
      error: (error as { error?: string }).error,
    });
  });

  // seed policies: only where the client has none yet, so changes made through the admin API survive restarts on Redis
  for (const { clientId, policies } of config.policies) {
    try {
      await store.set(clientId, parsePolicies(policies), { ifMatch: null });
      logger.info({ event: 'seed.policy', client_id: clientId, stored: true });
    } catch (err) {
      if (!(err instanceof PolicyConflictError)) throw err;
      logger.info({ event: 'seed.policy', client_id: clientId, stored: false, reason: 'a policy already exists' });
    }
  }

  const app = express();
  app.disable('x-powered-by');
  app.use(requestLogger(logger));
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok', mode: redis ? 'redis' : 'memory' });
  });
  // exchange counters and latency (SPEC O2), Prometheus text format
  const metrics = new MrrtMetrics();
  metrics.attach(provider);
  app.get('/metrics', (_req, res) => {
    res.type(metrics.contentType).send(metrics.toPrometheus());
  });
  app.use('/api', demoApis(config, keySet, issuer, { messages: config.demoApp.loginAudience, billing: config.demoApp.mrrtAudience }));
  app.use(
    '/admin',
    createPolicyRouter({
      provider,
      audience: config.admin.audience,
      authorize: jwtAuthorizer({ key: keySet, issuer, audience: config.admin.audience, scope: config.admin.scope, algorithms: ['RS256'] }),
      onAudit: (event) =>
        logger.info({ event: 'mrrt.policy_changed', action: event.action, client_id: event.clientId, actor: event.actor, version: event.version }),
    }),
  );
  app.use('/interaction', interactionRoutes(provider, config, store, logger));
  const demoClient = config.clients.find((client) => client.client_id === config.demoApp.clientId);
  if (!demoClient) throw new Error(`example config: no client ${config.demoApp.clientId}`);
  app.use(bffRoutes({ config, client: demoClient, issuer, baseUrl, internalUrl, keys: keySet, logger }));
  app.use('/oidc', provider.callback());
  // the SPA page on Auth0's own SDK, with its Auth0-style tenant at the root of this origin (spa.ts)
  const spa = await createSpaTenant({
    baseUrl,
    config,
    jwks: privateJwks,
    keys: keySet,
    cookieKeys,
    logger,
    ...(redis ? { redis: { client: redis, prefix: `${options.redisPrefix ?? 'mrrt-example:'}spa:` } } : {}),
  });
  app.use(spa.router);

  app.use((err: unknown, req: Request, res: Response, next: NextFunction) => {
    if (res.headersSent) {
      next(err);
      return;
    }
    const oidcError = err instanceof errors.OIDCProviderError ? err : undefined;
    if (!oidcError) logger.error({ event: 'http.error', path: req.originalUrl.split('?')[0], message: (err as Error).message });
    const status = oidcError?.statusCode ?? 500;
    sendPage(
      res,
      'Error',
      html`<h1>${oidcError ? oidcError.error : 'Something went wrong'}</h1>
        <p>${oidcError?.error_description ?? 'The request could not be completed.'}</p>
        <p><a href="/">Back to the demo</a></p>`,
      status,
    );
  });

  return {
    app,
    provider,
    issuer,
    store,
    publicJwks,
    logger,
    mode: redis ? 'redis' : 'memory',
    close: async () => {
      await spa.close();
      // a store may hold connections of its own (RedisPolicyStore's change subscriber)
      await (store as { close?: () => Promise<void> }).close?.();
      if (redis) await redis.quit().catch(() => redis?.disconnect());
    },
  };
}

/** Options of {@link startExampleServer}: those of {@link createExampleApp} without the URLs, plus where to listen. */
export interface StartOptions extends Omit<ExampleOptions, 'baseUrl' | 'internalUrl'> {
  /** Default 0 (an ephemeral port). */
  readonly port?: number;
  /** Default `127.0.0.1`. */
  readonly host?: string;
  /** The URL people open, when it differs from `http://<host>:<port>` (a proxy, a container). */
  readonly publicUrl?: string;
}

export interface RunningExample extends ExampleApp {
  readonly url: string;
  readonly server: http.Server;
}

const WILDCARD = new Set(['0.0.0.0', '::', '']);
const hostForUrl = (host: string): string => (host.includes(':') ? `[${host}]` : host);

/** Listens first (so an ephemeral port is known), then builds the app with the URL it is reachable at. */
export async function startExampleServer(options: StartOptions = {}): Promise<RunningExample> {
  const { port = 0, host = '127.0.0.1', publicUrl, ...rest } = options;
  const server = http.createServer();
  // requests that arrive while the app is being built get a 503 instead of hanging
  const starting = (_req: http.IncomingMessage, res: http.ServerResponse): void => {
    res
      .writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' })
      .end('{"error":"temporarily_unavailable","error_description":"the server is starting"}');
  };
  server.on('request', starting);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port: actualPort } = server.address() as AddressInfo;
  const internalUrl = `http://${WILDCARD.has(host) ? '127.0.0.1' : hostForUrl(host)}:${actualPort}`;
  let example: ExampleApp;
  try {
    example = await createExampleApp({ ...rest, baseUrl: publicUrl ?? internalUrl, internalUrl });
  } catch (err) {
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
    });
    throw err;
  }
  server.off('request', starting);
  server.on('request', example.app);
  return {
    ...example,
    url: publicUrl ? new URL(publicUrl).origin : internalUrl,
    server,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      });
      await example.close();
    },
  };
}
