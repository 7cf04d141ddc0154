import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

import { afterAll, beforeAll, beforeEach, describe, expect, test } from '@jest/globals';
import express from 'express';
import * as jose from 'jose';
import Provider from 'oidc-provider';
import request from 'supertest';

import { MemoryPolicyStore } from '../lib/index.js';
import { createPolicyRouter, jwtAuthorizer, type PolicyAuditEvent } from '../lib/express.js';
import { API, SKIP_CONSENT, startServer, type TestServer } from './support/fixture.js';

const ISSUER = 'https://issuer.example.com';
const ADMIN_SCOPE = 'mrrt:admin';

let server: TestServer;
let admin: http.Server;
let url: string;
let key: { privateKey: jose.CryptoKey; publicKey: jose.CryptoKey };
const store = new MemoryPolicyStore();
const audits: PolicyAuditEvent[] = [];

async function token(
  claims: jose.JWTPayload = {},
  { typ = 'at+jwt', signWith = key.privateKey, exp = '5m' }: { typ?: string; signWith?: jose.CryptoKey; exp?: string | number } = {},
): Promise<string> {
  return new jose.SignJWT({ scope: ADMIN_SCOPE, client_id: 'admin-cli', iss: ISSUER, aud: API.ADMIN, ...claims })
    .setProtectedHeader({ alg: 'ES256', typ })
    .setIssuedAt()
    .setJti(randomUUID())
    .setExpirationTime(exp)
    .sign(signWith);
}

beforeAll(async () => {
  key = await jose.generateKeyPair('ES256');
  server = await startServer({ mrrt: { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN], limits: { maxEntries: 3 } } });
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
});
beforeEach(async () => {
  for (const id of ['app', 'other', 'spa']) await store.delete(id);
});

const auth = async () => ({ Authorization: `Bearer ${await token()}` });
const VALID = { policies: [{ audience: API.B, scope: ['b:read'] }] };

describe('policy CRUD with optimistic concurrency', () => {
  test('create, read, replace, list, delete', async () => {
    const headers = await auth();
    expect((await request(url).get('/admin/clients/app/policy').set(headers)).status).toBe(404);

    const created = await request(url).put('/admin/clients/app/policy').set(headers).send(VALID);
    expect(created.status).toBe(201);
    expect(created.body).toEqual({ client_id: 'app', policies: VALID.policies, version: expect.any(String) });
    expect(created.headers.etag).toBe(`"${created.body.version}"`);
    expect(created.headers['cache-control']).toBe('no-store');

    const read = await request(url).get('/admin/clients/app/policy').set(headers);
    expect(read.status).toBe(200);
    expect(read.headers.etag).toBe(created.headers.etag);

    const replaced = await request(url)
      .put('/admin/clients/app/policy')
      .set(headers)
      .set('If-Match', created.headers.etag!)
      .send({
        policies: [
          { audience: API.B, scope: ['b:read', 'b:write'] },
          { audience: API.C, scope: ['c:read'] },
        ],
      });
    expect(replaced.status).toBe(200);
    expect(replaced.headers.etag).not.toBe(created.headers.etag);

    await request(url).put('/admin/clients/other/policy').set(headers).send(VALID).expect(201);
    const list = await request(url).get('/admin/clients').query({ limit: '1' }).set(headers);
    expect(list.body).toEqual({ clients: ['app'], next: 'app' });
    expect((await request(url).get('/admin/clients').query({ after: 'app' }).set(headers)).body).toEqual({ clients: ['other'] });

    expect((await request(url).delete('/admin/clients/app/policy').set(headers).set('If-Match', replaced.headers.etag!)).status).toBe(204);
    expect((await request(url).delete('/admin/clients/app/policy').set(headers)).status).toBe(404);
    expect(await store.get('app')).toBeUndefined();

    expect(audits.slice(-4).map((e) => [e.action, e.clientId, e.actor])).toEqual([
      ['put', 'app', 'admin-cli'],
      ['put', 'app', 'admin-cli'],
      ['put', 'other', 'admin-cli'],
      ['delete', 'app', 'admin-cli'],
    ]);
  });

  test.each([
    ['PUT with a stale If-Match', 'put', { 'If-Match': '"stale"' }],
    ['PUT with If-None-Match: * over an existing policy', 'put', { 'If-None-Match': '*' }],
    ['DELETE with a stale If-Match', 'delete', { 'If-Match': '"stale"' }],
  ] as const)('%s is refused with 412 and changes nothing', async (_name, method, extra) => {
    const headers = await auth();
    const created = await request(url).put('/admin/clients/app/policy').set(headers).send(VALID);
    const before = await store.get('app');
    const auditsBefore = audits.length;
    const agent = request(url);
    const res = await agent[method]('/admin/clients/app/policy')
      .set(headers)
      .set(extra)
      .send({ policies: [{ audience: API.C, scope: ['c:read'] }] });
    expect(res.status).toBe(412);
    expect(res.body.error).toBe('precondition_failed');
    expect(await store.get('app')).toEqual(before);
    expect(audits.length).toBe(auditsBefore);
    expect(created.status).toBe(201);
  });

  test('two writers with the same If-Match: exactly one wins', async () => {
    const headers = await auth();
    const created = await request(url).put('/admin/clients/app/policy').set(headers).send(VALID);
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        request(url)
          .put('/admin/clients/app/policy')
          .set(headers)
          .set('If-Match', created.headers.etag!)
          .send({ policies: [{ audience: API.B, scope: i % 2 ? ['b:read'] : ['b:write'] }] }),
      ),
    );
    expect(results.map((r) => r.status).sort()).toEqual([200, 412, 412, 412, 412, 412, 412, 412]);
  });
});

