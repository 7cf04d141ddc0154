// The Chromium the browser tests drive with playwright-core: jest's global setup finds or installs
// one (scripts/test-deps.mjs); CHROMIUM_PATH names one elsewhere.
import { chromium, type Browser } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

// Playwright adds --headless (headless: true) and a fresh temporary --user-data-dir per launch itself.
// Without the background-networking flags Chromium keeps trying to reach Google's hosts.
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** A headless Chromium, started with the flags every browser test uses. */
export const launchChromium = (): Promise<Browser> => chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 30_000 });
