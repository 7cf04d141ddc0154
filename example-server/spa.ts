/**
 * The SPA page and the Auth0-style tenant it signs in with.
 *
 * Auth0's SDKs take a `domain` and derive everything from it: `<domain>/authorize`,
 * `<domain>/oauth/token` (the SDK's token worker refuses any other path), `<domain>/v2/logout`, and
 * the issuer `<domain>/` with its trailing slash. The example's main provider lives at `/oidc` with
 * the issuer `<PUBLIC_URL>/oidc`, so the SPA gets a second provider, built with the package's
 * Auth0 recipe (`auth0Configuration`, `auth0LogoutParameters`, `withMrrt` with `profile: 'auth0'`),
 * at the root of the same origin. It shares the users, the APIs, the signing keys and the storage
 * backend with the main provider, and has its own clients, sessions (cookie names), login page
 * (`/u/:uid`, where Auth0 has its Universal Login) and MRRT policies.
 */
import { createRequire } from 'node:module';
import path from 'node:path';

import express, { type Request, type Response, type Router } from 'express';
import type { Redis } from 'ioredis';
import type * as jose from 'jose';
import Provider, { errors, type Configuration, type ResourceServer } from 'oidc-provider';

import {
  MemoryAdapter,
  MemoryPolicyStore,
  MemoryStorage,
  PolicyConflictError,
  RedisAdapter,
  RedisPolicyStore,
  auth0Configuration,
  auth0LogoutParameters,
  parsePolicies,
  withMrrt,
  type PolicyStore,
} from '../lib/index.js';
import { spaApp, type ExampleConfig } from './config.js';
import { html, pageHeaders, sendPage, type Html, renderError } from './html.js';
import { authenticate, demoCredentials, signInForm, wrongStep } from './interactions.js';
import type { Logger } from './log.js';
import { demoApis, resourceServerOf } from './resource-api.js';
import { SPA_CSP, SPA_SCRIPT, spaPage } from './spa-page.js';

const require = createRequire(import.meta.url);
const SDK_DIR = path.dirname(require.resolve('@auth0/auth0-spa-js/package.json'));
const SDK_VERSION = (require('@auth0/auth0-spa-js/package.json') as { version: string }).version;

/** The tenant's own endpoints at the root of the origin (everything else falls through to the rest of the app). */
const TENANT_PATH = /^\/(?:authorize|oauth|userinfo|\.well-known|v2\/logout)(?:\/|$)/;

export interface SpaTenantOptions {
  /** The public origin, e.g. `http://127.0.0.1:3000`; the tenant's issuer is `<baseUrl>/`. */
  readonly baseUrl: string;
  readonly config: ExampleConfig;
  /** The main provider's private signing keys (an RSA key for RS256 among them). */
  readonly jwks: { keys: jose.JWK[] };
  /** Their public half, for the demo APIs mounted at `/spa/api`. */
  readonly keys: jose.JWTVerifyGetKey;
  readonly cookieKeys: readonly string[];
  readonly logger: Logger;
  /** With it, the tenant keeps oidc-provider's data and its policies in Redis under `prefix`; without, in memory. */
  readonly redis?: { readonly client: Redis; readonly prefix: string };
}

export interface SpaTenant {
  readonly provider: Provider;
  readonly issuer: string;
  readonly store: PolicyStore;
  /** Mount at the root of the app: the SPA page at `/spa`, the login page at `/u`, the tenant's endpoints. */
  readonly router: Router;
  close(): Promise<void>;
}

function loginPage(config: ExampleConfig, uid: string, error?: string, username = ''): Html {
  return html`<h1>Sign in</h1>
    <p><strong>${spaApp.clientName}</strong> asks you to sign in (the tenant's login page, where Auth0 has its Universal Login).</p>
    ${signInForm(`/u/${encodeURIComponent(uid)}`, error, username)} ${demoCredentials(config.users)}`;
}

