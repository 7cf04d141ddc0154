// Auth0's own browser SDK, unmodified: the example server's SPA page (/spa) loads the
// @auth0/auth0-spa-js production bundle the lock file pins and signs in against the example's
// Auth0-style tenant (auth0Configuration + withMrrt profile 'auth0') in headless Debian Chromium
// driven by playwright-core, on an ephemeral 127.0.0.1 port. The server's own log counts the
// token requests. No skipping: without Chromium this test fails (jest's global setup finds or installs one).
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { type Browser, type BrowserContext, type Page } from 'playwright-core';

import { BILLING_API, MESSAGES_API, config, spaApp } from '../example-server/config.js';
import { startExampleServer, type RunningExample } from '../example-server/server.js';
import { CHROMIUM, launchChromium } from './support/chromium.js';

const require = createRequire(import.meta.url);
const LOCKED_SDK = (JSON.parse(readFileSync('package-lock.json', 'utf8')) as { packages: Record<string, { version: string }> }).packages[
  'node_modules/@auth0/auth0-spa-js'
]!.version;

interface Decoded {
  alg: string;
  typ: string;
  aud: string;
  scope: string;
  client_id: string;
  sub: string;
  iss: string;
  cnf?: { jkt?: string };
}
type LogEntry = Readonly<Record<string, unknown>>;

