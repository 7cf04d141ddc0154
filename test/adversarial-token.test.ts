// Adversarial input matrix at the token endpoint: hostile `audience` / `resource` / `scope`
// values, wrong parameter types, prototype names and oversized bodies, sent by the confidential
// first-party client `app` whose refresh token was granted API.A. Every row states the status and
// `error` it must get (and the mrrt.exchange reason when MRRT refused it); after every row the stored
// refresh token and Grant are unchanged (or, for a 200 with rotation, rotated without widening) and
// the refresh token still works for its granted API. Run with rotation off and on.
import { randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { errors } from 'oidc-provider';
import request from 'supertest';

import { RedisPolicyStore, type MrrtReason } from '../lib/index.js';
import { API, CLIENTS, RESOURCE_SERVERS, SKIP_CONSENT, claims, login, refresh, snapshot, startServer, type TestServer } from './support/fixture.js';
import { accessTokenView, expectNothingPersisted } from './support/security.js';
import { deleteKeys } from './support/redis-keys.js';

const redis = new Redis(process.env.MRRT_TEST_REDIS_URL!);
const prefix = `mrrt-test:{adversarial-token-${randomBytes(6).toString('hex')}}:`;
const store = new RedisPolicyStore(redis, { prefix });

afterAll(async () => {
  await store.close();
  await deleteKeys(redis, prefix);
  await redis.quit();
});

const B = API.B;
const f = (key: string, value: string): string => `${encodeURIComponent(key)}=${encodeURIComponent(value)}`;
const fields = (...pairs: Array<[string, string]>): string => pairs.map(([key, value]) => f(key, value)).join('&');
const aud = (value: string): string => f('audience', value);
const res_ = (value: string): string => f('resource', value);
const CYRILLIC_A = '\u0430';
const PUNYCODE_B = `https://${new URL(`https://${CYRILLIC_A}pi-b.example.com`).hostname}`;

interface Row {
  readonly name: string;
  /** Form fields appended to a valid refresh request of `app` (already encoded). */
  readonly extra: string;
  readonly status: number;
  /** The OAuth `error`; `undefined` for a 200. */
  readonly error: string | undefined;
  /** The mrrt.exchange refusal reason when MRRT refused the request; `undefined` when no event is emitted. */
  readonly reason?: MrrtReason;
  /** For a 200: the token's audience (`null` for oidc-provider's opaque userinfo token), scope, and `resource` echo. */
  readonly issued?: { readonly aud: string | null; readonly scope: string; readonly resource?: string };
  /** Send `body` verbatim with this content type instead of a refresh request. */
  readonly raw?: { readonly contentType: string; readonly body: string };
}

const refused = (name: string, extra: string, error: string, reason?: MrrtReason): Row => ({ name, extra, status: 400, error, ...(reason ? { reason } : {}) });
/** Refused by MRRT as not reachable: the target is neither granted nor in the policy. */
const notInPolicy = (name: string, extra: string): Row => refused(name, extra, 'invalid_target', 'not_in_policy');
/** Served by plain oidc-provider: the parameter was not an `audience`/`resource` value at all. */
const plain = (name: string, extra: string): Row => ({ name, extra, status: 200, error: undefined, issued: { aud: null, scope: 'openid offline_access' } });
const policyB = (name: string, extra: string): Row => ({ name, extra, status: 200, error: undefined, issued: { aud: B, scope: 'b:read', resource: B } });

const ROWS: Row[] = [
  // --- relative, fragment-bearing, oversized, confusable, encoded, normalized-looking targets
  notInPolicy('relative host as audience', aud('api-b.example.com')),
  notInPolicy('relative path as audience', aud('/v1/billing')),
  notInPolicy('scheme-relative audience', aud('//api-b.example.com')),
  notInPolicy('relative resource', res_('api-b')),
  notInPolicy('audience with a fragment', aud(`${B}#frag`)),
  notInPolicy('audience with an empty fragment', aud(`${B}#`)),
  notInPolicy('the granted resource with a fragment', res_(`${API.A}#x`)),
  notInPolicy('a 10k-character audience', aud(`${B}/${'a'.repeat(10_000)}`)),
  notInPolicy('a 50k-character resource (just under the body limit)', res_(`${B}/${'r'.repeat(50_000)}`)),
  notInPolicy('Cyrillic "а" in api-b (homoglyph)', aud(`https://${CYRILLIC_A}pi-b.example.com`)),
  notInPolicy('Cyrillic "е" in the granted API\'s host', res_('https://api-a.\u0435xample.com')),
  notInPolicy('punycode of the homoglyph host', aud(PUNYCODE_B)),
  notInPolicy('fullwidth solidus', aud('https:\uFF0F\uFF0Fapi-b.example.com')),
  notInPolicy('double percent-encoded audience', aud(encodeURIComponent(B))),
  notInPolicy('percent-encoded host character', aud('https://api-%62.example.com')),
  notInPolicy('percent-encoded dot segment on the admin API', aud(`${API.ADMIN}/%2e`)),
  notInPolicy('trailing slash', aud(`${B}/`)),
  notInPolicy('trailing slash on the granted API', res_(`${API.A}/`)),
  notInPolicy('uppercase host', aud('https://API-B.EXAMPLE.COM')),
  notInPolicy('uppercase scheme', aud('HTTPS://api-b.example.com')),
  notInPolicy('explicit default port', aud('https://api-b.example.com:443')),
  notInPolicy('userinfo in the URI', aud('https://user@api-b.example.com')),
  notInPolicy('http instead of https', aud('http://api-b.example.com')),
  notInPolicy('leading space', aud(` ${B}`)),
  notInPolicy('trailing space', aud(`${B} `)),
  notInPolicy('trailing newline', aud(`${B}\n`)),
  notInPolicy('tab-padded', aud(`\t${B}\t`)),
  notInPolicy('trailing NUL', aud(`${B}\u0000`)),
  refused('the admin API (deny-listed, present in the policy)', aud(API.ADMIN), 'invalid_target', 'deny_listed'),
  notInPolicy('the admin API with a trailing slash', aud(`${API.ADMIN}/`)),
  notInPolicy('the admin API in uppercase', aud('https://ADMIN.example.com')),
  notInPolicy('javascript: URI', aud('javascript:alert(1)')),
  notInPolicy('URN', aud('urn:ietf:params:oauth:token-type:access_token')),
  notInPolicy('"__proto__" as the audience', aud('__proto__')),
  notInPolicy('"constructor" as the audience', aud('constructor')),
  notInPolicy('"prototype" as the resource', res_('prototype')),
  notInPolicy('"toString" as the resource', res_('toString')),

  // --- repeated and conflicting targets
  refused('the same audience twice', `${aud(B)}&${aud(B)}`, 'invalid_target', 'multiple_targets'),
  refused('two resources', `${res_(B)}&${res_(API.C)}`, 'invalid_target', 'multiple_targets'),
  refused('the granted resource twice', `${res_(API.A)}&${res_(API.A)}`, 'invalid_target', 'multiple_targets'),
  refused('audience once and resource twice, all equal', `${aud(B)}&${res_(B)}&${res_(B)}`, 'invalid_target', 'multiple_targets'),
  refused('200 audience values', Array.from({ length: 200 }, () => aud(B)).join('&'), 'invalid_target', 'multiple_targets'),
  refused('an empty audience next to a real one', `${aud('')}&${aud(B)}`, 'invalid_target', 'multiple_targets'),
  refused('audience and resource with different values', `${aud(B)}&${res_(API.C)}`, 'invalid_request'),
  refused('audience and a whitespace-padded resource', `${aud(B)}&${res_(` ${B}`)}`, 'invalid_request'),

  // --- wrong types: array and object syntax are not parameters of the token endpoint
  plain('audience[]= array syntax', f('audience[]', B)),
  plain('audience[x]= object syntax', f('audience[x]', B)),
  plain('resource[]= array syntax', f('resource[]', B)),
  plain('resource[0]/resource[1] index syntax', `${f('resource[0]', B)}&${f('resource[1]', API.C)}`),
  plain('audience[__proto__]= object syntax', f('audience[__proto__]', B)),
  plain('an empty audience', aud('')),
  plain('empty audience and resource', `${aud('')}&${res_('')}`),

  // --- prototype names as parameter names
  plain('__proto__ as a parameter name', f('__proto__', B)),
  plain('__proto__[resource] as a parameter name', f('__proto__[resource]', B)),
  plain('constructor[prototype][audience] as a parameter name', f('constructor[prototype][audience]', B)),
  plain('prototype, hasOwnProperty and toString as parameter names', fields(['prototype', B], ['hasOwnProperty', B], ['toString', B])),

  // --- scope strings
  refused('scope with a control character', `${aud(B)}&${f('scope', 'b:read\u0001')}`, 'invalid_scope'),
  refused('scope with a tab', `${aud(B)}&${f('scope', 'b:read\tb:write')}`, 'invalid_scope'),
  refused('scope with a newline', `${aud(B)}&${f('scope', 'b:read\nopenid')}`, 'invalid_scope'),
  refused('scope with a NUL', `${aud(B)}&${f('scope', 'b:read\u0000')}`, 'invalid_scope'),
  refused('scope with DEL', `${aud(B)}&${f('scope', 'b:read\u007f')}`, 'invalid_scope'),
  refused('scope with a leading space', `${aud(B)}&${f('scope', ' b:read')}`, 'invalid_scope'),
  refused('scope with a double space', `${aud(B)}&${f('scope', 'b:read  b:read')}`, 'invalid_scope'),
  refused('scope with a Cyrillic homoglyph', `${aud(B)}&${f('scope', 'b:re\u0430d')}`, 'invalid_scope'),
  policyB('a duplicated scope', `${aud(B)}&${f('scope', 'b:read b:read b:read')}`),
  refused('1000 unknown scopes', `${aud(B)}&${f('scope', Array.from({ length: 1000 }, (_, i) => `s${i}`).join(' '))}`, 'invalid_scope', 'scope_not_allowed'),
  policyB('1000 copies of the policy scope', `${aud(B)}&${f('scope', Array(1000).fill('b:read').join(' '))}`),
  refused(
    'the policy scope among 999 unknown ones',
    `${aud(B)}&${f('scope', ['b:read', ...Array.from({ length: 999 }, (_, i) => `s${i}`)].join(' '))}`,
    'invalid_scope',
    'scope_not_allowed',
  ),
  policyB('an empty scope', `${aud(B)}&${f('scope', '')}`),
  refused('only openid for a policy-only target', `${aud(B)}&${f('scope', 'openid')}`, 'invalid_scope', 'empty_scope'),
  refused('only OpenID scopes for a policy-only target', `${aud(B)}&${f('scope', 'offline_access openid')}`, 'invalid_scope', 'empty_scope'),
  refused('a defined scope outside the policy', `${aud(B)}&${f('scope', 'b:write')}`, 'invalid_scope', 'scope_not_allowed'),
  refused('a scope of another API', `${aud(B)}&${f('scope', 'b:read a:write')}`, 'invalid_scope', 'scope_not_allowed'),
  refused('a 300-character scope', `${aud(B)}&${f('scope', 'b'.repeat(300))}`, 'invalid_scope', 'scope_not_allowed'),
  refused('"__proto__" as a scope', `${aud(B)}&${f('scope', '__proto__')}`, 'invalid_scope', 'scope_not_allowed'),
  refused('prototype names as scopes', `${aud(B)}&${f('scope', 'constructor toString hasOwnProperty')}`, 'invalid_scope', 'scope_not_allowed'),
  refused('scope sent twice', `${aud(B)}&${f('scope', 'b:read')}&${f('scope', 'b:read')}`, 'invalid_request'),
  policyB('scope[]= array syntax (ignored)', `${aud(B)}&${f('scope[]', 'b:write')}`),
  refused("another API's scope on the granted API (plain oidc-provider refuses)", `${res_(API.A)}&${f('scope', 'b:read')}`, 'invalid_scope'),

  // --- repeated protocol parameters, content types and oversized bodies
  refused('refresh_token sent twice', f('refresh_token', 'x'), 'invalid_request'),
  refused('grant_type sent twice', f('grant_type', 'refresh_token'), 'invalid_request'),
  refused("a body over oidc-provider's 56 KiB limit", `${aud(B)}&${f('padding', 'p'.repeat(60 * 1024))}`, 'invalid_request'),
  refused('a 1 MiB body', `${aud(B)}&${f('padding', 'p'.repeat(1024 * 1024))}`, 'invalid_request'),
  policyB('a body just under the limit', `${aud(B)}&${f('padding', 'p'.repeat(54 * 1024))}`),
  {
    name: 'a JSON body',
    extra: '',
    status: 400,
    error: 'invalid_request',
    raw: { contentType: 'application/json', body: '{"grant_type":"refresh_token","audience":"https://api-b.example.com"}' },
  },
  { name: 'a text/plain body', extra: '', status: 400, error: 'invalid_request', raw: { contentType: 'text/plain', body: 'grant_type=refresh_token' } },

  // --- controls: the same harness serves the valid requests
  policyB('control: the policy-only API by audience', aud(B)),
  { name: 'control: the granted API by resource', extra: res_(API.A), status: 200, error: undefined, issued: { aud: API.A, scope: 'a:read' } },
];

const PROVIDER_WRITES = ['refresh_token.consumed', 'refresh_token.saved', 'grant.revoked', 'server_error'];

describe.each([
  ['rotation off', false],
  ['rotation on', true],
])('token endpoint adversarial matrix, %s', (_label, rotate) => {
  let server: TestServer;

  beforeAll(async () => {
    await store.set('app', [
      { audience: API.B, scope: ['b:read'] },
      { audience: API.C, scope: ['c:read'] },
      { audience: API.ADMIN, scope: ['admin:write'] },
    ]);
    server = await startServer({ mrrt: { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] }, rotate });
  });
  afterAll(() => server.close());

  async function send(row: Row, refreshToken: string): Promise<request.Response> {
    const req = request(server.url).post('/token');
    if (row.raw) return req.set('Content-Type', row.raw.contentType).send(row.raw.body);
    const base = fields(
      ['grant_type', 'refresh_token'],
      ['refresh_token', refreshToken],
      ['client_id', CLIENTS.app.client_id],
      ['client_secret', CLIENTS.app.client_secret],
    );
    return req.set('Content-Type', 'application/x-www-form-urlencoded').send(row.extra ? `${base}&${row.extra}` : base);
  }

  test('the matrix has at least 40 rows, each with an explicit status and error', () => {
    expect(ROWS.length).toBeGreaterThanOrEqual(40);
    expect(new Set(ROWS.map((row) => row.name)).size).toBe(ROWS.length);
    for (const row of ROWS) expect(row.status === 200 ? row.error === undefined && row.issued !== undefined : typeof row.error === 'string').toBe(true);
  });

  test.each(ROWS.map((row) => [row.name, row] as const))('%s', async (_name, row) => {
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);
    const eventsBefore = server.events.length;
    const providerEventsBefore = server.providerEvents.length;

    const res = await send(row, tokens.refresh_token);
    expect(res.status).toBeLessThan(500);
    expect({ status: res.status, error: res.body.error }).toEqual({ status: row.status, error: row.error });
    const events = server.events.slice(eventsBefore);
    let current = tokens.refresh_token;

    if (row.status !== 200) {
      expect(res.body.error_description).toEqual(expect.any(String));
      expect(res.body.error_description).not.toMatch(/\n\s+at /);
      expect(res.body).not.toHaveProperty('access_token');
      // more than one target is refused before the refresh token is read: no grant in the event
      const grantId = row.reason === 'multiple_targets' ? undefined : before.grantId;
      expect(events).toEqual(
        row.reason ? [expect.objectContaining({ outcome: 'refused', reason: row.reason, error: row.error, clientId: 'app', grantId })] : [],
      );
      expect(server.providerEvents.slice(providerEventsBefore).filter((name) => PROVIDER_WRITES.includes(name))).toEqual([]);
      expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    } else {
      const issued = row.issued!;
      const token = await accessTokenView(server, res.body.access_token);
      expect(token.aud ?? null).toBe(issued.aud);
      expect(token.scope).toBe(issued.scope);
      expect(res.body.scope).toBe(issued.scope);
      if (issued.resource) expect(res.body.resource).toBe(issued.resource);
      else expect(res.body).not.toHaveProperty('resource');
      expect(events).toEqual(issued.resource ? [expect.objectContaining({ outcome: 'issued', resolvedAudience: issued.resource })] : []);
      if (rotate) {
        expect(res.body.refresh_token).not.toBe(tokens.refresh_token);
        expect(JSON.parse(snapshot(server, tokens.refresh_token).refreshToken).consumed).toEqual(expect.any(Number));
        current = res.body.refresh_token;
      } else {
        expect(res.body.refresh_token).toBe(tokens.refresh_token);
        expect(snapshot(server, tokens.refresh_token)).toEqual(before);
      }
    }
    expectNothingPersisted(server, before);

    // the refresh token (or its rotated successor) still works for its granted API
    const usable = await refresh(server, current, { resource: API.A });
    expect(usable.status).toBe(200);
    expect(claims(usable.body.access_token)).toMatchObject({ aud: API.A, scope: 'a:read', client_id: 'app' });
  });
});

