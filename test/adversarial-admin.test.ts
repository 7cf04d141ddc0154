// Adversarial input matrix at the policy admin API, and a tampered policy store.
//
// The admin router is built as in test/admin-router.test.ts (jwtAuthorizer with ES256 RFC 9068
// tokens, a 4kb body limit) over a real provider whose policies live in a real Redis
// (RedisPolicyStore). Every row states its status and `error` (and the JSON paths of `issues` for
// invalid writes); after every row the Redis keys of the store are byte-for-byte what they were, no
// audit event was emitted and Object.prototype is untouched.
//
// The tampered-store suite writes malformed or malicious data straight into Redis and checks that
// the exchange fails closed (500 server_error, reason store_corrupt) while the granted API keeps
// working, and that the admin API reports an error instead of crashing.
import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';

import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from '@jest/globals';
import express from 'express';
import { Redis } from 'ioredis';
import * as jose from 'jose';
import request from 'supertest';

import { MemoryPolicyStore, RedisPolicyStore, mrrtConfiguration } from '../lib/index.js';
import { createPolicyRouter, jwtAuthorizer, type PolicyAuditEvent } from '../lib/express.js';
import { API, SKIP_CONSENT, claims, login, refresh, snapshot, startServer, type TestServer } from './support/fixture.js';
import { deleteKeys } from './support/redis-keys.js';

const ISSUER = 'https://issuer.example.com';
const ADMIN_SCOPE = 'mrrt:admin';

const redis = new Redis(process.env.MRRT_TEST_REDIS_URL!);
const prefix = `mrrt-test:{adversarial-admin-${randomBytes(6).toString('hex')}}:`;
const store = new RedisPolicyStore(redis, { prefix });

let server: TestServer;
let admin: http.Server;
let url: string;
let key: { privateKey: jose.CryptoKey; publicKey: jose.CryptoKey };
const audits: PolicyAuditEvent[] = [];
const storeErrors: unknown[] = [];
const PROTOTYPE_NAMES = Object.getOwnPropertyNames(Object.prototype).sort();

async function token(extra: jose.JWTPayload = {}): Promise<string> {
  return new jose.SignJWT({ scope: ADMIN_SCOPE, client_id: 'admin-cli', iss: ISSUER, aud: API.ADMIN, ...extra })
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt' })
    .setIssuedAt()
    .setJti(randomUUID())
    .setExpirationTime('5m')
    .sign(key.privateKey);
}

beforeAll(async () => {
  key = await jose.generateKeyPair('ES256');
  server = await startServer({
    mrrt: { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN], limits: { maxEntries: 3, maxScopesPerEntry: 5 } },
  });
  server.provider.on('mrrt.store_error', (_ctx, err) => {
    storeErrors.push(err);
  });
  const app = express();
  app.use(
    '/admin',
    createPolicyRouter({
      provider: server.provider,
      audience: API.ADMIN,
      authorize: jwtAuthorizer({ key: key.publicKey, issuer: ISSUER, audience: API.ADMIN, scope: ADMIN_SCOPE }),
      bodyLimit: '4kb',
      onAudit: (event) => audits.push(event),
    }),
  );
  admin = http.createServer(app);
  await new Promise<void>((resolve) => admin.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(admin.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await server.close();
  admin.closeAllConnections();
  await new Promise((resolve) => admin.close(resolve));
  await store.close();
  await deleteKeys(redis, prefix);
  await redis.quit();
});

/** Every key of the store's prefix with its Redis type and content, to compare before and after. */
async function dump(): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const name of (await redis.keys(`${prefix}*`)).sort()) {
    const type = await redis.type(name);
    if (type === 'hash') out[name] = { type, value: await redis.hgetall(name) };
    else if (type === 'zset') out[name] = { type, value: await redis.zrange(name, 0, -1, 'WITHSCORES') };
    else if (type === 'string') out[name] = { type, value: await redis.get(name) };
    else if (type === 'list') out[name] = { type, value: await redis.lrange(name, 0, -1) };
    else out[name] = { type };
  }
  return out;
}

function expectNoPrototypePollution(): void {
  expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(PROTOTYPE_NAMES);
  const probe = {} as Record<string, unknown>;
  for (const name of ['admin', 'polluted', 'policies', 'scope', 'audience', 'isAdmin']) expect(probe[name]).toBeUndefined();
}

const B = API.B;
const VALID_ENTRY = { audience: B, scope: ['b:read'] };
const VALID = { policies: [VALID_ENTRY] };
const entry = (overrides: Record<string, unknown>): Record<string, unknown> => ({ ...VALID_ENTRY, ...overrides });
const policies = (...entries: unknown[]): { policies: unknown[] } => ({ policies: entries });
const P = '/admin/clients/app/policy';

type Method = 'get' | 'put' | 'delete' | 'head' | 'patch' | 'post' | 'options';

