// Drop-in fidelity (SPEC C1–C3, P6): what plain oidc-provider does, withMrrt does too, except MRRT.
import { afterAll, afterEach, beforeAll, describe, expect, jest, test } from '@jest/globals';
import express from 'express';
import Provider, { type Configuration } from 'oidc-provider';
import request from 'supertest';

import { MemoryAdapter, MemoryPolicyStore, MemoryStorage, withMrrt } from '../lib/index.js';
import { createPolicyRouter } from '../lib/express.js';
import { API, CLIENTS, SKIP_CONSENT, claims, login, refresh, snapshot, startServer, type TestServer } from './support/fixture.js';

const ISSUER = 'https://op.example.com';
const discovery = async (provider: Provider): Promise<unknown> =>
  (await request(provider.callback()).get('/.well-known/openid-configuration').set('Host', 'op.example.com')).body;

describe('configurations MRRT cannot serve construct and behave as plain oidc-provider', () => {
  let warn: jest.SpiedFunction<typeof console.warn>;
  beforeAll(() => {
    warn = jest.spyOn(console, 'warn');
  });
  afterEach(() => {
    warn.mockClear();
  });
  afterAll(() => {
    warn.mockRestore();
  });
  const mrrtWarnings = (): string[] => warn.mock.calls.map((call) => String(call[0])).filter((line) => line.includes('oidc-provider-mrrt'));
  const ccClient = {
    client_id: 'service',
    client_secret: 'service-secret-service-secret-ss',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };

  // the cases run in order; each reason is said once per process, so a repeated reason says nothing
  const cases: Array<[string, () => Configuration, RegExp, number]> = [
    ['scopes without offline_access (no refresh_token grant)', () => ({ scopes: ['openid'] }), /no refresh_token grant/, 1],
    [
      'a client-credentials-only server',
      () => ({ scopes: ['openid'], clients: [ccClient], features: { clientCredentials: { enabled: true } } }),
      /no refresh_token grant/,
      0,
    ],
    ['resource indicators disabled', () => ({ features: { resourceIndicators: { enabled: false } } }), /resourceIndicators is disabled/, 1],
  ];

  test.each(cases)('%s: constructs, says once that MRRT is inactive, and serves what plain serves', async (_label, configuration, reason, said) => {
    const MrrtProvider = withMrrt(Provider, { store: new MemoryPolicyStore() });
    const first = new MrrtProvider(ISSUER, configuration());
    const second = new MrrtProvider(ISSUER, configuration());
    const plain = new Provider(ISSUER, configuration());
    expect(mrrtWarnings()).toHaveLength(said);
    for (const line of mrrtWarnings()) expect(line).toMatch(reason);
    expect(await discovery(first)).toEqual(await discovery(plain));
    expect(await discovery(second)).toEqual(await discovery(plain));
    // an admin API for a provider without MRRT would store policies nothing applies: a start-up error
    expect(() => createPolicyRouter({ provider: first, authorize: () => true, audience: null })).toThrow(/MRRT is inactive/);
  });

  test('each reason is said exactly once however many providers are built', () => {
    const MrrtProvider = withMrrt(Provider, { store: new MemoryPolicyStore() });
    for (let i = 0; i < 3; i += 1) new MrrtProvider(ISSUER, { scopes: ['openid'], features: { resourceIndicators: { enabled: false } } });
    // this file's earlier tests said it already (the counter is per process)
    expect(mrrtWarnings()).toEqual([]);
  });

  test('a client-credentials-only server issues the same tokens', async () => {
    const configuration = (): Configuration => ({
      scopes: ['openid', 'api:read'],
      clients: [ccClient],
      features: {
        clientCredentials: { enabled: true },
        resourceIndicators: {
          enabled: true,
          defaultResource: () => API.A,
          getResourceServerInfo: () => ({ scope: 'api:read', accessTokenFormat: 'jwt', audience: API.A }),
        },
      },
    });
    const token = async (provider: Provider) =>
      request(provider.callback())
        .post('/token')
        .type('form')
        .send({ grant_type: 'client_credentials', client_id: ccClient.client_id, client_secret: ccClient.client_secret, scope: 'api:read' });
    const mrrt = await token(new (withMrrt(Provider, { store: new MemoryPolicyStore() }))(ISSUER, configuration()));
    const plain = await token(new Provider(ISSUER, configuration()));
    expect(mrrt.status).toBe(200);
    expect({ status: mrrt.status, scope: mrrt.body.scope, aud: claims(mrrt.body.access_token).aud }).toEqual({
      status: plain.status,
      scope: plain.body.scope,
      aud: claims(plain.body.access_token).aud,
    });
  });
});

