// What the deployment's own code sees of an MRRT exchange: the overlay (the target among the refresh
// token's resources, the policy scopes among its scopes) is shown to oidc-provider's issuance in the
// exchange's own request only — not to event listeners, not to another provider of the same class,
// not to another client — and withMrrt keeps a Provider subclass's own model getters.
import { afterAll, describe, expect, test } from '@jest/globals';
import Provider from 'oidc-provider';

import { MemoryAdapter, MemoryPolicyStore, MemoryStorage, withMrrt } from '../lib/index.js';
import { API, SKIP_CONSENT, login, refresh, snapshot, startServer, type TestServer } from './support/fixture.js';

const servers: TestServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.close();
});

const STORED = { scopes: ['openid', 'offline_access', 'a:read'], resources: [API.A] };

async function policyStore(...clients: string[]): Promise<MemoryPolicyStore> {
  const store = new MemoryPolicyStore();
  for (const client of clients) await store.set(client, [{ audience: API.B, scope: ['b:read'] }]);
  return store;
}

interface TokenLike {
  readonly scopes: Set<string>;
  readonly resourceIndicators: Set<string>;
}

describe("the deployment's event listeners see refresh tokens as stored", () => {
  test.each([true, false])('refresh_token.saved and .consumed during an exchange (rotation %s)', async (rotate) => {
    const server = await startServer({ mrrt: { store: await policyStore('app'), allowSkippingConsent: SKIP_CONSENT }, rotate });
    servers.push(server);
    const seen: unknown[] = [];
    const record = (event: string) => (token: TokenLike) => seen.push({ event, scopes: [...token.scopes], resources: [...token.resourceIndicators] });
    const tokens = await login(server);
    const events = server.provider as unknown as NodeJS.EventEmitter;
    events.on('refresh_token.saved', record('saved'));
    events.on('refresh_token.consumed', record('consumed'));

    const res = await refresh(server, tokens.refresh_token, { resource: API.B });
    expect(res.status).toBe(200);
    expect(res.body.scope).toBe('b:read');
    const expected = rotate ? ['consumed', 'saved'].map((event) => ({ event, ...STORED })) : [];
    expect(seen).toEqual(expected);
  });
});

describe("the deployment's changes to the provider's models", () => {
  // what instrumentation or a test stub does: the same body as oidc-provider's consume, put in its place
  test('a consume the deployment puts on provider.RefreshToken.prototype still runs after the check before rotation', async () => {
    const store = new MemoryPolicyStore();
    await store.set('app', [{ audience: API.GONE, scope: ['g:read'] }]);
    const server = await startServer({ mrrt: { store, allowSkippingConsent: [...SKIP_CONSENT, API.GONE] }, rotate: true });
    servers.push(server);
    const proto = server.provider.RefreshToken.prototype as unknown as {
      consume(): Promise<void>;
      adapter: { consume(id: string): Promise<void> };
      jti: string;
    };
    const consumed: string[] = [];
    proto.consume = async function consume(this: typeof proto) {
      consumed.push(this.jti);
      await this.adapter.consume(this.jti);
      (this as unknown as { emit(name: string): void }).emit('consumed');
    };
    const tokens = await login(server);
    const before = snapshot(server, tokens.refresh_token);

    // API.GONE is in the policy but not a known API: refused before the refresh token is consumed
    const refused = await refresh(server, tokens.refresh_token, { resource: API.GONE });
    expect(refused.status).toBe(400);
    expect(refused.body.error).toBe('invalid_target');
    expect(server.events.at(-1)?.reason).toBe('unknown_resource');
    expect(consumed).toEqual([]);
    expect(snapshot(server, tokens.refresh_token)).toEqual(before);
    // the deployment's consume runs for the refresh that rotates, and the token was never burnt
    const res = await refresh(server, tokens.refresh_token);
    expect(res.status).toBe(200);
    expect(consumed).toHaveLength(1);
  });

  test('a subclass of provider.RefreshToken made during an exchange gets its own adapter, as on plain oidc-provider', async () => {
    const constructed: string[] = [];
    const subclassed: { adapterOfSubclass: unknown; adapterOfModel: unknown }[] = [];
    const server = await startServer({
      mrrt: { store: await policyStore('app'), allowSkippingConsent: SKIP_CONSENT },
      configure: (configuration) => {
        const storage = new MemoryStorage();
        configuration.adapter = (name: string) => {
          constructed.push(name);
          return new MemoryAdapter(name, storage);
        };
        configuration.extraTokenClaims = (ctx) => {
          if (ctx.oidc.params?.grant_type !== 'refresh_token') return undefined;
          const { RefreshToken } = ctx.oidc.provider;
          class ArchivedToken extends RefreshToken {}
          subclassed.push({ adapterOfSubclass: ArchivedToken.adapter, adapterOfModel: RefreshToken.adapter });
          return undefined;
        };
      },
    });
    servers.push(server);
    const res = await refresh(server, (await login(server)).refresh_token, { resource: API.B });
    expect(res.status).toBe(200);
    expect(subclassed).toHaveLength(1);
    expect(subclassed[0]!.adapterOfSubclass).not.toBe(subclassed[0]!.adapterOfModel);
    expect(constructed.filter((name) => name === 'ArchivedToken')).toHaveLength(1);
    expect(constructed.filter((name) => name === 'RefreshToken')).toHaveLength(1);
  });
});

