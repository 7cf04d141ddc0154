// `npm run demo` (demo/demo.ts) end to end: compiled as `npm run demo` compiles it, run as a child
// process against an example server on an ephemeral 127.0.0.1 port, exactly as a user runs it
// against `npm start`. The server's own log shows the demo really did the exchanges it prints.
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';

import { ADMIN_API, BILLING_API, MESSAGES_API } from '../example-server/config.js';
import { startExampleServer, type RunningExample } from '../example-server/server.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DEMO = path.join(ROOT, 'dist-example', 'demo', 'demo.js');

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(command: string, args: readonly string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const runDemo = (url: string): Promise<Run> => run(process.execPath, [DEMO], { DEMO_URL: url }, 30_000);

/** A 127.0.0.1 port nothing listens on (bound, then released). */
const closedPort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });

describe('npm run demo (openid-client against a running example server)', () => {
  const logs: Record<string, unknown>[] = [];
  let server: RunningExample | undefined;

  beforeAll(async () => {
    // what `npm run demo` does first: npm run build:example
    const build = await run(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.example.json']);
    if (build.code !== 0) throw new Error(`tsc -p tsconfig.example.json failed:\n${build.stdout}${build.stderr}`);
    server = await startExampleServer({ port: 0, host: '127.0.0.1', logSink: (entry) => logs.push({ ...entry }) });
  }, 120_000);

  afterAll(async () => {
    await server?.close();
  });

  test('signs in through the login form, calls the messages API, exchanges the refresh token for billing, is refused for admin; exit 0', async () => {
    const result = await runDemo(server!.url);
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
    const output = result.stdout;

    // discovery and the browser-like sign-in through the real forms
    expect(output).toContain(`issuer                  ${server!.url}/oidc`);
    expect(output).toMatch(/GET {2}\/interaction\/\S+ +200 {3}the login page/);
    expect(output).toMatch(/POST \/interaction\/\S+\/login +303 → \/oidc\/auth\//);
    expect(output).toMatch(/POST \/interaction\/\S+\/confirm +303 → \/oidc\/auth\//);
    expect(output).toContain('ID token        sub alice, name Alice Liddell, aud "demo-app"');

    // each access token decoded: the sign-in one for messages, the MRRT one for billing
    const tokenBlock = (label: string): string => {
      const start = output.indexOf(`access token for the ${label} API (JWT`);
      expect(start).toBeGreaterThan(-1);
      return output.slice(start, output.indexOf('\n\n', start));
    };
    const messagesToken = tokenBlock('messages');
    expect(messagesToken).toMatch(/header +alg RS256, typ at\+jwt/);
    expect(messagesToken).toMatch(new RegExp(`aud +"${MESSAGES_API}"`));
    expect(messagesToken).toMatch(/scope +messages:read messages:write/);
    expect(messagesToken).toMatch(/client_id +demo-app/);
    const billingToken = tokenBlock('billing');
    expect(billingToken).toMatch(/header +alg RS256, typ at\+jwt/);
    expect(billingToken).toMatch(new RegExp(`aud +"${BILLING_API}"`));
    expect(billingToken).toMatch(/scope +billing:read\n/);
    expect(billingToken).toMatch(/client_id +demo-app/);
    expect(billingToken).toMatch(/exp +\d{4}-\d\d-\d\dT[\d:.]+Z \(in \d+ s\)/);

    // the APIs' answers
    expect(output).toMatch(/GET \S+\/api\/messages with the messages token\n +→ 200\n/);
    expect(output).toContain('Tea at four?');
    expect(output).toMatch(/GET \S+\/api\/billing with the billing token\n +→ 200\n/);
    expect(output).toContain('INV-1002');

    // the refused requests, with their errors
    expect(output).toContain(`{ audience: '${ADMIN_API}' })\n     → 400 invalid_target: `);
    expect(output).toMatch(/messages token sent to the billing API[^\n]*\n +→ 401 {2}WWW-Authenticate: Bearer [^\n]*error="invalid_token"/);
    expect(output).toMatch(/demo: OK\n$/);
    // tokens are shown decoded or as fingerprints, never in full
    expect(output).not.toMatch(/eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/);

    // the server saw what the demo printed: one MRRT exchange issued for billing, one refused for admin
    const exchanges = logs.filter((entry) => entry.event === 'mrrt.exchange');
    expect(exchanges).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ outcome: 'issued', clientId: 'demo-app', subject: 'alice', requestedAudience: BILLING_API, grantedScope: 'billing:read' }),
        expect.objectContaining({ outcome: 'refused', clientId: 'demo-app', requestedAudience: ADMIN_API, error: 'invalid_target' }),
      ]),
    );
    expect(logs).toEqual(expect.arrayContaining([expect.objectContaining({ event: 'login.succeeded', subject: 'alice', client_id: 'demo-app' })]));
  }, 60_000);

  test('with nothing answering at DEMO_URL it says to run npm start first and exits 1', async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const result = await runDemo(url);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain(`nothing answers at ${url}`);
    expect(result.stderr).toContain('npm start');
  }, 30_000);
});
