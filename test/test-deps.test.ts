// The test command's own install step (scripts/test-deps.mjs), on stand-in programs in a temporary PATH:
// what it finds, what it installs with apt-get (a stand-in that records its arguments) and how it
// fails when it cannot install.
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, beforeEach, expect, test } from '@jest/globals';

import { ensureTestDependencies as ensure, findTestDependencies as find } from '../scripts/test-deps.mjs';

const SCRIPT = path.resolve('scripts/test-deps.mjs');
const DEBIAN = process.platform === 'linux' && existsSync('/etc/debian_version');
let bin: string;
let logs: string[];

const fake = (name: string, body = 'exit 0'): string => {
  const file = path.join(bin, name);
  writeFileSync(file, `#!/bin/sh\n${body}\n`);
  chmodSync(file, 0o755);
  return file;
};
const env = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({ PATH: bin, ...extra });

beforeEach(() => {
  bin = mkdtempSync(path.join(os.tmpdir(), 'mrrt-deps-'));
  chmodSync(bin, 0o755);
  logs = [];
});
afterEach(() => rmSync(bin, { recursive: true, force: true }));

test('everything on PATH: found, nothing installed, nothing logged, CHROMIUM_PATH set for the tests', () => {
  fake('redis-server');
  fake('redis-cli');
  fake('chromium-browser');
  const environment = env();
  expect(ensure({ env: environment, log: (line) => logs.push(line) })).toEqual({
    'redis-server': path.join(bin, 'redis-server'),
    'redis-cli': path.join(bin, 'redis-cli'),
    chromium: path.join(bin, 'chromium-browser'),
  });
  expect(environment.CHROMIUM_PATH).toBe(path.join(bin, 'chromium-browser'));
  expect(logs).toEqual([]);
});

test('CHROMIUM_PATH wins over PATH, and one that is not executable is an error rather than an install', () => {
  fake('chromium');
  const chrome = fake('my-chrome');
  expect(find(env({ CHROMIUM_PATH: chrome })).chromium).toBe(chrome);
  fake('redis-server');
  fake('redis-cli');
  fake('apt-get', `echo "$@" >> ${bin}/apt.log`);
  expect(() => ensure({ env: env({ CHROMIUM_PATH: path.join(bin, 'nothing') }), log: (line) => logs.push(line) })).toThrow(
    /chromium, for the real-browser tests[\s\S]*CHROMIUM_PATH=.*nothing is not an executable file/,
  );
  expect(existsSync(path.join(bin, 'apt.log'))).toBe(false);
});

test('missing programs are installed with one apt-get update and one apt-get install of the missing packages only', () => {
  fake('redis-server');
  // The stand-in apt-get records its arguments; "install" puts the packages' programs on PATH.
  fake(
    'apt-get',
    [
      `echo "$@" >> ${bin}/apt.log`,
      `case "$*" in *install*chromium*) echo "#!/bin/sh" > ${bin}/chromium; /bin/chmod +x ${bin}/chromium;; esac`,
      `case "$*" in *install*redis-tools*) echo "#!/bin/sh" > ${bin}/redis-cli; /bin/chmod +x ${bin}/redis-cli;; esac`,
    ].join('\n'),
  );
  const environment = env();
  if (!DEBIAN) {
    expect(() => ensure({ env: environment, log: (line) => logs.push(line), root: true })).toThrow(/this is not a Debian system/);
    return;
  }
  const found = ensure({ env: environment, log: (line) => logs.push(line), root: true });
  expect(found.chromium).toBe(path.join(bin, 'chromium'));
  expect(found['redis-cli']).toBe(path.join(bin, 'redis-cli'));
  expect(readFileSync(path.join(bin, 'apt.log'), 'utf8').trim().split('\n')).toEqual([
    '-o DPkg::Lock::Timeout=300 update -qq',
    '-o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends redis-tools chromium',
  ]);
  expect(logs).toHaveLength(2);
  expect(logs[0]).toBe('test setup: installing redis-tools chromium with apt-get (missing: redis-cli, chromium); this happens once per machine');
  expect(logs[1]).toMatch(/^test setup: installed redis-tools chromium in \d+ s$/);
  expect(environment.CHROMIUM_PATH).toBe(path.join(bin, 'chromium'));
});

test('an apt-get that fails is reported with its output and what to install by hand', () => {
  fake('apt-get', 'echo "E: Unable to locate package chromium" >&2; exit 100');
  expect(() => ensure({ env: env(), log: (line) => logs.push(line), root: true })).toThrow(
    DEBIAN ? /apt-get update -qq failed \(exit 100\):\nE: Unable to locate package chromium/ : /this is not a Debian system/,
  );
});

test('MRRT_TEST_NO_INSTALL: never installs, names every missing program and how to install it', () => {
  fake('apt-get', `echo "$@" >> ${bin}/apt.log`);
  let message = '';
  try {
    ensure({ env: env({ MRRT_TEST_NO_INSTALL: '1' }), log: (line) => logs.push(line) });
  } catch (err) {
    message = (err as Error).message;
  }
  expect(message).toMatch(
    /^The tests need programs that are missing:\n {2}- redis-server, .*\n {2}- redis-cli, .*\n {2}- chromium, .*\nThey are not installed automatically: MRRT_TEST_NO_INSTALL is set\./,
  );
  expect(message).toContain('apt-get install --no-install-recommends redis-server chromium');
  expect(message).toContain('brew install redis');
  expect(existsSync(path.join(bin, 'apt.log'))).toBe(false);
});

test('not root: never installs, says why', () => {
  fake('apt-get', `echo "$@" >> ${bin}/apt.log`);
  expect(() => ensure({ env: env(), log: (line) => logs.push(line), root: false })).toThrow(
    /The tests need programs that are missing:[\s\S]*installing needs root/,
  );
  expect(existsSync(path.join(bin, 'apt.log'))).toBe(false);
});

test('the command line prints what it found, or fails with the message and exit code 1', () => {
  fake('redis-server', 'echo "Redis server v=7.0.15"');
  fake('redis-cli');
  fake('chromium');
  const ok = spawnSync(process.execPath, [SCRIPT], { env: { PATH: bin }, encoding: 'utf8' });
  expect(ok.status).toBe(0);
  expect(ok.stdout).toBe(`redis-server: ${bin}/redis-server\nredis-cli: ${bin}/redis-cli\nchromium: ${bin}/chromium\nRedis server v=7.0.15\n`);

  rmSync(path.join(bin, 'chromium'));
  const failed = spawnSync(process.execPath, [SCRIPT], { env: { PATH: bin, MRRT_TEST_NO_INSTALL: '1', CHROMIUM_PATH: '' }, encoding: 'utf8' });
  expect(failed.status).toBe(1);
  expect(failed.stdout).toBe('');
  expect(failed.stderr).toMatch(/^The tests need programs that are missing:\n {2}- chromium, /);
});