interface AdminRow {
  readonly name: string;
  readonly method: Method;
  readonly path: string;
  /** A JSON value to send (serialized with JSON.stringify), or a raw body. */
  readonly json?: unknown;
  readonly raw?: string | Buffer;
  /** Default `application/json` when a body is sent. */
  readonly contentType?: string | null;
  readonly headers?: Record<string, string>;
  /** `admin` (default): a valid admin token; `none`: no Authorization; `no-scope`: a token without the admin scope. */
  readonly auth?: 'admin' | 'none' | 'no-scope';
  readonly status: number;
  /** The OAuth-style `error`; `undefined` where the response has no body (HEAD) or is a success. */
  readonly error: string | undefined;
  /** For invalid writes: the JSON paths of `issues`, in order. */
  readonly issues?: readonly string[];
}

const put = (name: string, body: unknown, status: number, error: string | undefined, issues?: string[], more: Partial<AdminRow> = {}): AdminRow => ({
  name,
  method: 'put',
  path: P,
  json: body,
  status,
  error,
  ...(issues ? { issues } : {}),
  ...more,
});
const invalid = (name: string, body: unknown, issues: string[], path = P): AdminRow => put(name, body, 400, 'invalid_request', issues, { path });
const rawPut = (name: string, raw: string, status: number, error: string, issues?: string[], contentType = 'application/json'): AdminRow => ({
  name,
  method: 'put',
  path: P,
  raw,
  contentType,
  status,
  error,
  ...(issues ? { issues } : {}),
});

const LONG_ID = 'c'.repeat(1025);

