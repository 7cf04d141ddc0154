/**
 * `npm start`: the example server. Configuration comes from the environment:
 *
 * | variable | default | |
 * | --- | --- | --- |
 * | PORT | 3000 | |
 * | HOST | 127.0.0.1 | interface to listen on |
 * | PUBLIC_URL | http://HOST:PORT | the URL people open, when it differs (a proxy, a container) |
 * | REDIS_URL | none | with it: RedisAdapter + RedisPolicyStore; without: in-memory stores |
 * | REDIS_PREFIX | mrrt-example: | prefix of every Redis key |
 * | JWKS | generated | the provider's private signing keys, `{"keys":[...]}` with an RSA key |
 * | COOKIE_KEYS | random | comma-separated cookie signing keys, newest first |
 * | LOG_LEVEL | info | debug, info, warn, error or silent |
 */
import { isLogLevel } from './log.js';
import { startExampleServer } from './server.js';

function fail(message: string): never {
  process.stderr.write(`example-server: ${message}\n`);
  process.exit(1);
}

const env = process.env;
const port = env.PORT === undefined || env.PORT === '' ? 3000 : Number(env.PORT);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`PORT must be a port number, got "${env.PORT}"`);
const logLevel = env.LOG_LEVEL || 'info';
if (!isLogLevel(logLevel)) fail(`LOG_LEVEL must be debug, info, warn, error or silent, got "${logLevel}"`);

let jwks: { keys: never[] } | undefined;
if (env.JWKS) {
  try {
    jwks = JSON.parse(env.JWKS) as { keys: never[] };
  } catch {
    fail('JWKS must be a JSON Web Key Set: {"keys":[...]}');
  }
}
const cookieKeys = env.COOKIE_KEYS
  ? env.COOKIE_KEYS.split(',')
      .map((key) => key.trim())
      .filter(Boolean)
  : undefined;

try {
  const running = await startExampleServer({
    port,
    host: env.HOST || '127.0.0.1',
    ...(env.PUBLIC_URL ? { publicUrl: env.PUBLIC_URL } : {}),
    ...(env.REDIS_URL ? { redisUrl: env.REDIS_URL } : {}),
    ...(env.REDIS_PREFIX ? { redisPrefix: env.REDIS_PREFIX } : {}),
    ...(jwks ? { jwks } : {}),
    ...(cookieKeys?.length ? { cookieKeys } : {}),
    logLevel,
  });
  running.logger.info({
    event: 'server.started',
    url: running.url,
    issuer: running.issuer,
    stores: running.mode,
    signing_keys: jwks ? 'JWKS' : 'generated',
    cookie_keys: cookieKeys?.length ? 'COOKIE_KEYS' : 'random',
  });
  process.stderr.write(`\nMRRT example server: open ${running.url}/  (issuer ${running.issuer}, ${running.mode} stores)\n\n`);

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    running.logger.info({ event: 'server.stopping', signal });
    running.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
} catch (err) {
  fail((err as Error).message);
}
