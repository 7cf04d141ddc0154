// The home page story in a real browser: headless Chromium (the one jest's global setup found or
// installed, in CHROMIUM_PATH) driven by playwright-core against the example server on an ephemeral
// 127.0.0.1 port. Sign-in through the real login and consent pages, then every step of the story by
// clicking the page's own buttons. No skipping: without Chromium this test fails.
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { type Browser, type Locator, type Page } from 'playwright-core';

import { BILLING_API, MESSAGES_API, config } from '../example-server/config.js';
import { startExampleServer, type RunningExample } from '../example-server/server.js';
import { CHROMIUM, launchChromium } from './support/chromium.js';

const JWT = /eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/;

describe('example home page in headless Chromium', () => {
  let server: RunningExample | undefined;
  let browser: Browser | undefined;
  let screenshots: string | undefined;
  const ownScreenshotDir = !process.env.MRRT_SCREENSHOT_DIR;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: run the tests through jest's global setup (npm test), which finds or installs Chromium (scripts/test-deps.mjs)`);
    }
    server = await startExampleServer({ port: 0, host: '127.0.0.1', logLevel: 'silent' });
    browser = await launchChromium();
    screenshots = process.env.MRRT_SCREENSHOT_DIR ?? (await mkdtemp(path.join(os.tmpdir(), 'mrrt-browser-')));
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    if (screenshots && ownScreenshotDir) await rm(screenshots, { recursive: true, force: true });
  });

  /** The home page's step `n` (its `<div class="step">` headed "n. …"). */
  /** Whether the step's heading is on screen (the page scrolled to the result the user asked for). */
  const inView = async (page: Page, n: number): Promise<boolean> => {
    const box = await page.locator(`#step-${n}`).boundingBox(); // relative to the viewport
    const height = page.viewportSize()?.height ?? 0;
    return box !== null && box.y >= 0 && box.y < height;
  };
  const step = (page: Page, n: number): Locator => page.locator('div.step').filter({ has: page.locator('h2', { hasText: new RegExp(`^${n}\\. `) }) });
  const button = (scope: Page | Locator, name: string): Locator => scope.getByRole('button', { name, exact: true });

  test('sign in through the login and consent pages, call the messages API, MRRT exchange, billing API, audience mix-up refused', async () => {
    const context = await browser!.newContext({ viewport: { width: 1200, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(15_000);
    const pageErrors: string[] = [];
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (message) => {
      if (message.type() === 'error') pageErrors.push(message.text());
    });
    try {
      await page.goto(`${server!.url}/`);
      expect(await page.title()).toBe('MRRT demo');
      expect(await page.locator('h1').textContent()).toBe('Multi-Resource Refresh Tokens: the demo');
      expect(await page.getByText('Signed in as').count()).toBe(0);

      // 1. sign in: the home page's button → oidc-provider → the example's login page
      await button(step(page, 1), 'Sign in').click();
      await page.waitForURL(/\/interaction\/[^/]+$/);
      expect(await page.locator('h1').textContent()).toBe('Sign in');
      expect(await page.locator('body').textContent()).toContain('MRRT demo app asks you to sign in.');
      await page.getByLabel('Username').fill('alice');
      await page.getByLabel('Password').fill('wonderland');
      await button(page, 'Sign in').click();

      // the consent page, reached through the provider's redirects
      await page.locator('h1', { hasText: 'Allow access?' }).waitFor();
      const consent = await page.locator('body').textContent();
      expect(consent).toContain('Signed in as Alice Liddell');
      expect(consent).toContain(MESSAGES_API);
      expect(consent).toContain(BILLING_API); // the app's MRRT policy is disclosed
      await button(page, 'Allow').click();

      // back on the home page, signed in
      await page.waitForURL(`${server!.url}/`);
      await page.getByText('Signed in as').waitFor();
      expect(await step(page, 1).locator('p').first().textContent()).toContain('Signed in as Alice Liddell (sub alice)');

      // 2. the messages API with the sign-in access token
      await button(step(page, 2), 'Call the messages API').click();
      const messagesStatus = step(page, 2).locator('strong.ok, strong.bad');
      await messagesStatus.waitFor();
      expect(await messagesStatus.textContent()).toBe('200');
      const messagesAnswer = JSON.parse((await step(page, 2).locator('pre').last().textContent()) ?? '') as Record<string, unknown>;
      expect(messagesAnswer).toMatchObject({ audience: MESSAGES_API, subject: 'alice', client_id: 'demo-app', messages: config.data.messages.alice });

      // 3. MRRT: the same refresh token exchanged for a billing API token
      await button(step(page, 3), 'Exchange the same refresh token for billing (MRRT)').click();
      const exchangeStatus = step(page, 3).locator('strong.ok, strong.bad');
      await exchangeStatus.waitFor();
      expect(await exchangeStatus.textContent()).toBe('200');
      const exchangeText = await step(page, 3).textContent();
      expect(exchangeText).toContain('(the same refresh token, still valid)');
      const exchangePres = step(page, 3).locator('pre');
      // request, response, decoded header, decoded payload
      expect(await exchangePres.count()).toBe(4);
      expect(JSON.parse((await exchangePres.nth(1).textContent()) ?? '')).toMatchObject({ resource: BILLING_API, scope: 'billing:read', token_type: 'Bearer' });
      expect(JSON.parse((await exchangePres.nth(2).textContent()) ?? '')).toMatchObject({ alg: 'RS256', typ: 'at+jwt' });
      const billingClaims = JSON.parse((await exchangePres.nth(3).textContent()) ?? '') as Record<string, unknown>;
      expect(billingClaims).toMatchObject({ aud: BILLING_API, scope: 'billing:read', client_id: 'demo-app', sub: 'alice', iss: server!.issuer });

      // 4. the billing API with the billing token
      await button(step(page, 4), 'Call the billing API with the billing token').click();
      const billingStatus = step(page, 4).locator('strong.ok, strong.bad');
      await billingStatus.waitFor();
      expect(await billingStatus.textContent()).toBe('200');
      const billingAnswer = JSON.parse((await step(page, 4).locator('pre').last().textContent()) ?? '') as Record<string, unknown>;
      expect(billingAnswer).toMatchObject({ audience: BILLING_API, subject: 'alice', invoices: config.data.invoices.alice });

      // 5. the messages token sent to the billing API: refused
      await button(step(page, 5), 'Send the messages token to the billing API').click();
      const mixupStatus = step(page, 5).locator('strong.ok, strong.bad');
      await mixupStatus.waitFor();
      expect(await mixupStatus.textContent()).toBe('401');
      // the last step sits far below the fold of the full page; its answer is shown where the user is looking
      expect(page.url()).toBe(`${server!.url}/#step-5`);
      expect(await inView(page, 5)).toBe(true);
      expect(await mixupStatus.getAttribute('class')).toBe('bad');
      const mixupText = await step(page, 5).textContent();
      expect(mixupText).toContain('WWW-Authenticate: Bearer realm="https://billing.example.com", error="invalid_token"');
      expect(JSON.parse((await step(page, 5).locator('pre').last().textContent()) ?? '')).toEqual({
        error: 'invalid_token',
        error_description: 'the access token is not for this API (aud mismatch)',
      });

      // earlier answers are still shown, and the page never contains a token, only decoded contents
      expect(await step(page, 4).textContent()).toContain('INV-1002');
      expect(await page.content()).not.toMatch(JWT);
      expect(pageErrors).toEqual([]);

      const file = path.join(screenshots!, 'home-after-story.png');
      await page.screenshot({ path: file, fullPage: true });
      const png = await readFile(file);
      expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
      expect(png.length).toBeGreaterThan(20_000);

      // signing out ends the provider's session too: the next sign-in shows the login page again
      await button(step(page, 1), 'Sign out').click();
      await button(page, 'Yes, sign me out').click();
      await page.waitForURL(`${server!.url}/`);
      await button(step(page, 1), 'Sign in').click();
      await page.waitForURL(/\/interaction\/[^/]+$/);
      expect(await page.locator('h1').textContent()).toBe('Sign in');
    } finally {
      await context.close();
    }
  }, 60_000);
});