describe("the deployment's extraClientMetadata sees exactly what it sees without MRRT", () => {
  test('the validator is called for the declared properties only, as often as on plain oidc-provider', async () => {
    const run = async (build: (configuration: Configuration) => Provider): Promise<string[]> => {
      const calls: string[] = [];
      const provider = build({
        clients: [
          { ...CLIENTS.app, tenant: 'acme' },
          { ...CLIENTS.partner, tenant: 'partner' },
        ],
        extraClientMetadata: {
          properties: ['tenant'],
          validator: (_ctx, key, value) => {
            calls.push(`${key}=${String(value)}`);
          },
        },
      });
      const app = await provider.Client.find('app');
      expect((app as unknown as Record<string, unknown>).tenant).toBe('acme');
      expect(app).not.toHaveProperty('first_party');
      await provider.Client.find('partner');
      return calls;
    };
    const plain = await run((configuration) => new Provider(ISSUER, configuration));
    const mrrt = await run((configuration) => new (withMrrt(Provider, { store: new MemoryPolicyStore() }))(ISSUER, configuration));
    expect(plain.length).toBeGreaterThan(0);
    expect(mrrt).toEqual(plain);
  });
});

describe("first-party is the operator's statement alone", () => {
  let server: TestServer;
  const store = new MemoryPolicyStore();
  beforeAll(async () => {
    server = await startServer({
      mrrt: { store, allowSkippingConsent: SKIP_CONSENT, denyList: [API.ADMIN] },
      configure(configuration) {
        configuration.features!.registration = { enabled: true };
        configuration.features!.registrationManagement = { enabled: true, rotateRegistrationAccessToken: false };
      },
    });
  });
  afterAll(() => server.close());

  const admin = () => {
    const app = express();
    app.use('/admin', createPolicyRouter({ provider: server.provider, authorize: () => true, audience: API.ADMIN }));
    return request(app);
  };
  const policy = { policies: [{ audience: API.B, scope: ['b:read'] }] };

  test('a statically configured client with first_party: true may hold a policy', async () => {
    const res = await admin().put('/admin/clients/other/policy').send(policy);
    expect(res.status).toBe(201);
    await store.delete('other');
  });

  test('dynamic registration and registration management never make a client first-party', async () => {
    const metadata = {
      redirect_uris: ['https://self.example.com/cb'],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
      first_party: true,
    };
    const registered = await request(server.url).post('/reg').send(metadata);
    expect(registered.status).toBe(201);
    expect(registered.body).not.toHaveProperty('first_party');
    const { client_id: clientId, client_secret: clientSecret, registration_access_token: rat } = registered.body as Record<string, string>;

    const updated = await request(server.url)
      .put(`/reg/${clientId}`)
      .set('Authorization', `Bearer ${rat}`)
      .send({ ...metadata, client_id: clientId, client_secret: clientSecret, first_party: true });
    expect(updated.status).toBe(200);
    expect(updated.body).not.toHaveProperty('first_party');
    expect(await server.provider.Client.find(clientId!)).not.toHaveProperty('first_party');

    // the admin API refuses a policy for it, and stores nothing
    const write = await admin().put(`/admin/clients/${clientId}/policy`).send(policy);
    expect(write.status).toBe(400);
    expect(write.body.issues).toEqual([{ path: 'client_id', message: 'MRRT policies can only be stored for first-party clients' }]);
    expect(await store.get(clientId!)).toBeUndefined();

    // a policy put into the store behind the admin API's back is not honoured at the token endpoint either
    await store.set(clientId!, policy.policies);
    const client = { client_id: clientId!, client_secret: clientSecret!, redirect_uris: metadata.redirect_uris };
    const tokens = await login(server, { client });
    const before = snapshot(server, tokens.refresh_token);
    server.events.length = 0;
    const refused = await refresh(server, tokens.refresh_token, { audience: API.B }, { client });
    expect(refused.status).toBe(400);
    expect(refused.body.error).toBe('invalid_target');
    expect(server.events.map((event) => event.reason)).toEqual(['not_first_party']);
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    const still = await refresh(server, tokens.refresh_token, { resource: API.A }, { client });
    expect(still.status).toBe(200);
    expect(claims(still.body.access_token).aud).toBe(API.A);
    await store.delete(clientId!);
  });
});

