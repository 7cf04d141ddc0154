/**
 * `npm run soak`: a bounded soak of mixed refresh-token exchanges against the example server on Redis.
 * Starts the example server as a child process (RedisAdapter + RedisPolicyStore under a
 * fresh key prefix), signs in a few sessions through the real login form, then drives, for a fixed
 * time and a capped number of requests, on loopback only:
 *   40 % refreshes for the granted messages API, 40 % MRRT exchanges for the billing API,
 *   20 % refused MRRT exchanges for the deny-listed admin API (400 invalid_target).
 * Reports requests served, outcomes, non-OAuth errors (target 0: exit code 1 otherwise) and the
 * server's memory (RSS) over the run. Options: --seconds N (default 60), --connections N (default 8),
 * --max-requests N (default 2000000). REDIS_URL (default redis://127.0.0.1:6379).
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { randomBytes } from 'node:crypto';

import autocannon from 'autocannon';
import { Redis } from 'ioredis';
import * as oidc from 'openid-client';

import { ADMIN_API, BILLING_API, MESSAGES_API, config } from '../example-server/config.js';
import { signInThroughTheForms } from '../demo/sign-in.js';

const args = process.argv.slice(2);
const option = (name: string, fallback: number): number => {
  const i = args.indexOf(`--${name}`);
  const value = i === -1 ? fallback : Number(args[i + 1]);
  if (!Number.isInteger(value) || value < 1) throw new TypeError(`--${name} must be a positive integer`);
  return value;
};
const seconds = option('seconds', 60);
const connections = option('connections', 8);
const maxRequests = option('max-requests', 2_000_000);
const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefix = `mrrt-soak:${randomBytes(4).toString('hex')}:`;
const SESSIONS = 8;

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });

const rssMiB = (pid: number): number => {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  return Number(/(\d+)/.exec(line ?? '')?.[1] ?? 0) / 1024;
};

/** Least-squares slope of y over x. */
const slope = (points: ReadonlyArray<[number, number]>): number => {
  const n = points.length;
  const mx = points.reduce((s, [x]) => s + x, 0) / n;
  const my = points.reduce((s, [, y]) => s + y, 0) / n;
  const num = points.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0);
  const den = points.reduce((s, [x]) => s + (x - mx) ** 2, 0);
  return den === 0 ? 0 : num / den;
};