describe('auth0-spa-js (useMrrt) on the example SPA page in headless Chromium', () => {
  let server: RunningExample | undefined;
  let browser: Browser | undefined;
  const log: LogEntry[] = [];

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium (jest's global setup finds or installs one)`);
    }
    server = await startExampleServer({
      port: 0,
      host: '127.0.0.1',
      logLevel: 'info',
      logSink: (entry) => {
        log.push(entry);
      },
    });
    browser = await launchChromium();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  const tenant = () => `${server!.url}/`;
  /** The tenant's successful token requests of one grant type since `from`. */
  const grants = (grantType: string, from: number) =>
    log.slice(from).filter((entry) => entry.event === 'oidc.grant' && entry.issuer === tenant() && entry.grant_type === grantType);
  /** Every POST to the tenant's token endpoint since `from`, whatever its answer (the server's request log). */
  const tokenRequests = (from: number) =>
    log.slice(from).filter((entry) => entry.event === 'http.request' && entry.method === 'POST' && entry.path === '/oauth/token').length;
  const decoded = async (page: Page, id: string): Promise<Decoded> => JSON.parse((await page.locator(`#${id}`).textContent()) ?? '') as Decoded;
  /** getTokenSilently in the page, through the SDK; a rejection comes back as { name, message }. */
  const getToken = (page: Page, options: Record<string, unknown>) =>
    page.evaluate(async (opts) => {
      const demo = (
        globalThis as unknown as {
          spaDemo: { client: { getTokenSilently(o: unknown): Promise<string> }; decode(jwt: string): { payload: Record<string, unknown> } };
        }
      ).spaDemo;
      try {
        return { claims: demo.decode(await demo.client.getTokenSilently(opts)).payload };
      } catch (err) {
        const { MissingScopesError } = (globalThis as unknown as { auth0: { MissingScopesError: new () => Error } }).auth0;
        const name = err instanceof MissingScopesError ? 'MissingScopesError' : (err as Error).name;
        return { error: { name, code: (err as { error?: string }).error, message: (err as Error).message } };
      }
    }, options);

  async function signIn(context: BrowserContext, query = ''): Promise<Page> {
    const page = await context.newPage();
    page.setDefaultTimeout(15_000);
    await page.goto(`${server!.url}${spaApp.path}${query}`);
    await page.locator('body[data-ready="true"]').waitFor();
    expect(await page.locator('#status').textContent()).toBe('Not signed in.');
    const from = log.length;
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.waitForURL(/\/u\/[^/]+$/);
    await page.getByLabel('Username').fill('alice');
    await page.getByLabel('Password').fill('wonderland');
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    // no consent page: a first-party client and APIs that allow skipping consent
    await page.waitForURL(`${server!.url}${spaApp.path}`);
    await page.locator('body[data-ready="true"]').waitFor();
    expect(await page.locator('#status').textContent()).toBe('Signed in as Alice Liddell (alice)');
    expect(grants('authorization_code', from)).toHaveLength(1);
    return page;
  }

  test('the page serves the SDK version the lock file pins', async () => {
    const res = await fetch(`${server!.url}${spaApp.path}/auth0-spa-js.production.js`);
    expect(res.status).toBe(200);
    const body = await res.text();
    expect(LOCKED_SDK).toBe((require('@auth0/auth0-spa-js/package.json') as { version: string }).version);
    expect(body).toContain(`"${LOCKED_SDK}"`);
  });

  test("sign in for the messages API, then the billing API through MRRT with exactly one refresh_token request; a scope outside the policy is the SDK's MissingScopesError and the refresh token still works; logout", async () => {
    const context = await browser!.newContext();
    const pageErrors: string[] = [];
    try {
      const page = await signIn(context);
      page.on('pageerror', (err) => pageErrors.push(err.message));

      // the messages API with the sign-in token (from the SDK's cache, no token request)
      let from = log.length;
      await page.getByRole('button', { name: 'Call the messages API' }).click();
      await page.locator('#messages-answer').waitFor();
      expect(await decoded(page, 'messages-token')).toMatchObject({
        alg: 'RS256',
        typ: 'at+jwt',
        aud: MESSAGES_API,
        scope: 'messages:read',
        client_id: spaApp.clientId,
        sub: 'alice',
        iss: tenant(),
      });
      expect(JSON.parse((await page.locator('#messages-answer').textContent()) ?? '')).toMatchObject({
        status: 200,
        body: { audience: MESSAGES_API, subject: 'alice', client_id: spaApp.clientId, messages: config.data.messages.alice },
      });
      expect(grants('refresh_token', from)).toHaveLength(0);

      // MRRT: the billing token with the same refresh token, one refresh_token request
      from = log.length;
      await page.getByRole('button', { name: 'Get a billing token and call the billing API' }).click();
      await page.locator('#billing-answer').waitFor();
      expect(await decoded(page, 'billing-token')).toMatchObject({
        alg: 'RS256',
        aud: BILLING_API,
        scope: 'billing:read',
        client_id: spaApp.clientId,
        sub: 'alice',
        iss: tenant(),
      });
      expect(JSON.parse((await page.locator('#billing-answer').textContent()) ?? '')).toMatchObject({
        status: 200,
        body: { audience: BILLING_API, subject: 'alice', invoices: config.data.invoices.alice },
      });
      expect(grants('refresh_token', from)).toEqual([expect.objectContaining({ client_id: spaApp.clientId })]);
      expect(tokenRequests(from)).toBe(1);
      const exchanges = log.slice(from).filter((entry) => entry.event === 'mrrt.exchange');
      expect(exchanges).toEqual([
        expect.objectContaining({
          outcome: 'issued',
          reason: 'policy',
          clientId: spaApp.clientId,
          resolvedAudience: BILLING_API,
          requestedScope: 'openid profile email offline_access billing:read',
        }),
      ]);
      expect(await page.locator('#error').isHidden()).toBe(true);

      // a scope outside the policy: 200 without it, which the SDK reports as MissingScopesError
      from = log.length;
      const outside = await getToken(page, { authorizationParams: { audience: BILLING_API, scope: 'billing:read billing:write' }, cacheMode: 'off' });
      expect(outside.error).toMatchObject({ name: 'MissingScopesError', code: 'missing_scopes' });
      expect(outside.error?.message).toContain('billing:write');
      expect(outside.error?.message).not.toMatch(/openid|profile|email|offline_access/);
      expect(grants('refresh_token', from)).toHaveLength(1);

      // the refresh token (rotated by that request, and kept by the SDK) still works, for both APIs
      from = log.length;
      const messages = await getToken(page, { cacheMode: 'off' });
      expect(messages.claims).toMatchObject({ aud: MESSAGES_API, scope: 'messages:read', client_id: spaApp.clientId });
      const billing = await getToken(page, { authorizationParams: { audience: BILLING_API, scope: 'billing:read' }, cacheMode: 'off' });
      expect(billing.claims).toMatchObject({ aud: BILLING_API, scope: 'billing:read', client_id: spaApp.clientId });
      expect(grants('refresh_token', from)).toHaveLength(2);
      expect(log.slice(from).filter((entry) => entry.event === 'oidc.grant_error' && entry.issuer === tenant())).toEqual([]);

      // logout through /v2/logout with returnTo: back on the page, signed out, no confirmation to click
      const confirmed = page.waitForRequest((req) => new URL(req.url()).pathname === '/v2/logout/confirm');
      await page.getByRole('button', { name: 'Sign out' }).click();
      expect((await confirmed).method()).toBe('POST');
      await page.waitForURL(`${server!.url}${spaApp.path}`);
      await page.locator('body[data-ready="true"]').waitFor();
      expect(await page.locator('#status').textContent()).toBe('Not signed in.');
      // the tenant's session ended too: signing in again asks for the password
      await page.getByRole('button', { name: 'Sign in', exact: true }).click();
      await page.waitForURL(/\/u\/[^/]+$/);
      expect(await page.getByLabel('Password').isVisible()).toBe(true);
      expect(pageErrors).toEqual([]);
    } finally {
      await context.close();
    }
  }, 90_000);

  test('useDpop: true gives DPoP-bound tokens (cnf.jkt) at sign-in and through MRRT', async () => {
    const context = await browser!.newContext();
    try {
      const page = await signIn(context, '?dpop=1');
      expect(await page.locator('#dpop-mode').textContent()).toContain('DPoP is on');
      const from = log.length;
      const messages = await getToken(page, {});
      const billing = await getToken(page, { authorizationParams: { audience: BILLING_API, scope: 'billing:read' } });
      expect(messages.claims).toMatchObject({ aud: MESSAGES_API, client_id: spaApp.clientId });
      expect(billing.claims).toMatchObject({ aud: BILLING_API, scope: 'billing:read', client_id: spaApp.clientId });
      const jkt = (messages.claims!.cnf as { jkt?: string } | undefined)?.jkt;
      expect(jkt).toMatch(/^[\w-]{43}$/);
      expect((billing.claims!.cnf as { jkt?: string }).jkt).toBe(jkt);
      expect(grants('refresh_token', from)).toHaveLength(1);
      expect(tokenRequests(from)).toBe(1);
    } finally {
      await context.close();
    }
  }, 90_000);
});