describe('another provider of the same withMrrt class never sees an exchange', () => {
  test("inside one provider's exchange, the other's models and tokens are its own, even on shared storage", async () => {
    const Mrrt = withMrrt(Provider, { store: await policyStore('app'), allowSkippingConsent: SKIP_CONSENT });
    const storage = new MemoryStorage();
    const adapter = (name: string): MemoryAdapter => new MemoryAdapter(name, storage);
    const other = await startServer({ mrrt: { store: new MemoryPolicyStore() }, providerClass: Mrrt, adapter, rotate: false });
    const otherModels = { RefreshToken: other.provider.RefreshToken, Grant: other.provider.Grant };
    let value = '';
    const seen: unknown[] = [];
    const server = await startServer({
      mrrt: { store: new MemoryPolicyStore() },
      providerClass: Mrrt,
      adapter,
      rotate: false,
      configure: (configuration) => {
        configuration.extraTokenClaims = async (ctx) => {
          if (ctx.oidc.params?.grant_type !== 'refresh_token') return undefined;
          const found = (await other.provider.RefreshToken.find(value)) as unknown as TokenLike | undefined;
          seen.push({
            own: other.provider.RefreshToken === otherModels.RefreshToken && other.provider.Grant === otherModels.Grant,
            scopes: found && [...found.scopes],
            resources: found && [...found.resourceIndicators],
          });
          return undefined;
        };
      },
    });
    servers.push(other, server);
    value = (await login(server)).refresh_token;

    const res = await refresh(server, value, { resource: API.B });
    expect(res.status).toBe(200);
    expect(res.body.scope).toBe('b:read');
    expect(seen).toEqual([{ own: true, ...STORED }]);
  });
});

describe("another client's refresh token", () => {
  test('is refused by oidc-provider as a client mismatch, with no MRRT event naming its user, and still works for its client', async () => {
    const server = await startServer({ mrrt: { store: await policyStore('app', 'other'), allowSkippingConsent: SKIP_CONSENT }, rotate: true });
    servers.push(server);
    const tokens = await login(server);
    const before = [...server.storage.entries].length;

    const res = await refresh(server, tokens.refresh_token, { resource: API.B }, { client: 'other' });
    expect(res.status).toBe(400);
    expect(res.body.error).toBe('invalid_grant');
    expect(server.events).toEqual([]);
    expect([...server.storage.entries].length).toBe(before);
    expect((await refresh(server, tokens.refresh_token, { resource: API.B })).status).toBe(200);
  });
});

describe('objects of an exchange kept aside by a hook', () => {
  test('read from another request while the exchange is in flight, show what is stored', async () => {
    interface Kept {
      readonly token: TokenLike;
      readonly grant: { getResourceScopeFiltered(resource: string, filter: string[]): string };
    }
    const read = (kept: Kept) => ({
      scopes: [...kept.token.scopes],
      resources: [...kept.token.resourceIndicators],
      grantScope: kept.grant.getResourceScopeFiltered(API.B, ['b:read']),
    });
    let kept: Kept | undefined;
    const seen: Record<string, ReturnType<typeof read>> = {};
    let keptAside!: () => void;
    const inFlight = new Promise<void>((resolve) => (keptAside = resolve));
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const server = await startServer({
      mrrt: { store: await policyStore('app'), allowSkippingConsent: SKIP_CONSENT },
      rotate: false,
      configure: (configuration) => {
        // a hook oidc-provider calls while it issues: the exchange keeps its objects and waits;
        // another user's plain refresh reads them meanwhile
        configuration.extraTokenClaims = async (ctx) => {
          if (ctx.oidc.params?.grant_type !== 'refresh_token') return undefined;
          if (ctx.oidc.params.resource === API.B) {
            kept = { token: ctx.oidc.entities.RefreshToken as unknown as TokenLike, grant: ctx.oidc.entities.Grant as unknown as Kept['grant'] };
            seen.exchange = read(kept);
            keptAside();
            await released;
          } else if (kept && !seen.other) {
            seen.other = read(kept);
            release();
          }
          return undefined;
        };
      },
    });
    servers.push(server);
    const alice = await login(server);
    const bob = await login(server, { sub: 'bob' });

    const exchange = refresh(server, alice.refresh_token, { resource: API.B });
    await inFlight;
    expect((await refresh(server, bob.refresh_token)).status).toBe(200);
    expect((await exchange).status).toBe(200);
    expect(seen.exchange).toEqual({ scopes: [...STORED.scopes, 'b:read'], resources: [API.A, API.B], grantScope: 'b:read' });
    expect(seen.other).toEqual({ ...STORED, grantScope: '' });
    expect(read(kept!)).toEqual({ ...STORED, grantScope: '' });
  });
});