export async function createSpaTenant(options: SpaTenantOptions): Promise<SpaTenant> {
  const { config, logger } = options;
  const baseUrl = new URL(options.baseUrl).origin;
  const issuer = `${baseUrl}/`;
  const pageUrl = `${baseUrl}${spaApp.path}`;

  let store: PolicyStore;
  let adapter: NonNullable<Configuration['adapter']>;
  if (options.redis) {
    store = new RedisPolicyStore(options.redis.client, { prefix: `${options.redis.prefix}{policies}:` });
    adapter = RedisAdapter.factory(options.redis.client, { prefix: `${options.redis.prefix}oidc:` });
  } else {
    const storage = new MemoryStorage();
    store = new MemoryPolicyStore();
    adapter = (name: string) => new MemoryAdapter(name, storage);
  }

  const apis = new Map(
    config.apis.filter((api) => api.audience === spaApp.loginAudience || api.audience === spaApp.mrrtAudience).map((api) => [api.audience, api]),
  );
  const users = new Map(config.users.map((user) => [user.id, user]));
  const skipConsent = [...apis.values()].filter((api) => api.skipConsent).map((api) => api.audience);

  const MrrtProvider = withMrrt(Provider, { store, allowSkippingConsent: skipConsent, profile: 'auth0' });
  const configuration: Configuration = {
    adapter,
    clients: [
      {
        client_id: spaApp.clientId,
        client_name: spaApp.clientName,
        first_party: true,
        application_type: 'web',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: [pageUrl],
        post_logout_redirect_uris: [pageUrl],
      },
    ] as Configuration['clients'],
    jwks: options.jwks as Configuration['jwks'],
    cookies: {
      keys: [...options.cookieKeys],
      // the main provider at /oidc uses oidc-provider's default names on the same origin
      names: { session: '_spa_session', interaction: '_spa_interaction', resume: '_spa_interaction_resume' },
    },
    claims: { openid: ['sub'], profile: ['name'], email: ['email', 'email_verified'] },
    findAccount: (_ctx, sub) => {
      const user = users.get(sub);
      return user && { accountId: user.id, claims: () => ({ sub: user.id, name: user.name, email: user.email, email_verified: true }) };
    },
    interactions: { url: (_ctx, interaction) => `/u/${interaction.uid}` },
    rotateRefreshToken: true,
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
      AuthorizationCode: 60,
      Grant: 14 * 24 * 3600,
      IdToken: 3600,
      Interaction: 3600,
      RefreshToken: 14 * 24 * 3600,
      Session: 14 * 24 * 3600,
    },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        getResourceServerInfo: (_ctx, resource): ResourceServer => {
          const api = apis.get(resource);
          if (!api) throw new errors.InvalidTarget();
          return resourceServerOf(api);
        },
      },
    },
    renderError: renderError({ href: spaApp.path, label: 'Back to the SPA' }),
  };
  const provider = new MrrtProvider(issuer, auth0Configuration(configuration, { allowSkippingConsent: skipConsent }));
  provider.use(auth0LogoutParameters());
  provider.on('mrrt.exchange', (_ctx, event) => logger.info({ event: 'mrrt.exchange', issuer, ...event }));
  provider.on('server_error', (_ctx, error) => logger.error({ event: 'oidc.server_error', issuer, message: error.message }));
  provider.on('grant.success', (ctx) => {
    logger.info({ event: 'oidc.grant', issuer, grant_type: ctx.oidc.params?.grant_type, client_id: ctx.oidc.client?.clientId });
  });
  provider.on('grant.error', (ctx, error) => {
    logger.info({
      event: 'oidc.grant_error',
      issuer,
      grant_type: ctx.oidc.params?.grant_type,
      client_id: ctx.oidc.client?.clientId,
      error: (error as { error?: string }).error,
    });
  });

  try {
    await store.set(spaApp.clientId, parsePolicies(spaApp.policies), { ifMatch: null });
  } catch (err) {
    if (!(err instanceof PolicyConflictError)) throw err;
  }

  const router = express.Router();
  const form = express.urlencoded({ extended: false, limit: '8kb', parameterLimit: 10 });

  router.get(spaApp.path, (_req: Request, res: Response) => {
    pageHeaders(res, 200, SPA_CSP).send(
      html`<!doctype html>
        <html lang="en">
          <head>
            <meta charset="utf-8" />
            <meta name="viewport" content="width=device-width,initial-scale=1" />
            <title>MRRT SPA (auth0-spa-js)</title>
            <style>
              body {
                font-family: system-ui, sans-serif;
                max-width: 60rem;
                margin: 2rem auto;
                padding: 0 1rem;
                color: #1d1d1f;
                line-height: 1.45;
              }
              pre {
                background: #f4f4f6;
                padding: 0.75rem;
                overflow-x: auto;
                font-size: 0.85rem;
                border-radius: 4px;
              }
              button {
                font-size: 1rem;
                padding: 0.4rem 0.9rem;
                margin: 0.2rem 0;
              }
              .step {
                border-left: 4px solid #0a66c2;
                padding: 0.2rem 1rem;
                margin: 1rem 0;
              }
              .muted {
                color: #666;
              }
              .error {
                background: #fdecea;
                padding: 0.5rem 1rem;
                border-radius: 4px;
              }
            </style>
          </head>
          <body>
            ${spaPage({
              domain: baseUrl,
              clientId: spaApp.clientId,
              path: spaApp.path,
              loginAudience: spaApp.loginAudience,
              loginScope: spaApp.loginScope,
              mrrtAudience: spaApp.mrrtAudience,
              mrrtScope: spaApp.mrrtScope,
              sdkVersion: SDK_VERSION,
            })}
          </body>
        </html>`.value,
    );
  });
  router.get(`${spaApp.path}/app.js`, (_req, res) => {
    res.type('text/javascript').set('Cache-Control', 'no-store').send(SPA_SCRIPT);
  });
  // the SDK's own production bundle, as the lock file pins it
  router.get(`${spaApp.path}/auth0-spa-js.production.js`, (_req, res) => {
    res
      .type('text/javascript')
      .set('Cache-Control', 'no-cache')
      .sendFile(path.join(SDK_DIR, 'dist', 'auth0-spa-js.production.js'));
  });
  router.use(`${spaApp.path}/api`, demoApis(config, options.keys, issuer, { messages: spaApp.loginAudience, billing: spaApp.mrrtAudience }));

  router.get('/u/:uid', async (req: Request, res: Response) => {
    const { uid, prompt } = await provider.interactionDetails(req, res);
    if (uid !== req.params.uid) return wrongStep(res, spaApp.path, 'the SPA');
    // first-party and only APIs that allow skipping consent: auth0Configuration never asks for consent here
    if (prompt.name !== 'login')
      return sendPage(
        res,
        'Error',
        html`<h1>Unexpected step: ${prompt.name}</h1>
          <p><a href="${spaApp.path}">Back to the SPA</a></p>`,
        400,
      );
    return sendPage(res, 'Sign in', loginPage(config, uid));
  });
  router.post('/u/:uid', form, async (req: Request, res: Response) => {
    const { uid, prompt, params } = await provider.interactionDetails(req, res);
    if (uid !== req.params.uid || prompt.name !== 'login') return wrongStep(res, spaApp.path, 'the SPA');
    const body = (req.body ?? {}) as Record<string, unknown>;
    const user = authenticate(config.users, body.username, body.password);
    if (!user) {
      logger.warn({ event: 'login.failed', issuer, client_id: params.client_id });
      return sendPage(
        res,
        'Sign in',
        loginPage(config, uid, 'Unknown username or wrong password.', typeof body.username === 'string' ? body.username : ''),
        401,
      );
    }
    logger.info({ event: 'login.succeeded', issuer, subject: user.id, client_id: params.client_id });
    return provider.interactionFinished(req, res, { login: { accountId: user.id } }, { mergeWithLastSubmission: false });
  });

  const callback = provider.callback();
  router.use((req, res, next) => {
    if (TENANT_PATH.test(req.path)) {
      void callback(req, res);
      return;
    }
    next();
  });

  return {
    provider,
    issuer,
    store,
    router,
    close: async () => {
      await (store as { close?: () => Promise<void> }).close?.();
    },
  };
}