describe("oidc-provider's default adapter stays in place", () => {
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.close();
  });

  test("per-provider storage, oidc-provider's own warning, and MRRT working on it", async () => {
    const warn = jest.spyOn(console, 'warn');
    const store = new MemoryPolicyStore();
    await store.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    const withoutAdapter = (configuration: Configuration): void => {
      delete configuration.adapter;
    };
    const mrrt = { store, allowSkippingConsent: SKIP_CONSENT };
    const first = await startServer({ mrrt, rotate: true, configure: withoutAdapter });
    const second = await startServer({ mrrt, rotate: true, configure: withoutAdapter });
    const plain = await startServer({ mrrt: false, rotate: true, configure: withoutAdapter });
    servers.push(first, second, plain);

    const adapterClass = (server: TestServer): unknown => Object.getPrototypeOf((server.provider.RefreshToken as unknown as { adapter: object }).adapter);
    expect(adapterClass(first)).toBe(adapterClass(plain));
    expect(warn.mock.calls.filter((call) => String(call[0]).includes('in-memory adapter'))).toHaveLength(3);
    warn.mockRestore();

    const tokens = await login(first);
    expect(await first.provider.RefreshToken.find(tokens.refresh_token)).toBeDefined();
    expect(await second.provider.RefreshToken.find(tokens.refresh_token)).toBeUndefined();

    const res = await refresh(first, tokens.refresh_token, { audience: API.B });
    expect(res.status).toBe(200);
    expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
    const rotated = await first.provider.RefreshToken.find(res.body.refresh_token);
    expect({ resource: rotated!.resource, scope: rotated!.scope }).toEqual({ resource: API.A, scope: 'openid offline_access a:read' });
  });
});

describe('MRRT options in the provider configuration', () => {
  test('an instance configured through its "mrrt" key serves exchanges from that store', async () => {
    const empty = new MemoryPolicyStore();
    const configured = new MemoryPolicyStore();
    await configured.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    const server = await startServer({
      mrrt: { store: empty, allowSkippingConsent: SKIP_CONSENT },
      configure(configuration) {
        configuration.mrrt = { store: configured };
      },
    });
    try {
      const tokens = await login(server);
      const res = await refresh(server, tokens.refresh_token, { audience: API.B });
      expect(res.status).toBe(200);
      expect(claims(res.body.access_token)).toMatchObject({ aud: API.B, scope: 'b:read' });
    } finally {
      await server.close();
    }
  });
});

describe("the deployment's adapter and models are used as without MRRT", () => {
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.close();
  });

  // what a deployment sees of oidc-provider's models from inside an exchange and from outside
  const observe = async (mrrt: boolean): Promise<{ constructed: Record<string, number>; seen: unknown[]; stored: unknown }> => {
    const constructed: Record<string, number> = {};
    const seen: unknown[] = [];
    const store = new MemoryPolicyStore();
    await store.set('app', [{ audience: API.B, scope: ['b:read'] }]);
    const server = await startServer({
      mrrt: mrrt && { store, allowSkippingConsent: SKIP_CONSENT },
      rotate: true,
      configure: (configuration) => {
        const storage = new MemoryStorage();
        configuration.adapter = (name: string) => {
          constructed[name] = (constructed[name] ?? 0) + 1;
          return new MemoryAdapter(name, storage);
        };
        configuration.extraTokenClaims = (ctx) => {
          // the refresh requests only: the code exchange has no refresh token entity yet
          if (ctx.oidc.params?.grant_type !== 'refresh_token') return undefined;
          const { RefreshToken, Grant } = ctx.oidc.provider;
          const { RefreshToken: token, Grant: grant } = ctx.oidc.entities;
          seen.push({
            models: [RefreshToken.name, Grant.name],
            kinds: [token?.kind, grant?.kind],
            sameAdapter: [(token?.constructor as typeof RefreshToken | undefined)?.adapter === RefreshToken.adapter, grant?.adapter === Grant.adapter],
            instances: [token instanceof RefreshToken, grant instanceof Grant],
          });
          return undefined;
        };
      },
    });
    servers.push(server);
    const tokens = await login(server);
    // plain oidc-provider refuses the API outside the grant; withMrrt exchanges for it
    const res = await refresh(server, tokens.refresh_token, { resource: mrrt ? API.B : API.A });
    expect(res.status).toBe(200);
    const rotated = await server.provider.RefreshToken.find(res.body.refresh_token);
    const again = await refresh(server, res.body.refresh_token, { resource: API.A });
    expect(again.status).toBe(200);
    return { constructed, seen, stored: { kind: rotated?.kind, resource: rotated?.resource, scope: rotated?.scope } };
  };

  test('each model gets one adapter, tokens keep their kind, and a hook sees the same models during an exchange', async () => {
    const plain = await observe(false);
    const mrrt = await observe(true);
    expect(mrrt.constructed).toEqual(plain.constructed);
    expect(mrrt.constructed.RefreshToken).toBe(1);
    expect(mrrt.constructed.Grant).toBe(1);
    expect(mrrt.stored).toEqual(plain.stored);
    // the exchange (or plain refresh) and the second refresh: the hook saw the provider's own models both times
    const expected = { models: ['RefreshToken', 'Grant'], kinds: ['RefreshToken', 'Grant'], sameAdapter: [true, true], instances: [true, true] };
    expect(plain.seen).toEqual(plain.seen.map(() => expected));
    expect(mrrt.seen).toEqual(mrrt.seen.map(() => expected));
    expect(plain.seen).toHaveLength(2);
    expect(mrrt.seen).toHaveLength(2);
  });
});