async function main(): Promise<number> {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const child = spawn(process.execPath, ['dist-example/example-server/main.js'], {
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', REDIS_URL: redisUrl, REDIS_PREFIX: prefix, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const redis = new Redis(redisUrl);
  try {
    for (let i = 0; ; i += 1) {
      if (i === 100) throw new Error('the example server did not start');
      if (
        await fetch(`${base}/healthz`).then(
          (r) => r.ok,
          () => false,
        )
      )
        break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    const client = config.clients.find((candidate) => candidate.client_id === config.demoApp.clientId)!;
    const user = config.users[0]!;
    const redirectUri = new URL(client.redirect_paths[0] ?? '/callback', base).href;
    const configuration = await oidc.discovery(new URL(`${base}/oidc`), client.client_id, undefined, oidc.ClientSecretBasic(client.client_secret), {
      execute: [oidc.allowInsecureRequests],
    });
    const refreshTokens: string[] = [];
    for (let i = 0; i < SESSIONS; i += 1) {
      const verifier = oidc.randomPKCECodeVerifier();
      const state = oidc.randomState();
      const url = oidc.buildAuthorizationUrl(configuration, {
        redirect_uri: redirectUri,
        scope: config.demoApp.loginScope,
        resource: MESSAGES_API,
        prompt: 'consent',
        state,
        code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
        code_challenge_method: 'S256',
      });
      const callback = await signInThroughTheForms(url, redirectUri, user.username, user.password);
      const tokens = await oidc.authorizationCodeGrant(
        configuration,
        callback,
        { pkceCodeVerifier: verifier, expectedState: state },
        { resource: MESSAGES_API },
      );
      refreshTokens.push(tokens.refresh_token!);
    }

    const authorization = `Basic ${Buffer.from(`${encodeURIComponent(client.client_id)}:${encodeURIComponent(client.client_secret)}`).toString('base64')}`;
    const mix = [
      ...Array<string>(2).fill(`resource=${encodeURIComponent(MESSAGES_API)}`),
      ...Array<string>(2).fill(`audience=${encodeURIComponent(BILLING_API)}`),
      `audience=${encodeURIComponent(ADMIN_API)}`,
    ];
    const outcomes = new Map<string, number>();
    let nonOAuth = 0;
    let sent = 0;
    const count = (key: string): void => {
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    };

    // warm-up, then memory samples every 5 s during the run
    await fetch(`${base}/oidc/token`, {
      method: 'POST',
      headers: { authorization, 'content-type': 'application/x-www-form-urlencoded' },
      body: `grant_type=refresh_token&refresh_token=${refreshTokens[0]}&${mix[2]}`,
    });
    const samples: Array<[number, number]> = [];
    const started = Date.now();
    const sampler = setInterval(() => {
      samples.push([(Date.now() - started) / 1000, rssMiB(child.pid!)]);
    }, 5000);
    samples.push([0, rssMiB(child.pid!)]);

    const result = await autocannon({
      url: base,
      connections,
      duration: seconds,
      maxOverallRequests: maxRequests,
      requests: [
        {
          method: 'POST',
          path: '/oidc/token',
          headers: { authorization, 'content-type': 'application/x-www-form-urlencoded' },
          setupRequest: (request) => {
            const target = mix[sent % mix.length]!;
            const token = refreshTokens[Math.floor(sent / mix.length) % refreshTokens.length]!;
            sent += 1;
            return { ...request, body: `grant_type=refresh_token&refresh_token=${encodeURIComponent(token)}&${target}` };
          },
          onResponse: (status, body) => {
            let parsed: { access_token?: unknown; error?: unknown } | undefined;
            try {
              parsed = JSON.parse(body) as typeof parsed;
            } catch {
              parsed = undefined;
            }
            if (status === 200 && typeof parsed?.access_token === 'string') count('200 token');
            else if (status >= 400 && status < 500 && typeof parsed?.error === 'string') count(`${status} ${parsed.error}`);
            else {
              nonOAuth += 1;
              count(`${status} non-OAuth`);
            }
          },
        },
      ],
    });
    clearInterval(sampler);
    samples.push([(Date.now() - started) / 1000, rssMiB(child.pid!)]);
    const metrics = await fetch(`${base}/metrics`).then((r) => r.text());

    nonOAuth += result.errors + result.timeouts;
    const secondHalf = samples.filter(([t]) => t >= seconds / 2);
    const report = {
      seconds,
      connections,
      requests: result.requests.total,
      rps: Math.round(result.requests.average),
      p50_ms: result.latency.p50,
      p99_ms: result.latency.p99,
      outcomes: Object.fromEntries([...outcomes].sort()),
      connection_errors: result.errors,
      timeouts: result.timeouts,
      non_oauth_errors: nonOAuth,
      rss_mib: {
        start: Number(samples[0]![1].toFixed(1)),
        end: Number(samples.at(-1)![1].toFixed(1)),
        max: Number(Math.max(...samples.map(([, y]) => y)).toFixed(1)),
      },
      rss_slope_mib_per_min_second_half: Number((slope(secondHalf) * 60).toFixed(2)),
      mrrt_metrics: metrics.split('\n').filter((l) => l.startsWith('mrrt_exchanges_total')),
    };
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    process.stdout.write(nonOAuth === 0 ? 'soak: OK, 0 non-OAuth errors\n' : `soak: FAILED, ${nonOAuth} non-OAuth errors\n`);
    return nonOAuth === 0 ? 0 : 1;
  } finally {
    child.kill('SIGTERM');
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      keys.push(...batch);
    } while (cursor !== '0');
    for (let i = 0; i < keys.length; i += 500) await redis.del(...keys.slice(i, i + 500));
    await redis.quit();
  }
}

process.exitCode = await main();