const ROWS: AdminRow[] = [
  // --- malformed JSON
  rawPut('truncated JSON', '{"policies": [', 400, 'invalid_request'),
  rawPut('single-quoted JSON', "{'policies': []}", 400, 'invalid_request'),
  rawPut('a trailing comma', '{"policies": [],}', 400, 'invalid_request'),
  rawPut('a bare string (strict JSON)', '"policies"', 400, 'invalid_request'),
  rawPut('a bare null (strict JSON)', 'null', 400, 'invalid_request'),
  rawPut('NaN', 'NaN', 400, 'invalid_request'),
  rawPut('an empty body', '', 400, 'invalid_request', ['$.policies']),
  rawPut('a duplicate key, the last one invalid', `{"policies": ${JSON.stringify(VALID.policies)}, "policies": "x"}`, 400, 'invalid_request', ['$.policies']),
  rawPut('1500 levels of nesting', `{"policies":${'['.repeat(1500)}${']'.repeat(1500)}}`, 400, 'invalid_request', ['$.policies[0]']),

  // --- prototype pollution at every level
  rawPut('__proto__ at the root, carrying the policies', `{"__proto__": ${JSON.stringify(VALID)}}`, 400, 'invalid_request', ['$["__proto__"]', '$.policies']),
  rawPut(
    '__proto__ at the root next to valid policies',
    `{"policies": ${JSON.stringify(VALID.policies)}, "__proto__": {"admin": true}}`,
    400,
    'invalid_request',
    ['$["__proto__"]'],
  ),
  rawPut(
    'constructor.prototype at the root',
    `{"policies": ${JSON.stringify(VALID.policies)}, "constructor": {"prototype": {"polluted": true}}}`,
    400,
    'invalid_request',
    ['$["constructor"]'],
  ),
  rawPut('prototype at the root', `{"policies": ${JSON.stringify(VALID.policies)}, "prototype": {"polluted": true}}`, 400, 'invalid_request', [
    '$["prototype"]',
  ]),
  rawPut('policies as an object with __proto__', `{"policies": {"__proto__": ${JSON.stringify(VALID.policies)}}}`, 400, 'invalid_request', ['$.policies']),
  rawPut('__proto__ in an entry', `{"policies": [{"audience": "${B}", "scope": ["b:read"], "__proto__": {"scope": ["b:write"]}}]}`, 400, 'invalid_request', [
    '$.policies[0]["__proto__"]',
  ]),
  rawPut('an entry made only of __proto__', `{"policies": [{"__proto__": ${JSON.stringify(VALID_ENTRY)}}]}`, 400, 'invalid_request', [
    '$.policies[0]["__proto__"]',
    '$.policies[0].audience',
    '$.policies[0].scope',
  ]),
  rawPut(
    'constructor in an entry',
    `{"policies": [{"audience": "${B}", "scope": ["b:read"], "constructor": {"prototype": {"polluted": 1}}}]}`,
    400,
    'invalid_request',
    ['$.policies[0].constructor'],
  ),
  rawPut('__proto__ inside the scope list', `{"policies": [{"audience": "${B}", "scope": [{"__proto__": "b:read"}]}]}`, 400, 'invalid_request', [
    '$.policies[0].scope[0]',
  ]),
  invalid('"__proto__" as a scope value', policies(entry({ scope: ['__proto__'] })), ['$.policies[0].scope[0]']),
  invalid('prototype names as scope values', policies(entry({ scope: ['constructor', 'toString'] })), ['$.policies[0].scope[0]', '$.policies[0].scope[1]']),
  invalid('"__proto__" as the audience', policies(entry({ audience: '__proto__' })), ['$.policies[0].audience']),

  // --- unknown keys
  invalid('a "version" key at the root', { ...VALID, version: 'forged' }, ['$["version"]']),
  invalid('a "client_id" key at the root (another client)', { ...VALID, client_id: 'other' }, ['$["client_id"]']),
  invalid('a misspelled key in an entry', policies({ audiences: B, scope: ['b:read'] }), ['$.policies[0].audiences', '$.policies[0].audience']),

  // --- wrong types
  invalid('policies as a string', { policies: B }, ['$.policies']),
  invalid('policies as null', { policies: null }, ['$.policies']),
  invalid('policies as an array-like object', { policies: { 0: VALID_ENTRY, length: 1 } }, ['$.policies']),
  invalid('an entry that is null', policies(null), ['$.policies[0]']),
  invalid('an entry that is a string, after a valid one', policies(VALID_ENTRY, 'x'), ['$.policies[1]']),
  invalid('the audience as a number', policies(entry({ audience: 42 })), ['$.policies[0].audience']),
  invalid('the audience as an array', policies(entry({ audience: [B] })), ['$.policies[0].audience']),
  invalid('the scope as a string', policies(entry({ scope: 'b:read' })), ['$.policies[0].scope']),
  invalid('scopes of other types', policies(entry({ scope: [1, null, true] })), ['$.policies[0].scope[0]', '$.policies[0].scope[1]', '$.policies[0].scope[2]']),
  invalid('a nested scope list', policies(entry({ scope: [['b:read']] })), ['$.policies[0].scope[0]']),

  // --- too many, too large, malformed values
  invalid('50 entries (limit 3)', policies(...Array.from({ length: 50 }, (_, i) => ({ audience: `https://x${i}.example.com`, scope: ['s'] }))), ['$.policies']),
  invalid('6 scopes in one entry (limit 5)', policies(entry({ scope: ['b:read', 'b:write', 's1', 's2', 's3', 's4'] })), ['$.policies[0].scope']),
  invalid('a 601-character audience', policies(entry({ audience: `${B}/${'a'.repeat(601 - B.length - 1)}` })), ['$.policies[0].audience']),
  invalid('a 281-character scope', policies(entry({ scope: ['s'.repeat(281)] })), ['$.policies[0].scope[0]']),
  put('a body over the 4kb limit', policies(entry({ scope: Array.from({ length: 800 }, (_, i) => `s${i}`) })), 413, 'invalid_request'),
  {
    name: 'a gzip body that inflates over the limit',
    method: 'put',
    path: P,
    status: 413,
    error: 'invalid_request',
    raw: gzipSync(JSON.stringify(policies(entry({ scope: Array.from({ length: 20_000 }, (_, i) => `s${i}`) })))),
    headers: { 'Content-Encoding': 'gzip' },
  },
  invalid('a duplicate audience', policies(VALID_ENTRY, VALID_ENTRY), ['$.policies[1].audience']),
  invalid('a duplicate scope', policies(entry({ scope: ['b:read', 'b:read'] })), ['$.policies[0].scope[1]']),
  invalid('an empty scope list', policies(entry({ scope: [] })), ['$.policies[0].scope']),
  invalid('an empty scope', policies(entry({ scope: [''] })), ['$.policies[0].scope[0]']),
  invalid('a scope with a space', policies(entry({ scope: ['b:read b:write'] })), ['$.policies[0].scope[0]']),
  invalid('a scope with a control character', policies(entry({ scope: ['b:read\u0000'] })), ['$.policies[0].scope[0]']),
  invalid('an audience with a fragment', policies(entry({ audience: `${B}#x` })), ['$.policies[0].audience']),
  invalid('a relative audience', policies(entry({ audience: 'api-b.example.com' })), ['$.policies[0].audience']),
  invalid('a homoglyph audience (Cyrillic "а")', policies(entry({ audience: 'https://\u0430pi-b.example.com' })), ['$.policies[0].audience']),
  invalid('an audience with a trailing slash (not a known API)', policies(entry({ audience: `${B}/` })), ['$.policies[0].audience']),
  invalid('an uppercase-host audience (not a known API)', policies(entry({ audience: 'https://API-B.example.com' })), ['$.policies[0].audience']),
  invalid('OpenID scopes', policies(entry({ scope: ['openid', 'offline_access'] })), ['$.policies[0].scope[0]', '$.policies[0].scope[1]']),

  // --- what the provider allows
  invalid("the admin API's own audience", policies({ audience: API.ADMIN, scope: ['admin:write'] }), ['$.policies[0].audience']),
  invalid('the admin API after a valid entry', policies(VALID_ENTRY, { audience: API.ADMIN, scope: ['admin:write'] }), ['$.policies[1].audience']),
  invalid('the admin API with a trailing slash', policies({ audience: `${API.ADMIN}/`, scope: ['admin:write'] }), ['$.policies[0].audience']),
  invalid('a third-party client', VALID, ['client_id'], '/admin/clients/partner/policy'),
  invalid('an unknown client', VALID, ['client_id'], '/admin/clients/nobody/policy'),
  invalid('a unicode client id (Cyrillic "а" in app)', VALID, ['client_id'], `/admin/clients/${encodeURIComponent('\u0430pp')}/policy`),
  invalid('an emoji client id', VALID, ['client_id'], `/admin/clients/${encodeURIComponent('\u{1F600}')}/policy`),
  invalid('a client id with a NUL', VALID, ['client_id'], '/admin/clients/app%00/policy'),
  invalid('a 1024-character client id (unknown client)', VALID, ['client_id'], `/admin/clients/${'c'.repeat(1024)}/policy`),
  { name: 'GET of a unicode client id', method: 'get', path: `/admin/clients/${encodeURIComponent('\u0430pp')}/policy`, status: 404, error: 'not_found' },
  { name: 'GET of an encoded slash in the client id', method: 'get', path: '/admin/clients/app%2Fpolicy/policy', status: 404, error: 'not_found' },
  { name: 'GET of a 1025-character client id', method: 'get', path: `/admin/clients/${LONG_ID}/policy`, status: 400, error: 'invalid_request' },
  put('PUT of a 1025-character client id', VALID, 400, 'invalid_request', undefined, { path: `/admin/clients/${LONG_ID}/policy` }),
  { name: 'DELETE of a 1025-character client id', method: 'delete', path: `/admin/clients/${LONG_ID}/policy`, status: 400, error: 'invalid_request' },

  { name: 'a client id with an invalid UTF-8 escape', method: 'get', path: '/admin/clients/%ED%A0%80/policy', status: 400, error: 'invalid_request' },
  { name: 'a client id with a truncated escape', method: 'get', path: '/admin/clients/%E0%A4%A/policy', status: 400, error: 'invalid_request' },
  {
    name: 'a client id with a non-hex escape, no token',
    method: 'get',
    path: '/admin/clients/%ZZ/policy',
    auth: 'none',
    status: 400,
    error: 'invalid_request',
  },
  put('PUT of a client id with a bad escape', VALID, 400, 'invalid_request', undefined, { path: '/admin/clients/%C0%AF/policy' }),
  { name: 'DELETE of a client id with a bad escape', method: 'delete', path: '/admin/clients/%FF/policy', status: 400, error: 'invalid_request' },

  // --- preconditions
  put('If-Match garbage', VALID, 400, 'invalid_request', undefined, { headers: { 'If-Match': 'garbage' } }),
  put('a weak If-Match', VALID, 400, 'invalid_request', undefined, { headers: { 'If-Match': 'W/"v"' } }),
  put('an If-Match list', VALID, 400, 'invalid_request', undefined, { headers: { 'If-Match': '"a", "b"' } }),
  put('an empty If-Match ETag', VALID, 400, 'invalid_request', undefined, { headers: { 'If-Match': '""' } }),
  put('a 129-character If-Match ETag', VALID, 400, 'invalid_request', undefined, { headers: { 'If-Match': `"${'v'.repeat(129)}"` } }),
  put('If-Match with a quote inside', VALID, 400, 'invalid_request', undefined, { headers: { 'If-Match': '"a"b"' } }),
  put('a stale If-Match', VALID, 412, 'precondition_failed', undefined, { headers: { 'If-Match': '"stale"' } }),
  put('If-None-Match with an ETag', VALID, 400, 'invalid_request', undefined, { headers: { 'If-None-Match': '"x"' } }),
  put('If-None-Match: * over an existing policy', VALID, 412, 'precondition_failed', undefined, { headers: { 'If-None-Match': '*' } }),
  { name: 'DELETE with If-Match garbage', method: 'delete', path: P, headers: { 'If-Match': 'garbage' }, status: 400, error: 'invalid_request' },
  { name: 'DELETE with If-None-Match', method: 'delete', path: P, headers: { 'If-None-Match': '*' }, status: 400, error: 'invalid_request' },
  { name: 'DELETE with a stale If-Match', method: 'delete', path: P, headers: { 'If-Match': '"stale"' }, status: 412, error: 'precondition_failed' },

  // --- content types and encodings
  put('a text/plain body', VALID, 415, 'invalid_request', undefined, { contentType: 'text/plain' }),
  put('a form body', VALID, 415, 'invalid_request', undefined, { raw: 'policies=x', contentType: 'application/x-www-form-urlencoded' }),
  put('no content type', VALID, 415, 'invalid_request', undefined, { raw: Buffer.from(JSON.stringify(VALID)), contentType: null }),
  put('a latin1 charset', VALID, 415, 'invalid_request', undefined, { contentType: 'application/json; charset=latin1' }),
  put('an unsupported content encoding', VALID, 415, 'invalid_request', undefined, { headers: { 'Content-Encoding': 'compress' } }),
  put('a body that is not gzip under Content-Encoding: gzip', VALID, 400, 'invalid_request', undefined, { headers: { 'Content-Encoding': 'gzip' } }),
  put('a body that is not deflate under Content-Encoding: deflate', VALID, 400, 'invalid_request', undefined, { headers: { 'Content-Encoding': 'deflate' } }),
  put('a body that is not brotli under Content-Encoding: br', VALID, 400, 'invalid_request', undefined, { headers: { 'Content-Encoding': 'br' } }),
  {
    name: 'a truncated gzip body',
    method: 'put',
    path: P,
    status: 400,
    error: 'invalid_request',
    raw: gzipSync(JSON.stringify(VALID)).subarray(0, 12),
    headers: { 'Content-Encoding': 'gzip' },
  },

  // --- methods and routes
  { name: 'HEAD of a policy', method: 'head', path: P, status: 200, error: undefined },
  { name: 'HEAD without a token', method: 'head', path: P, auth: 'none', status: 401, error: undefined },
  { name: 'PATCH of a policy', method: 'patch', path: P, json: VALID, status: 405, error: 'invalid_request' },
  { name: 'POST of a policy', method: 'post', path: P, json: VALID, status: 405, error: 'invalid_request' },
  { name: 'OPTIONS of a policy', method: 'options', path: P, status: 405, error: 'invalid_request' },
  { name: 'POST to the client list', method: 'post', path: '/admin/clients', json: VALID, status: 405, error: 'invalid_request' },
  { name: 'PUT to the client list', method: 'put', path: '/admin/clients', json: VALID, status: 405, error: 'invalid_request' },
  { name: 'DELETE of the client list', method: 'delete', path: '/admin/clients', status: 405, error: 'invalid_request' },
  // paths the router does not own fall through to the app (here: express' own 404)
  { name: 'PUT below the policy', method: 'put', path: `${P}/extra`, json: VALID, status: 404, error: undefined },
  { name: 'DELETE of the client', method: 'delete', path: '/admin/clients/app', status: 404, error: undefined },

  // --- list parameters
  { name: 'limit=0', method: 'get', path: '/admin/clients?limit=0', status: 400, error: 'invalid_request' },
  { name: 'limit=1001', method: 'get', path: '/admin/clients?limit=1001', status: 400, error: 'invalid_request' },
  { name: 'limit=1e3', method: 'get', path: '/admin/clients?limit=1e3', status: 400, error: 'invalid_request' },
  { name: 'limit=-1', method: 'get', path: '/admin/clients?limit=-1', status: 400, error: 'invalid_request' },
  { name: 'limit given twice', method: 'get', path: '/admin/clients?limit=1&limit=2', status: 400, error: 'invalid_request' },
  { name: 'an empty after', method: 'get', path: '/admin/clients?after=', status: 400, error: 'invalid_request' },
  { name: 'after given twice', method: 'get', path: '/admin/clients?after=a&after=b', status: 400, error: 'invalid_request' },

  // --- authorization on writes
  put('PUT without a token', VALID, 401, 'invalid_token', undefined, { auth: 'none' }),
  put('PUT with a token lacking the admin scope', VALID, 403, 'insufficient_scope', undefined, { auth: 'no-scope' }),
  put('PUT with a malformed bearer header', VALID, 401, 'invalid_token', undefined, { auth: 'none', headers: { Authorization: 'Bearer a b' } }),
  put('PUT with an 8 KiB garbage bearer token', VALID, 401, 'invalid_token', undefined, {
    auth: 'none',
    headers: { Authorization: `Bearer ${'x'.repeat(8192)}` },
  }),
  { name: 'DELETE without a token', method: 'delete', path: P, auth: 'none', status: 401, error: 'invalid_token' },
];

