// Shared checks of the security test suites (property, adversarial, tampered store): what a client
// sees of an access token, and what the provider has persisted for a grant.
import { expect } from '@jest/globals';
import * as jose from 'jose';
import request from 'supertest';

import { CLIENTS, snapshot, type TestServer } from './fixture.js';

export type Snapshot = ReturnType<typeof snapshot>;

/** RFC 7662 introspection, authenticated as the confidential client `app` (allowed to introspect any token). */
export async function introspect(server: TestServer, token: string): Promise<Record<string, unknown>> {
  const res = await request(server.url)
    .post('/token/introspection')
    .type('form')
    .send({ token, client_id: CLIENTS.app.client_id, client_secret: CLIENTS.app.client_secret });
  expect(res.status).toBe(200);
  return res.body as Record<string, unknown>;
}

/** The audience and scope of an access token: decoded when it is a JWT, introspected when it is opaque. */
export async function accessTokenView(server: TestServer, token: string): Promise<{ aud: unknown; scope: string; format: 'jwt' | 'opaque' }> {
  let payload: Record<string, unknown>;
  let format: 'jwt' | 'opaque' = 'jwt';
  try {
    payload = jose.decodeJwt(token) as Record<string, unknown>;
  } catch {
    format = 'opaque';
    payload = await introspect(server, token);
    expect(payload.active).toBe(true);
  }
  return { aud: payload.aud, scope: typeof payload.scope === 'string' ? payload.scope : '', format };
}

/** Every refresh token stored for `grantId`, as stored. */
export function storedRefreshTokens(server: TestServer, grantId: string): Array<Record<string, unknown>> {
  return [...server.storage.entries.entries()]
    .filter(([key, entry]) => key.startsWith('RefreshToken:') && entry.payload.grantId === grantId)
    .map(([, entry]) => entry.payload as Record<string, unknown>);
}

/**
 * SPEC E9: nothing from a policy is ever persisted. Every refresh token of the grant still has the
 * original refresh token's resource and scope, and the Grant is byte-for-byte what it was at login.
 */
export function expectNothingPersisted(server: TestServer, original: Snapshot): void {
  const first = JSON.parse(original.refreshToken) as Record<string, unknown>;
  const tokens = storedRefreshTokens(server, original.grantId);
  expect(tokens.length).toBeGreaterThan(0);
  for (const token of tokens) {
    expect(token.resource).toEqual(first.resource);
    expect(token.scope).toBe(first.scope);
  }
  const grant = server.storage.entries.get(`Grant:${original.grantId}`);
  expect(JSON.stringify(grant?.payload)).toBe(original.grant);
}

/** RFC 6749 §3.3 scope syntax: scope-tokens of %x21 / %x23-5B / %x5D-7E separated by single spaces. */
export const SCOPE_SYNTAX = /^[\x21\x23-\x5B\x5D-\x7E]+(?: [\x21\x23-\x5B\x5D-\x7E]+)*$/;