describe('writes are validated against the provider, with JSON paths', () => {
  const cases: Array<[string, string, unknown, number, string[]]> = [
    ['an unknown client', 'nobody', VALID, 400, ['client_id']],
    ['a third-party client', 'partner', VALID, 400, ['client_id']],
    ['a deny-listed audience (the admin API itself)', 'app', { policies: [{ audience: API.ADMIN, scope: ['admin:write'] }] }, 400, ['$.policies[0].audience']],
    ['an audience that is not a known API', 'app', { policies: [{ audience: API.GONE, scope: ['g:read'] }] }, 400, ['$.policies[0].audience']],
    ['an API that does not allow skipping consent', 'app', { policies: [{ audience: API.CONSENT, scope: ['x:read'] }] }, 400, ['$.policies[0].audience']],
    [
      'scopes the API does not define',
      'app',
      { policies: [{ audience: API.B, scope: ['b:read', 'b:admin', 'openid'] }] },
      400,
      ['$.policies[0].scope[1]', '$.policies[0].scope[2]'],
    ],
    ['an empty policy', 'app', { policies: [] }, 400, ['$.policies']],
    ['no policies key', 'app', {}, 400, ['$.policies']],
    ['an unknown key', 'app', { ...VALID, extra: 1 }, 400, ['$["extra"]']],
    [
      'more entries than the limit',
      'app',
      { policies: [API.A, API.B, API.C, 'https://d.example.com'].map((audience) => ({ audience, scope: ['s'] })) },
      400,
      ['$.policies'],
    ],
    [
      'a relative audience and a scope with a space',
      'app',
      { policies: [{ audience: 'billing', scope: ['a b'] }] },
      400,
      ['$.policies[0].audience', '$.policies[0].scope[0]'],
    ],
    ['a bare array body', 'app', VALID.policies, 400, ['$']],
  ];

  test.each(cases)('%s is refused and changes nothing', async (_name, clientId, body, status, paths) => {
    const before = await store.get(clientId === 'nobody' ? 'app' : clientId);
    const res = await request(url)
      .put(`/admin/clients/${clientId}/policy`)
      .set(await auth())
      .send(body as object);
    expect(res.status).toBe(status);
    expect(res.body.error).toBe('invalid_request');
    expect((res.body.issues as Array<{ path: string }>).map((i) => i.path)).toEqual(paths);
    expect(await store.get(clientId === 'nobody' ? 'app' : clientId)).toEqual(before);
  });

  test('a __proto__ key is reported, not merged', async () => {
    const res = await request(url)
      .put('/admin/clients/app/policy')
      .set(await auth())
      .set('Content-Type', 'application/json')
      .send('{"policies":[{"audience":"https://api-b.example.com","scope":["b:read"],"__proto__":{"admin":true}}]}');
    expect(res.status).toBe(400);
    expect(res.body.issues).toEqual([{ path: '$.policies[0]["__proto__"]', message: expect.any(String) }]);
    expect(await store.get('app')).toBeUndefined();
  });

  test.each([
    ['malformed JSON', 'application/json', '{"policies": [', 400],
    [
      'a body over the limit',
      'application/json',
      JSON.stringify({ policies: [{ audience: API.B, scope: Array.from({ length: 600 }, (_, i) => `s${i}`) }] }),
      413,
    ],
    ['a non-JSON content type', 'text/plain', JSON.stringify(VALID), 415],
  ])('%s is refused and changes nothing', async (_name, type, body, status) => {
    const res = await request(url)
      .put('/admin/clients/app/policy')
      .set(await auth())
      .set('Content-Type', type)
      .send(body);
    expect(res.status).toBe(status);
    expect(res.body.error).toBe('invalid_request');
    expect(await store.get('app')).toBeUndefined();
  });
});