describe('a deployment whose getResourceServerInfo normalizes resource indicators', () => {
  // Here resource servers are looked up by origin and declare their canonical `audience`, so
  // spellings of the admin API that the deny-list does not list verbatim still resolve to it. The
  // deny-list must then apply through the resource server's `audience`, and every API must be
  // reachable only under the audience its resource server declares.
  let server: TestServer;
  const SPELLINGS = [`${API.ADMIN}/`, 'https://ADMIN.example.com', 'https://admin.example.com:443', `${API.ADMIN}/anything`, 'HTTPS://admin.EXAMPLE.com/.'];

  beforeAll(async () => {
    await store.set('other', [...SPELLINGS.map((audience) => ({ audience, scope: ['admin:write'] })), { audience: `${API.B}/`, scope: ['b:read'] }]);
    server = await startServer({
      mrrt: { store, allowSkippingConsent: () => true, denyList: [API.ADMIN] },
      configure: (configuration) => {
        configuration.features!.resourceIndicators!.getResourceServerInfo = (_ctx, resource) => {
          const origin = URL.canParse(resource) ? new URL(resource).origin : undefined;
          const info = origin === undefined ? undefined : RESOURCE_SERVERS[origin];
          if (!info) throw new errors.InvalidTarget();
          return { ...info, audience: origin };
        };
      },
    });
  });
  afterAll(async () => {
    await server.close();
    await store.delete('other');
  });

  test.each(SPELLINGS)('%s resolves to the admin API and is refused as deny-listed, before rotation', async (spelling) => {
    const tokens = await login(server, { client: 'other' });
    const before = snapshot(server, tokens.refresh_token);
    const eventsBefore = server.events.length;
    const res = await refresh(server, tokens.refresh_token, { audience: spelling }, { client: 'other' });
    expect({ status: res.status, error: res.body.error }).toEqual({ status: 400, error: 'invalid_target' });
    expect(server.events.slice(eventsBefore)).toEqual([expect.objectContaining({ outcome: 'refused', reason: 'deny_listed', clientId: 'other' })]);
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
  });

  test('control: a normalized spelling of an allowed API gets a token for its declared audience', async () => {
    const tokens = await login(server, { client: 'other' });
    const res = await refresh(server, tokens.refresh_token, { audience: `${API.B}/` }, { client: 'other' });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read', client_id: 'other' });
    expect(res.body).toMatchObject({ scope: 'b:read', resource: `${API.B}/` });
  });
});