describe('admin API adversarial matrix', () => {
  beforeEach(async () => {
    await store.set('app', VALID.policies);
    for (const id of ['other', 'partner', 'nobody']) await store.delete(id);
  });

  async function send(row: AdminRow): Promise<request.Response> {
    let req = request(url)[row.method](row.path);
    const auth = row.auth ?? 'admin';
    if (auth === 'admin') req = req.set('Authorization', `Bearer ${await token()}`);
    if (auth === 'no-scope') req = req.set('Authorization', `Bearer ${await token({ scope: 'b:read' })}`);
    if (row.headers) req = req.set(row.headers);
    const body = row.raw ?? (row.json === undefined ? undefined : JSON.stringify(row.json));
    if (body === undefined) return req;
    if (row.contentType !== null) req = req.set('Content-Type', row.contentType ?? 'application/json');
    // superagent would JSON-serialize a Buffer sent as application/json: send its bytes as they are
    if (Buffer.isBuffer(body)) req = req.serialize((bytes: unknown) => bytes as string);
    return req.send(body);
  }

  test('the matrix has at least 30 rows, each with an explicit status and error', () => {
    expect(ROWS.length).toBeGreaterThanOrEqual(30);
    expect(new Set(ROWS.map((row) => row.name)).size).toBe(ROWS.length);
  });

  test.each(ROWS.map((row) => [row.name, row] as const))('%s', async (_name, row) => {
    const before = await dump();
    const auditsBefore = audits.length;

    const res = await send(row);
    expect(res.status).toBeLessThan(500);
    expect({ status: res.status, error: res.body?.error }).toEqual({ status: row.status, error: row.error });
    if (row.error !== undefined) {
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.body.error_description).toEqual(expect.any(String));
      expect(res.body.error_description).not.toMatch(/\n\s+at /);
      if (row.issues) expect((res.body.issues as Array<{ path: string }>).map((issue) => issue.path)).toEqual(row.issues);
      else expect(res.body).not.toHaveProperty('issues');
    }
    if (row.status === 401) expect(res.headers['www-authenticate']).toMatch(/^Bearer( |$)/);

    expect(await dump()).toEqual(before);
    expect(audits.length).toBe(auditsBefore);
    expectNoPrototypePollution();
  });

  test('after the matrix, the stored policy is still served and still usable', async () => {
    const res = await request(url)
      .get(P)
      .set('Authorization', `Bearer ${await token()}`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ client_id: 'app', policies: VALID.policies, version: expect.any(String) });
    const tokens = await login(server);
    const exchanged = await refresh(server, tokens.refresh_token, { audience: B });
    expect(exchanged.status).toBe(200);
    expect(claims(exchanged.body.access_token)).toMatchObject({ aud: B, scope: 'b:read' });
  });
});

