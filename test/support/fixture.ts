import { createHash, randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

import express from 'express';
import * as jose from 'jose';
import Provider, { type Configuration } from 'oidc-provider';
import request from 'supertest';

import { API, CLIENTS, interactionHandler, providerConfiguration } from './provider-fixture.mjs';
import { MemoryAdapter, MemoryStorage, withMrrt, type MrrtEvents, type MrrtExchangeEvent, type MrrtOptions, type PolicyStore } from '../../lib/index.js';

export { API, CLIENTS, RESOURCE_SERVERS, SKIP_CONSENT } from './provider-fixture.mjs';
export type ClientName = keyof typeof CLIENTS;
/** A client by its fixture name, or the metadata of one registered some other way (dynamic registration). */
export type ClientRef = ClientName | { readonly client_id: string; readonly client_secret?: string; readonly redirect_uris: readonly string[] };
type ClientMetadata = Exclude<ClientRef, ClientName>;
const metadataOf = (client: ClientRef): ClientMetadata => (typeof client === 'string' ? (CLIENTS[client] as ClientMetadata) : client);

let signingKey: jose.JWK | undefined;
async function jwks(): Promise<{ keys: jose.JWK[] }> {
  if (!signingKey) {
    const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
    signingKey = { ...(await jose.exportJWK(privateKey)), kid: 'test-rs256', alg: 'RS256', use: 'sig' };
  }
  return { keys: [signingKey] };
}

export interface ServerOptions {
  /** Adapter for oidc-provider's models; default a MemoryAdapter on the server's own `storage`. */
  adapter?: Configuration['adapter'];
  /** MRRT options; `false` builds a plain oidc-provider with the same configuration. */
  mrrt: (Partial<MrrtOptions> & { store: PolicyStore }) | false;
  rotate?: boolean;
  configure?: (configuration: Configuration) => void;
  /** A `withMrrt` class to build the provider from (several servers of one class); default a class made from `mrrt`. */
  providerClass?: new (issuer: string, configuration: Configuration) => MrrtEvents & Provider;
}

export interface TestServer {
  readonly url: string;
  /** Typed with the MRRT events, which a plain provider (`mrrt: false`) simply never emits. */
  readonly provider: MrrtEvents & Provider;
  readonly storage: MemoryStorage;
  readonly events: MrrtExchangeEvent[];
  readonly providerEvents: string[];
  close(): Promise<void>;
}

export async function startServer(options: ServerOptions): Promise<TestServer> {
  const app = express();
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const storage = new MemoryStorage();

  const configuration: Configuration = providerConfiguration({
    adapter: options.adapter ?? ((name: string) => new MemoryAdapter(name, storage)),
    jwks: await jwks(),
    rotate: options.rotate,
  });
  if (options.mrrt === false) configuration.extraClientMetadata = { properties: ['first_party'] };
  options.configure?.(configuration);

  const provider: MrrtEvents & Provider =
    options.mrrt === false
      ? (new Provider(url, configuration) as MrrtEvents & Provider)
      : new (options.providerClass ?? withMrrt(Provider, options.mrrt as MrrtOptions))(url, configuration);
  const events: MrrtExchangeEvent[] = [];
  const providerEvents: string[] = [];
  provider.on('mrrt.exchange', (_ctx, event) => events.push(event));
  provider.on('refresh_token.consumed', () => providerEvents.push('refresh_token.consumed'));
  provider.on('refresh_token.saved', () => providerEvents.push('refresh_token.saved'));
  provider.on('grant.revoked', () => providerEvents.push('grant.revoked'));
  provider.on('server_error', () => providerEvents.push('server_error'));

  app.use(interactionHandler(provider));
  app.use(provider.callback());

  return {
    url,
    provider,
    storage,
    events,
    providerEvents,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface DpopKey {
  readonly privateKey: jose.CryptoKey;
  readonly publicJwk: jose.JWK;
}

export async function dpopKey(): Promise<DpopKey> {
  const { privateKey, publicKey } = await jose.generateKeyPair('ES256');
  return { privateKey, publicJwk: await jose.exportJWK(publicKey) };
}

export function dpopProof(key: DpopKey, url: string, method = 'POST'): Promise<string> {
  return new jose.SignJWT({ htm: method, htu: url, jti: randomUUID() })
    .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: key.publicJwk })
    .setIssuedAt()
    .sign(key.privateKey);
}

const pathOf = (location: string | undefined): string => {
  if (!location) throw new Error('expected a redirect');
  const { pathname, search } = new URL(location, 'http://placeholder');
  return pathname + search;
};

export interface TokenSet {
  access_token: string;
  refresh_token: string;
  id_token?: string;
  scope?: string;
  token_type: string;
}

/** Logs `sub` in through the provider's real authorization endpoint and interaction routes (code + PKCE). */
export async function login(
  server: TestServer,
  {
    client = 'app',
    scope = 'openid offline_access a:read',
    resource = API.A as string | undefined,
    sub = 'alice',
    dpop,
  }: {
    client?: ClientRef;
    scope?: string;
    resource?: string | undefined;
    sub?: string;
    dpop?: DpopKey;
  } = {},
): Promise<TokenSet> {
  const agent = request.agent(server.url);
  const metadata = metadataOf(client);
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');

  let res = await agent.get('/auth').query({
    client_id: metadata.client_id,
    response_type: 'code',
    scope,
    redirect_uri: metadata.redirect_uris[0],
    code_challenge: challenge,
    code_challenge_method: 'S256',
    prompt: 'consent',
    state: 'st',
    ...(resource ? { resource } : {}),
  });
  if (res.status !== 303) throw new Error(`authorization request failed: ${res.status} ${res.text}`);
  const uid = pathOf(res.headers.location).split('/')[2]!;
  res = await agent.post(`/interaction/${uid}/login`).query({ sub });
  res = await agent.get(pathOf(res.headers.location));
  const consentUid = pathOf(res.headers.location).split('/')[2]!;
  res = await agent.post(`/interaction/${consentUid}/consent`);
  res = await agent.get(pathOf(res.headers.location));
  const code = new URL(res.headers.location!).searchParams.get('code');
  if (!code) throw new Error(`no code in ${res.headers.location}`);

  const token = agent.post('/token').type('form');
  if (dpop) token.set('DPoP', await dpopProof(dpop, `${server.url}/token`));
  const tokenRes = await token.send({
    grant_type: 'authorization_code',
    code,
    redirect_uri: metadata.redirect_uris[0],
    code_verifier: verifier,
    client_id: metadata.client_id,
    ...(metadata.client_secret ? { client_secret: metadata.client_secret } : {}),
    ...(resource ? { resource } : {}),
  });
  if (tokenRes.status !== 200 || !tokenRes.body.refresh_token) throw new Error(`code exchange failed: ${tokenRes.status} ${tokenRes.text}`);
  return tokenRes.body as TokenSet;
}

/** A refresh_token grant request. `extra` may hold arrays for repeated parameters. */
export async function refresh(
  server: TestServer,
  refreshToken: string,
  extra: Record<string, string | string[]> = {},
  { client = 'app', dpop }: { client?: ClientRef; dpop?: DpopKey } = {},
): Promise<request.Response> {
  const metadata = metadataOf(client);
  const params = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: metadata.client_id });
  if (metadata.client_secret) params.set('client_secret', metadata.client_secret);
  for (const [key, value] of Object.entries(extra)) for (const v of [value].flat()) params.append(key, v);
  const req = request(server.url).post('/token').type('form');
  if (dpop) req.set('DPoP', await dpopProof(dpop, `${server.url}/token`));
  return req.send(params.toString());
}

/** The stored payloads of a refresh token and its Grant, serialized, to compare before and after. */
export function snapshot(server: TestServer, refreshToken: string): { refreshToken: string; grant: string; grantId: string } {
  const entry = server.storage.entries.get(`RefreshToken:${refreshToken}`);
  if (!entry) throw new Error('refresh token not found in storage');
  const grantId = entry.payload.grantId as string;
  const grant = server.storage.entries.get(`Grant:${grantId}`);
  return { refreshToken: JSON.stringify(entry.payload), grant: JSON.stringify(grant?.payload), grantId };
}

export const claims = (token: string): jose.JWTPayload => jose.decodeJwt(token);
