// The test command's own install step (scripts/test-deps.mjs), on fake programs in a temporary PATH:
// what it finds, what it installs with apt-get (a stand-in that records its arguments) and how it
// fails when it cannot install.
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, beforeEach, expect, test } from '@jest/globals';

import { ensureTestDependencies as ensure, findTestDependencies as find } from '../scripts/test-deps.mjs';

const SCRIPT = path.resolve('scripts/test-deps.mjs');
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
    'redis-server': path.join(bin, 'redis-server'), 'redis-cli': path.join(bin, 'redis-cli'), chromium: path.join(bin, 'chromium-browser'),
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
  expect(() => ensure({ env: env({ CHROMIUM_PATH: path.join(bin, 'nothing') }), log: (line) => logs.push(line) }))
    .toThrow(/chromium, for the real-browser tests[\s\S]*CHROMIUM_PATH=.*nothing is not an executable file/);
  expect(existsSync(path.join(bin, 'apt.log'))).toBe(false);
});

test('missing programs are installed with one apt-get update and one apt-get install of the missing packages only', () => {
  const root = process.getuid?.() === 0 && existsSync('/etc/debian_version');
  fake('redis-server');
  // The stand-in apt-get records its arguments; "install" puts the packages' programs on PATH.
  fake('apt-get', [
    `echo "$@" >> ${bin}/apt.log`,
    `case "$*" in *install*chromium*) echo "#!/bin/sh" > ${bin}/chromium; /bin/chmod +x ${bin}/chromium;; esac`,
    `case "$*" in *install*redis-tools*) echo "#!/bin/sh" > ${bin}/redis-cli; /bin/chmod +x ${bin}/redis-cli;; esac`,
  ].join('\n'));
  const environment = env();
  if (!root) {
    expect(() => ensure({ env: environment, log: (line) => logs.push(line) })).toThrow(/installing needs root/);
    return;
  }
  const found = ensure({ env: environment, log: (line) => logs.push(line) });
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
  const root = process.getuid?.() === 0 && existsSync('/etc/debian_version');
  expect(() => ensure({ env: env(), log: (line) => logs.push(line) }))
    .toThrow(root ? /apt-get update -qq failed \(exit 100\):\nE: Unable to locate package chromium/ : /installing needs root/);
});

test('MRRT_TEST_NO_INSTALL: never installs, names every missing program and how to install it', () => {
  fake('apt-get', `echo "$@" >> ${bin}/apt.log`);
  let message = '';
  try {
    ensure({ env: env({ MRRT_TEST_NO_INSTALL: '1' }), log: (line) => logs.push(line) });
  } catch (err) {
    message = (err as Error).message;
  }
  expect(message).toMatch(/^The tests need programs that are missing:\n {2}- redis-server, .*\n {2}- redis-cli, .*\n {2}- chromium, .*\nThey are not installed automatically: MRRT_TEST_NO_INSTALL is set\./);
  expect(message).toContain('apt-get install --no-install-recommends redis-server chromium');
  expect(message).toContain('brew install redis');
  expect(existsSync(path.join(bin, 'apt.log'))).toBe(false);
});

test('as a user other than root, the command line fails with the message and exit code 1 instead of installing', () => {
  if (process.getuid?.() !== 0) return; // only root can start a process as another user
  fake('apt-get', `echo "$@" >> ${bin}/apt.log`);
  const nodeDir = path.join(bin, 'node-only');
  mkdirSync(nodeDir, { mode: 0o755 });
  symlinkSync(process.execPath, path.join(nodeDir, 'node'));
  // A copy the other user can read wherever the checkout lives (often under root's own home).
  const script = path.join(bin, 'test-deps.mjs');
  copyFileSync(SCRIPT, script);
  chmodSync(script, 0o644);
  const result = spawnSync(process.execPath, [script], { env: { PATH: `${bin}:${nodeDir}` }, uid: 65534, gid: 65534, encoding: 'utf8' });
  expect(result.status).toBe(1);
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(/The tests need programs that are missing:[\s\S]*installing needs root/);
  expect(existsSync(path.join(bin, 'apt.log'))).toBe(false);
});