describe('authorization', () => {
  const refusals: Array<[string, () => Promise<Record<string, string>>, number, string]> = [
    ['no token', async () => ({}), 401, 'invalid_token'],
    ['a non-bearer scheme', async () => ({ Authorization: 'Basic YWRtaW46YWRtaW4=' }), 401, 'invalid_token'],
    ['a token for another audience', async () => ({ Authorization: `Bearer ${await token({ aud: API.B })}` }), 401, 'invalid_token'],
    ['a token without the admin scope', async () => ({ Authorization: `Bearer ${await token({ scope: 'b:read' })}` }), 403, 'insufficient_scope'],
    ['an expired token', async () => ({ Authorization: `Bearer ${await token({}, { exp: Math.floor(Date.now() / 1000) - 60 })}` }), 401, 'invalid_token'],
    [
      'alg none',
      async () => ({
        Authorization: `Bearer ${new jose.UnsecuredJWT({ scope: ADMIN_SCOPE }).setIssuer(ISSUER).setAudience(API.ADMIN).setExpirationTime('5m').encode()}`,
      }),
      401,
      'invalid_token',
    ],
    [
      'a token signed by another key',
      async () => ({ Authorization: `Bearer ${await token({}, { signWith: (await jose.generateKeyPair('ES256')).privateKey })}` }),
      401,
      'invalid_token',
    ],
    ['a token from another issuer', async () => ({ Authorization: `Bearer ${await token({ iss: 'https://evil.example.com' })}` }), 401, 'invalid_token'],
    ['an ID token (not typ at+jwt)', async () => ({ Authorization: `Bearer ${await token({}, { typ: 'JWT' })}` }), 401, 'invalid_token'],
    [
      'an opaque refresh token used as an access token',
      async () => ({ Authorization: 'Bearer JUgeZf3sbK5I1mzU4s8-olqv_WPmZHqYxzE3jkiPhVn' }),
      401,
      'invalid_token',
    ],
  ];

  test.each(refusals)('%s is refused on every route and changes nothing', async (_name, headers, status, error) => {
    await store.set('app', VALID.policies);
    const before = await store.get('app');
    for (const req of [
      request(url).get('/admin/clients'),
      request(url).get('/admin/clients/app/policy'),
      request(url)
        .put('/admin/clients/app/policy')
        .send({ policies: [{ audience: API.C, scope: ['c:read'] }] }),
      request(url).delete('/admin/clients/app/policy'),
    ]) {
      const res = await req.set(await headers());
      expect(res.status).toBe(status);
      expect(res.body.error).toBe(error);
      if (status === 401) expect(res.headers['www-authenticate']).toMatch(/^Bearer( |$)/);
    }
    expect(await store.get('app')).toEqual(before);
  });

  test('the router refuses to exist without an authorize function, or without an MRRT provider', () => {
    expect(() => createPolicyRouter({ provider: server.provider } as never)).toThrow(/"authorize" option is required/);
    const plain = new Provider('http://127.0.0.1:1', {});
    expect(() => createPolicyRouter({ provider: plain, authorize: () => true, audience: null })).toThrow(/built with withMrrt/);
    expect(() => jwtAuthorizer({ key: key.publicKey, issuer: ISSUER, audience: API.ADMIN, scope: '' })).toThrow(/"scope" option/);
    expect(() => jwtAuthorizer({ key: key.publicKey, issuer: ISSUER, audience: API.ADMIN, scope: 's', algorithms: ['none'] })).toThrow(/"algorithms" option/);
  });
});

