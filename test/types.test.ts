// The public types as a user's strict TypeScript sees them (checked by ts-jest's type check).
import { describe, expect, test } from '@jest/globals';
import Provider, { type KoaContextWithOIDC } from 'oidc-provider';

import { MemoryPolicyStore, withMrrt, type MrrtExchangeEvent } from '../lib/index.js';

describe('types', () => {
  test('MRRT events are typed on instances, without casts', () => {
    const MrrtProvider = withMrrt(Provider, { store: new MemoryPolicyStore() });
    const provider = new MrrtProvider('https://op.example.com', {});
    const seen: Array<[KoaContextWithOIDC, MrrtExchangeEvent]> = [];
    provider.on('mrrt.exchange', (ctx, event) => {
      seen.push([ctx, event]);
    });
    provider.on('mrrt.store_error', (_ctx, error) => {
      seen.length = error ? 0 : seen.length;
    });
    // oidc-provider's own events keep their types
    provider.on('grant.success', (ctx) => {
      expect(ctx.oidc).toBeDefined();
    });
    expect(provider).toBeInstanceOf(Provider);
    expect(provider.listenerCount('mrrt.exchange')).toBe(1);
  });
});
