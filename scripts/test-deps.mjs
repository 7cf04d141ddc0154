#!/usr/bin/env node
// The programs the test suite runs that no npm package ships: redis-server and redis-cli (the
// cluster, outage, sentinel and multi-instance tests start their own Redis processes) and a Chromium
// (the real-browser tests, driven by playwright-core, which downloads no browser). jest's global
// setup calls ensureTestDependencies() before any test runs; `node scripts/test-deps.mjs` does the same
// from a shell.
//
// Found on PATH (Chromium also through CHROMIUM_PATH), they are left alone. Missing ones are installed
// with apt-get when that can work (Debian or a derivative, as root, MRRT_TEST_NO_INSTALL unset), with
// a log line saying so; otherwise this fails with a message naming what to install.
import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Chromium or Chrome executables playwright-core can drive, in the order they are looked for on PATH. */
const CHROMIUM_NAMES = ['chromium', 'chromium-browser', 'google-chrome-stable', 'google-chrome'];

const REQUIREMENTS = [
  { name: 'redis-server', debian: 'redis-server', used: 'for the tests that start their own Redis: cluster, outage, sentinel, multi-instance' },
  { name: 'redis-cli', debian: 'redis-tools', used: 'to create the test Redis Cluster' },
  { name: 'chromium', debian: 'chromium', used: 'for the real-browser tests: browser.test.ts, auth0-spa.test.ts' },
];

const MANUAL = `Install them by hand, then run the tests again:
  Debian:          apt-get install --no-install-recommends redis-server chromium   (as root)
  Ubuntu:          apt-get install redis-server chromium-browser   (or any Chrome, see CHROMIUM_PATH)
  Fedora:          dnf install redis chromium
  macOS (Homebrew): brew install redis; install Google Chrome and set
                   CHROMIUM_PATH="/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"
CHROMIUM_PATH may name any Chromium or Chrome executable; redis-server and redis-cli must be on PATH
(the tests run on Redis 7 and Chromium from Debian 12).`;

function isExecutable(file) {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function onPath(name, env) {
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (dir && isExecutable(path.join(dir, name))) return path.join(dir, name);
  }
  return undefined;
}

function findChromium(env) {
  if (env.CHROMIUM_PATH) return isExecutable(env.CHROMIUM_PATH) ? env.CHROMIUM_PATH : undefined;
  for (const name of CHROMIUM_NAMES) {
    const found = onPath(name, env);
    if (found) return found;
  }
  return undefined;
}

/** What is found where; `undefined` for each program that is missing. */
export function findTestDependencies(env = process.env) {
  return {
    'redis-server': onPath('redis-server', env),
    'redis-cli': onPath('redis-cli', env),
    chromium: findChromium(env),
  };
}

function whyNoInstall(env, root) {
  if (env.CHROMIUM_PATH && !isExecutable(env.CHROMIUM_PATH)) return `CHROMIUM_PATH=${env.CHROMIUM_PATH} is not an executable file`;
  if (env.MRRT_TEST_NO_INSTALL) return 'MRRT_TEST_NO_INSTALL is set';
  if (process.platform !== 'linux' || !existsSync('/etc/debian_version')) return 'this is not a Debian system';
  if (!onPath('apt-get', env)) return 'apt-get is not on PATH';
  if (!root) return 'installing needs root (run the tests as root once, or install by hand)';
  return undefined;
}

function apt(args, env) {
  const result = spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=300', ...args], {
    env: { ...env, DEBIAN_FRONTEND: 'noninteractive' },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (result.status !== 0) {
    const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim().split('\n').slice(-15).join('\n');
    throw new Error(`apt-get ${args.join(' ')} failed (${result.error?.message ?? `exit ${result.status}`}):\n${output}`);
  }
}

/**
 * Makes sure every program the tests run is there: finds it, or installs what is missing with
 * apt-get (once, one line logged), or throws naming what to install. Sets CHROMIUM_PATH for the test
 * processes to the Chromium found. Returns what was found. `root` says whether this process may install.
 */
export function ensureTestDependencies({ env = process.env, log = (line) => process.stderr.write(`${line}\n`), root = process.getuid?.() === 0 } = {}) {
  let found = findTestDependencies(env);
  let missing = REQUIREMENTS.filter(({ name }) => !found[name]);
  if (missing.length > 0) {
    const reason = whyNoInstall(env, root);
    if (reason) {
      const list = missing.map(({ name, used }) => `  - ${name}, ${used}`).join('\n');
      throw new Error(`The tests need programs that are missing:\n${list}\nThey are not installed automatically: ${reason}.\n${MANUAL}`);
    }
    const packages = [...new Set(missing.map(({ debian }) => debian))];
    log(`test setup: installing ${packages.join(' ')} with apt-get (missing: ${missing.map(({ name }) => name).join(', ')}); this happens once per machine`);
    const started = Date.now();
    apt(['update', '-qq'], env);
    apt(['install', '-y', '-qq', '--no-install-recommends', ...packages], env);
    found = findTestDependencies(env);
    missing = REQUIREMENTS.filter(({ name }) => !found[name]);
    if (missing.length > 0) {
      throw new Error(`apt-get installed ${packages.join(' ')} but ${missing.map(({ name }) => name).join(', ')} is still not on PATH.\n${MANUAL}`);
    }
    log(`test setup: installed ${packages.join(' ')} in ${Math.round((Date.now() - started) / 1000)} s`);
  }
  env.CHROMIUM_PATH = found.chromium;
  return found;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  try {
    const found = ensureTestDependencies();
    for (const [name, file] of Object.entries(found)) process.stdout.write(`${name}: ${file}\n`);
    if (found['redis-server']) process.stdout.write(execFileSync(found['redis-server'], ['--version'], { encoding: 'utf8' }));
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    process.exitCode = 1;
  }
}