// ---------------------------------------------------------------------------------------------
// Tampered store
// ---------------------------------------------------------------------------------------------

/** Announces a change made behind the store's back, and waits until the store's listeners (the cache) saw it. */
async function announce(clientId: string): Promise<void> {
  let unsubscribe = (): void => {};
  const seen = new Promise<void>((resolve) => {
    unsubscribe = store.subscribe((id) => {
      if (id === clientId) resolve();
    });
  });
  await redis.publish(store.channel, clientId);
  await seen;
  unsubscribe();
}

const policyKey = (): string => store.keyFor('app');
const writeHash = (fields: Record<string, string | Buffer>) => async (): Promise<void> => {
  await redis.del(policyKey());
  await redis.hset(policyKey(), fields);
};
const writeJson = (json: string): (() => Promise<void>) => writeHash({ v: 'tampered-version', p: json });
const HUGE_DUPLICATES = `[${Array(100_000).fill(JSON.stringify(VALID_ENTRY)).join(',')}]`;

interface TamperRow {
  readonly name: string;
  readonly tamper: () => Promise<void>;
}

const TAMPERED: TamperRow[] = [
  { name: 'not JSON', tamper: writeJson('{not json') },
  { name: 'JSON null', tamper: writeJson('null') },
  { name: 'a JSON string', tamper: writeJson('"https://api-b.example.com"') },
  { name: 'a JSON object instead of a list', tamper: writeJson(JSON.stringify(VALID_ENTRY)) },
  { name: 'an empty list', tamper: writeJson('[]') },
  { name: 'a huge list (100,000 copies of one entry)', tamper: writeJson(HUGE_DUPLICATES) },
  { name: 'a huge list of nulls', tamper: writeJson(`[${Array(200_000).fill('null').join(',')}]`) },
  { name: '100,000 levels of nesting', tamper: writeJson(`${'['.repeat(100_000)}${']'.repeat(100_000)}`) },
  { name: 'nested __proto__ widening the scope', tamper: writeJson(`[{"audience":"${B}","scope":["b:read"],"__proto__":{"scope":["b:write"]}}]`) },
  { name: 'an entry made only of __proto__', tamper: writeJson(`[{"__proto__":${JSON.stringify(VALID_ENTRY)}}]`) },
  { name: 'a root object with __proto__', tamper: writeJson(`{"__proto__":${JSON.stringify(VALID.policies)}}`) },
  { name: 'an audience with a fragment', tamper: writeJson(JSON.stringify([{ audience: `${B}#x`, scope: ['b:read'] }])) },
  { name: 'a relative audience', tamper: writeJson(JSON.stringify([{ audience: 'api-b.example.com', scope: ['b:read'] }])) },
  { name: 'a scope string instead of a list', tamper: writeJson(JSON.stringify([{ audience: B, scope: 'b:read b:write' }])) },
  { name: 'a scope with a space (two scopes smuggled in one)', tamper: writeJson(JSON.stringify([{ audience: B, scope: ['b:read b:write'] }])) },
  { name: 'an extra key', tamper: writeJson(JSON.stringify([{ ...VALID_ENTRY, admin: true }])) },
  { name: 'the version field missing', tamper: writeHash({ p: JSON.stringify(VALID.policies) }) },
  { name: 'an empty version', tamper: writeHash({ v: '', p: JSON.stringify(VALID.policies) }) },
  { name: 'the policy field missing', tamper: writeHash({ v: 'tampered-version' }) },
  { name: 'bytes that are not UTF-8', tamper: writeHash({ v: 'tampered-version', p: Buffer.from([0xff, 0xfe, 0x5b, 0x5d]) }) },
  {
    name: 'a string key instead of a hash',
    tamper: async () => {
      await redis.del(policyKey());
      await redis.set(policyKey(), JSON.stringify(VALID.policies));
    },
  },
  {
    name: 'a list key instead of a hash',
    tamper: async () => {
      await redis.del(policyKey());
      await redis.rpush(policyKey(), 'v', 'p');
    },
  },
  {
    name: 'a set key instead of a hash',
    tamper: async () => {
      await redis.del(policyKey());
      await redis.sadd(policyKey(), JSON.stringify(VALID.policies));
    },
  },
];