describe("the deployment's getResourceServerInfo at the admin API", () => {
  test("gets a real oidc-provider context with the policy's client loaded, and a valid write succeeds", async () => {
    const seen: Array<{ client: string | undefined; account: unknown; params: unknown; scopes: string[] }> = [];
    const local = new MemoryPolicyStore();
    const provider = await startServer({
      mrrt: { store: local, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] },
      configure(configuration) {
        const original = configuration.features!.resourceIndicators!.getResourceServerInfo!;
        configuration.features!.resourceIndicators!.getResourceServerInfo = (ctx, resource, client) => {
          // what deployments commonly read: the context's client, account and parameters
          seen.push({
            client: ctx.oidc.client?.clientId,
            account: ctx.oidc.entities.Account,
            params: ctx.oidc.params,
            scopes: [...ctx.oidc.requestParamScopes],
          });
          return original(ctx, resource, client);
        };
      },
    });
    try {
      const app = express();
      app.use('/admin', createPolicyRouter({ provider: provider.provider, authorize: () => true, audience: API.ADMIN }));
      const res = await request(app).put('/admin/clients/app/policy').send(VALID);
      expect(res.status).toBe(201);
      expect(seen).toEqual([{ client: 'app', account: undefined, params: {}, scopes: [] }]);
      expect((await local.get('app'))?.policies).toEqual(VALID.policies);
    } finally {
      await provider.close();
    }
  });

  test('a deployment function that fails on the admin request refuses the write with a 400 and stores nothing', async () => {
    const local = new MemoryPolicyStore();
    const provider = await startServer({
      mrrt: { store: local, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] },
      configure(configuration) {
        configuration.features!.resourceIndicators!.getResourceServerInfo = (ctx) => {
          // a deployment that assumes an end-user is always present
          const account = ctx.oidc.entities.Account!;
          return { scope: `b:read ${account.accountId}` };
        };
      },
    });
    try {
      const app = express();
      app.use('/admin', createPolicyRouter({ provider: provider.provider, authorize: () => true, audience: API.ADMIN }));
      const res = await request(app).put('/admin/clients/app/policy').send(VALID);
      expect(res.status).toBe(400);
      expect(res.body.issues).toEqual([{ path: '$.policies[0].audience', message: expect.stringMatching(/could not be checked/) }]);
      expect(await local.get('app')).toBeUndefined();
    } finally {
      await provider.close();
    }
  });
});

describe('an Express router that fits Express', () => {
  const mountedAtRoot = () => {
    const app = express();
    app.use(createPolicyRouter({ provider: server.provider, authorize: (req) => req.get('authorization') === 'Bearer ok', audience: API.ADMIN }));
    app.get('/hello', (_req, res) => {
      res.json({ hello: 'world' });
    });
    app.get('/broken', () => {
      throw new Error("not the admin API's error");
    });
    return app;
  };

  test('mounted at the root, it answers its own paths only: other routes run untouched, without its headers', async () => {
    const app = mountedAtRoot();
    const hello = await request(app).get('/hello');
    expect(hello.status).toBe(200);
    expect(hello.body).toEqual({ hello: 'world' });
    expect(hello.headers['cache-control']).toBeUndefined();
    const unknown = await request(app).get('/nothing-here');
    expect(unknown.status).toBe(404);
    expect(unknown.headers['content-type']).not.toMatch(/json/);
    expect(unknown.headers['cache-control']).toBeUndefined();
    const own = await request(app).get('/clients').set('Authorization', 'Bearer ok');
    expect(own.status).toBe(200);
    expect(own.headers['cache-control']).toBe('no-store');
    const denied = await request(app).get('/clients');
    expect({ status: denied.status, error: denied.body.error }).toEqual({ status: 403, error: 'access_denied' });
  });

  test('an error raised by another route never turns into an admin API answer', async () => {
    const res = await request(mountedAtRoot()).get('/broken');
    expect(res.status).toBe(500);
    expect(res.headers['content-type']).not.toMatch(/json/);
  });

  test("the package's main entry loads no express (it lives in oidc-provider-mrrt/express)", async () => {
    const { readFile } = await import('node:fs/promises');
    const dist = new URL('../dist/', import.meta.url);
    const seen = new Set<string>();
    const bare = new Set<string>();
    const walk = async (file: string): Promise<void> => {
      if (seen.has(file)) return;
      seen.add(file);
      const source = await readFile(new URL(file, dist), 'utf8');
      for (const [, specifier] of source.matchAll(/(?:^|\n)\s*(?:import|export)[^'"\n]*?from\s*'([^']+)'/g)) {
        if (specifier!.startsWith('.')) await walk(new URL(specifier!, new URL(file, dist)).href.slice(dist.href.length));
        else bare.add(specifier!);
      }
    };
    await walk('index.js');
    expect(seen.size).toBeGreaterThan(5);
    expect([...bare].sort()).not.toContain('express');
    expect(bare).toContain('oidc-provider');
    seen.clear();
    bare.clear();
    await walk('express.js');
    expect(bare).toContain('express');
  });
});

describe('bearer tokens as the HTTP authentication RFCs have them', () => {
  test('the scheme is case-insensitive; a request without credentials gets the scheme without an error code', async () => {
    for (const scheme of ['Bearer', 'bearer', 'BEARER']) {
      const res = await request(url)
        .get('/admin/clients')
        .set('Authorization', `${scheme} ${await token()}`);
      expect({ scheme, status: res.status }).toEqual({ scheme, status: 200 });
    }
    const anonymous = await request(url).get('/admin/clients');
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers['www-authenticate']).toBe('Bearer');
    const forged = await request(url).get('/admin/clients').set('Authorization', 'Bearer not-a-jwt');
    expect(forged.status).toBe(401);
    expect(forged.headers['www-authenticate']).toBe('Bearer error="invalid_token"');
  });
});
