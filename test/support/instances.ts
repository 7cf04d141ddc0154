// Provider instances as separate OS processes (test/support/instance.mjs running the compiled dist/),
// for test/multi-instance.test.ts and test/outage.test.ts.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as jose from 'jose';
import request from 'supertest';

import { API, type TestServer } from './fixture.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const ENTRY = path.join(ROOT, 'test', 'support', 'instance.mjs');

/** What test/support/instance.mjs reads from MRRT_INSTANCE. */
export interface InstanceConfig {
  issuer: string;
  jwks: { keys: jose.JWK[] };
  cookieKeys: string[];
  redisUrl: string;
  adapterPrefix: string;
  storePrefix: string;
  rotate: boolean;
  denyList: string[];
  /** ioredis with test/support/redis-server.ts QUICK_FAILURE settings instead of `{ maxRetriesPerRequest: 1 }`. */
  quickFailure?: boolean;
  storeTimeout?: number;
}

/** A fresh RS256 signing key, shared cookie keys, rotation on (the clients and APIs are provider-fixture.mjs's). */
export async function instanceConfig(
  settings: Pick<InstanceConfig, 'issuer' | 'redisUrl' | 'adapterPrefix' | 'storePrefix'> & Partial<InstanceConfig>,
): Promise<{ config: InstanceConfig; publicKey: jose.CryptoKey }> {
  const { privateKey, publicKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await jose.exportJWK(privateKey)), kid: 'instance-rs256', alg: 'RS256', use: 'sig' };
  return {
    publicKey,
    config: {
      jwks: { keys: [jwk] },
      cookieKeys: ['a-shared-cookie-signing-key'],
      rotate: true,
      denyList: [API.ADMIN],
      ...settings,
    },
  };
}

/** What an instance recorded (GET /__test/events). */
export interface InstanceReport {
  name: string;
  pid: number;
  events: { event: string; outcome?: string; reason?: string; error?: string; audience?: string }[];
  storeErrors: number;
  redisErrors: number;
  unhandledRejections: string[];
}

export interface Instance {
  readonly name: string;
  readonly url: string;
  readonly pid: number;
  readonly child: ChildProcessWithoutNullStreams;
  /** The tail of the instance's stderr. */
  readonly stderr: string;
  /** Whether the process is still running. */
  readonly alive: boolean;
  /** What `login` and `refresh` of the fixture need of a server: its base URL. */
  readonly server: TestServer;
  report(): Promise<InstanceReport>;
  stop(): Promise<void>;
}

const children = new Set<ChildProcessWithoutNullStreams>();
process.once('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** Fails unless dist/ exists and is at least as new as every lib/ source (npm test builds it in pretest). */
export function assertFreshBuild(): void {
  const dist = path.join(ROOT, 'dist', 'index.js');
  if (!existsSync(dist)) throw new Error('dist/index.js is missing: run `npm run build` (npm test does it in pretest)');
  const built = statSync(dist).mtimeMs;
  const stale = readdirSync(path.join(ROOT, 'lib'), { recursive: true, encoding: 'utf8' })
    .filter((file) => file.endsWith('.ts'))
    .filter((file) => statSync(path.join(ROOT, 'lib', file)).mtimeMs > built);
  if (stale.length) throw new Error(`dist/ is older than lib/ (${stale.join(', ')}): run \`npm run build\` (npm test does it in pretest)`);
}

/**
 * Starts test/support/instance.mjs as a child process with `config` and resolves once it listens
 * (it prints its port). Rejects, killing the child, if it exits first or takes more than 20s.
 */
export function startInstance(name: string, config: InstanceConfig): Promise<Instance> {
  assertFreshBuild();
  const child = spawn(process.execPath, [ENTRY], {
    cwd: ROOT,
    env: { ...process.env, MRRT_INSTANCE: JSON.stringify({ ...config, name }) },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-10_000);
  });
  const alive = (): boolean => child.exitCode === null && child.signalCode === null;

  const stop = async (): Promise<void> => {
    if (!alive()) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  };

  return new Promise((resolve, reject) => {
    let stdout = '';
    let reported = false;
    const timer = setTimeout(() => fail(new Error(`instance ${name} did not report its port within 20s`)), 20_000);
    const onExit = (code: number | null, signal: string | null): void => fail(new Error(`instance ${name} exited (${code ?? signal}) before listening`));
    function fail(err: Error): void {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${err.message}\nstderr:\n${stderr}`));
    }
    child.once('error', fail);
    child.once('exit', onExit);
    child.stdout.on('data', (chunk: Buffer) => {
      if (reported) return; // oidc-provider prints notices on stdout later
      stdout = (stdout + chunk.toString('utf8')).slice(-10_000);
      const line = stdout
        .split('\n')
        .slice(0, -1)
        .find((candidate) => candidate.startsWith('{'));
      if (!line) return;
      reported = true;
      clearTimeout(timer);
      child.off('exit', onExit);
      child.off('error', fail);
      const { port, pid } = JSON.parse(line) as { port: number; pid: number };
      const url = `http://127.0.0.1:${port}`;
      resolve({
        name,
        url,
        pid,
        child,
        get stderr() {
          return stderr;
        },
        get alive() {
          return alive();
        },
        server: { url } as TestServer,
        async report() {
          const res = await request(url).get('/__test/events');
          if (res.status !== 200) throw new Error(`instance ${name}: GET /__test/events answered ${res.status}`);
          return res.body as InstanceReport;
        },
        stop,
      });
    });
  });
}