describe('tampered policy store: fail closed, report, never crash', () => {
  beforeEach(async () => {
    await store.set('app', VALID.policies);
    storeErrors.length = 0;
  });
  afterEach(async () => {
    await redis.del(policyKey());
    await store.set('app', VALID.policies);
  });

  test.each(TAMPERED.map((row) => [row.name, row] as const))('%s', async (_name, row) => {
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);
    await row.tamper();
    await announce('app');
    const tampered = await dump();

    // a policy-only target: no token, 500 server_error, reason store_corrupt, nothing rotated or written
    const eventsBefore = server.events.length;
    const res = await refresh(server, tokens.refresh_token, { audience: B });
    expect({ status: res.status, error: res.body.error }).toEqual({ status: 500, error: 'server_error' });
    expect(res.body).not.toHaveProperty('access_token');
    expect(res.body.error_description).toBe('the MRRT policy of this client could not be read');
    expect(server.events.slice(eventsBefore)).toEqual([
      expect.objectContaining({ outcome: 'refused', reason: 'store_corrupt', error: 'server_error', clientId: 'app' }),
    ]);
    expect(storeErrors).toEqual([expect.objectContaining({ name: 'PolicyStoreError', code: 'ERR_MRRT_STORE_CORRUPT' })]);
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);

    // the granted API keeps working, without policy scopes
    const granted = await refresh(server, tokens.refresh_token, { resource: API.A });
    expect(granted.status).toBe(200);
    expect(claims(granted.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read' });
    expect(granted.body).not.toHaveProperty('resource');

    // the admin API reports the problem instead of crashing; listing still works
    const headers = { Authorization: `Bearer ${await token()}` };
    const read = await request(url).get(P).set(headers);
    expect(read.status).toBe(500);
    expect(read.headers['content-type']).toMatch(/^application\/json/);
    expect(read.headers['cache-control']).toBe('no-store');
    expect(read.body).toEqual({ error: 'server_error', error_description: 'the stored policy is invalid' });
    const list = await request(url).get('/admin/clients').set(headers);
    expect(list.status).toBe(200);
    expect(list.body.clients).toContain('app');
    expect(await dump()).toEqual(tampered);

    // an administrator can repair it with a PUT, and the next exchange sees the repaired policy at once
    const repaired = await request(url)
      .put(P)
      .set(headers)
      .send({ policies: [{ audience: B, scope: ['b:read', 'b:write'] }] });
    expect(repaired.status).toBe(201);
    expect(await redis.type(policyKey())).toBe('hash');
    const exchanged = await refresh(server, tokens.refresh_token, { audience: B });
    expect(exchanged.status).toBe(200);
    expect(claims(exchanged.body.access_token)).toMatchObject({ aud: B, scope: 'b:read b:write' });
  });

  test.each(TAMPERED.map((row) => [row.name, row] as const))('%s: an administrator can delete it, and MRRT is off for the client', async (_name, row) => {
    const tokens = await login(server);
    await row.tamper();
    await announce('app');
    const headers = { Authorization: `Bearer ${await token()}` };
    const deleted = await request(url).delete(P).set(headers);
    expect(deleted.status).toBe(204);
    expect(await redis.exists(policyKey())).toBe(0);
    expect((await request(url).get('/admin/clients').set(headers)).body.clients).not.toContain('app');
    expect((await request(url).get(P).set(headers)).status).toBe(404);
    const res = await refresh(server, tokens.refresh_token, { audience: B });
    expect({ status: res.status, error: res.body.error }).toEqual({ status: 400, error: 'invalid_target' });
    expect(server.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'no_policy' });
  });

  test.each([
    ['a deny-listed audience (the admin API)', [{ audience: API.ADMIN, scope: ['admin:write'] }], API.ADMIN, 'deny_listed'],
    ['an API that does not allow skipping consent', [{ audience: API.CONSENT, scope: ['x:read'] }], API.CONSENT, 'consent_required'],
    ['an API that is not known', [{ audience: API.GONE, scope: ['g:read'] }], API.GONE, 'unknown_resource'],
    ['only OpenID and undefined scopes', [{ audience: B, scope: ['openid', 'offline_access', 'b:admin'] }], B, 'empty_scope'],
  ] as const)('well-formed but malicious stored data is re-checked at exchange time: %s', async (_name, stored, target, reason) => {
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);
    await writeJson(JSON.stringify(stored))();
    await announce('app');
    const eventsBefore = server.events.length;
    const res = await refresh(server, tokens.refresh_token, { audience: target });
    expect(res.status).toBe(400);
    expect(res.body.error).toBe(reason === 'empty_scope' ? 'invalid_scope' : 'invalid_target');
    expect(server.events.slice(eventsBefore)).toEqual([expect.objectContaining({ outcome: 'refused', reason })]);
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
  });

  test('stored scopes the API does not define and OpenID scopes never reach a token', async () => {
    const tokens = await login(server);
    await writeJson(JSON.stringify([{ audience: B, scope: ['openid', 'b:write', 'offline_access', 'b:admin', 'a:write'] }]))();
    await announce('app');
    const res = await refresh(server, tokens.refresh_token, { audience: B });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: B, scope: 'b:write' });
    expect(res.body.scope).toBe('b:write');
  });
});