/** Everything the server stores, serialized: the same before and after a refused request. */
const stored = (server: TestServer): string[] => [...server.storage.entries].map(([key, entry]) => `${key} ${JSON.stringify(entry.payload)}`).sort();

describe('a refresh token oidc-provider does not find', () => {
  test.each([true, false])('an unknown value is refused as oidc-provider refuses it, with no MRRT event (rotation %s)', async (rotate) => {
    const server = await startServer({ mrrt: { store: await policyStore('app'), allowSkippingConsent: SKIP_CONSENT }, rotate });
    servers.push(server);
    const tokens = await login(server);
    const before = stored(server);

    const res = await refresh(server, 'not-a-refresh-token-value-of-any-kind', { resource: API.B });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error: 'invalid_grant', error_description: 'grant request is invalid' });
    expect(server.events).toEqual([]);
    expect(stored(server)).toEqual(before);
    expect((await refresh(server, tokens.refresh_token, { resource: API.B })).status).toBe(200);
  });

  test.each([true, false])(
    'a token bound to a session that ended is refused with no MRRT event naming its user, though it was read (rotation %s)',
    async (rotate) => {
      const server = await startServer({
        mrrt: { store: await policyStore('app'), allowSkippingConsent: SKIP_CONSENT },
        rotate,
        configure: (configuration) => {
          configuration.expiresWithSession = () => true;
        },
      });
      servers.push(server);
      const tokens = await login(server);
      // oidc-provider's RefreshToken.find reads the token, then drops it: its session is gone
      for (const key of [...server.storage.entries.keys()]) if (key.startsWith('Session:')) server.storage.entries.delete(key);
      const before = stored(server);

      const res = await refresh(server, tokens.refresh_token, { resource: API.B });
      expect(res.status).toBe(400);
      expect(res.body.error).toBe('invalid_grant');
      expect(server.events).toEqual([]);
      expect(stored(server)).toEqual(before);
    },
  );
});

describe("withMrrt over a Provider subclass keeps the subclass's model getters", () => {
  test('an overriding RefreshToken / Grant getter still runs', async () => {
    const calls: string[] = [];
    // a deployment's subclass that overrides the model getters (as accessors, which oidc-provider's types do not declare)
    class Custom extends Provider {}
    for (const name of ['RefreshToken', 'Grant'] as const) {
      const own = Object.getOwnPropertyDescriptor(Provider.prototype, name)!.get!;
      Object.defineProperty(Custom.prototype, name, {
        configurable: true,
        get(this: Provider) {
          calls.push(name);
          return own.call(this);
        },
      });
    }
    const server = await startServer({
      mrrt: { store: new MemoryPolicyStore() },
      providerClass: withMrrt(Custom, { store: await policyStore('app'), allowSkippingConsent: SKIP_CONSENT }),
    });
    servers.push(server);
    calls.length = 0;
    expect(server.provider.RefreshToken).toBeDefined();
    expect(server.provider.Grant).toBeDefined();
    expect(calls).toEqual(['RefreshToken', 'Grant']);
    // and the exchange works through them
    const res = await refresh(server, (await login(server)).refresh_token, { resource: API.B });
    expect(res.status).toBe(200);
    expect(res.body.scope).toBe('b:read');
  });

  // oidc-provider's constructor may keep a model it reads (9.11's introspection and revocation token finders do)
  test('a model read while the constructor runs is the one the provider hands out afterwards, and an exchange works through it', async () => {
    class Keeping extends Provider {
      readonly kept: { RefreshToken: unknown; Grant: unknown };
      constructor(issuer: string, configuration: ConstructorParameters<typeof Provider>[1]) {
        super(issuer, configuration);
        this.kept = { RefreshToken: this.RefreshToken, Grant: this.Grant };
      }
    }
    const server = await startServer({
      mrrt: { store: new MemoryPolicyStore() },
      providerClass: withMrrt(Keeping, { store: await policyStore('app'), allowSkippingConsent: SKIP_CONSENT }),
    });
    servers.push(server);
    const { kept } = server.provider as unknown as Keeping;
    expect(kept.RefreshToken).toBe(server.provider.RefreshToken);
    expect(kept.Grant).toBe(server.provider.Grant);
    const tokens = await login(server);
    const found = await (kept.RefreshToken as typeof server.provider.RefreshToken).find(tokens.refresh_token);
    expect(found).toBeInstanceOf(server.provider.RefreshToken);
    const res = await refresh(server, tokens.refresh_token, { resource: API.B });
    expect(res.status).toBe(200);
    expect(res.body.scope).toBe('b:read');
  });
});