// ---------------------------------------------------------------------------------------------
// SPEC P5: the admin API is never reachable through MRRT
// ---------------------------------------------------------------------------------------------

describe("the admin API's own audience is deny-listed (SPEC P5)", () => {
  // The admin API is a known resource server that allows skipping consent: unless it is deny-listed,
  // a first-party app could mint itself an admin token from its refresh token and rewrite every
  // policy. The router refuses to exist unless withMrrt's denyList holds its audience.
  let plain: TestServer;
  let plainAdmin: http.Server;
  let plainUrl: string;
  let operator: { privateKey: jose.CryptoKey; publicKey: jose.CryptoKey };
  const memory = new MemoryPolicyStore();

  beforeAll(async () => {
    plain = await startServer({ mrrt: { store: memory, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] } });
    operator = await jose.generateKeyPair('ES256');
    // the provider's own keys (tokens it issues) and an operator key (tokens this test signs)
    const providerKeys = ((await request(plain.url).get('/jwks')).body as jose.JSONWebKeySet).keys;
    const operatorKey = { ...(await jose.exportJWK(operator.publicKey)), kid: 'operator', alg: 'ES256' };
    const app = express();
    app.use(
      '/admin',
      createPolicyRouter({
        provider: plain.provider,
        audience: API.ADMIN,
        authorize: jwtAuthorizer({
          key: jose.createLocalJWKSet({ keys: [...providerKeys, operatorKey] }),
          issuer: plain.url,
          audience: API.ADMIN,
          scope: 'admin:write',
        }),
      }),
    );
    plainAdmin = http.createServer(app);
    await new Promise<void>((resolve) => plainAdmin.listen(0, '127.0.0.1', resolve));
    plainUrl = `http://127.0.0.1:${(plainAdmin.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    plainAdmin.closeAllConnections();
    await new Promise((resolve) => plainAdmin.close(resolve));
    await plain.close();
  });

  const operatorToken = (): Promise<string> =>
    new jose.SignJWT({ scope: 'admin:write', client_id: 'operator' })
      .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'operator' })
      .setIssuer(plain.url)
      .setAudience(API.ADMIN)
      .setIssuedAt()
      .setJti(randomUUID())
      .setExpirationTime('5m')
      .sign(operator.privateKey);

  test('a stored policy naming the admin API yields no admin token, and nothing is rotated', async () => {
    await memory.set('app', [{ audience: API.ADMIN, scope: ['admin:write'] }, VALID_ENTRY]);
    const tokens = await login(plain);
    const before = snapshot(plain, tokens.refresh_token);
    const res = await refresh(plain, tokens.refresh_token, { audience: API.ADMIN });
    expect({ status: res.status, error: res.body.error }).toEqual({ status: 400, error: 'invalid_target' });
    expect(res.body).not.toHaveProperty('access_token');
    expect(plain.events.at(-1)).toMatchObject({ outcome: 'refused', reason: 'deny_listed', clientId: 'app' });
    expect(snapshot(plain, tokens.refresh_token)).toEqual(before);

    // what the refresh token can get (a token for another API) is no admin credential
    const other = await refresh(plain, tokens.refresh_token, { audience: B });
    expect(other.status).toBe(200);
    const takeover = await request(plainUrl).put(P).set('Authorization', `Bearer ${other.body.access_token}`).send(VALID);
    expect({ status: takeover.status, error: takeover.body.error }).toEqual({ status: 401, error: 'invalid_token' });
  });

  test('an operator cannot store a policy naming the admin API', async () => {
    await memory.delete('app');
    const headers = { Authorization: `Bearer ${await operatorToken()}` };
    const refused = await request(plainUrl)
      .put(P)
      .set(headers)
      .send(policies({ audience: API.ADMIN, scope: ['admin:write'] }));
    expect({ status: refused.status, error: refused.body.error }).toEqual({ status: 400, error: 'invalid_request' });
    expect((refused.body.issues as Array<{ path: string }>).map((issue) => issue.path)).toEqual(['$.policies[0].audience']);
    expect(await memory.get('app')).toBeUndefined();
    // control: the operator token is accepted for a valid policy
    expect((await request(plainUrl).put(P).set(headers).send(VALID)).status).toBe(201);
  });

  test('a router without its audience, or whose audience withMrrt does not deny-list, is refused at start-up', async () => {
    expect(() => createPolicyRouter({ provider: plain.provider, authorize: () => true } as never)).toThrow(/"audience" option is required/);
    const open = await startServer({ mrrt: { store: new MemoryPolicyStore(), allowSkippingConsent: SKIP_CONSENT } });
    try {
      expect(() => createPolicyRouter({ provider: open.provider, authorize: () => true, audience: API.ADMIN })).toThrow(TypeError);
      expect(() => createPolicyRouter({ provider: open.provider, authorize: () => true, audience: API.ADMIN })).toThrow(
        /must be on the provider's MRRT denyList/,
      );
      // the provider is left as it was: its deny-list is the operator's
      const { denyList } = (open.provider as unknown as { [mrrtConfiguration]: { denyList: ReadonlySet<string> } })[mrrtConfiguration];
      expect([...denyList]).toEqual([]);
    } finally {
      await open.close();
    }
  });
});
