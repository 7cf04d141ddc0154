import type { Adapter, AdapterConstructor, AdapterFactory, AdapterPayload } from 'oidc-provider';

import { MemoryAdapter } from './adapters/memory.js';

/**
 * What one MRRT exchange presents to oidc-provider's own refresh_token handler: the refresh token
 * and Grant of this request, as read from the adapter, with the target and the policy scopes added.
 * Lives only for the duration of the request; never persisted.
 */
export interface Overlay {
  readonly refreshTokenId: string;
  readonly grantId: string;
  readonly target: string;
  readonly policyScopes: readonly string[];
  readonly original: { readonly resource: unknown; readonly scope: unknown };
  /** Whether the target is in the original grant, and the scope the Grant holds for it. */
  readonly granted: boolean;
  readonly grantedScope: string | undefined;
}

/** Per-request state, keyed by the Koa context that oidc-provider keeps in its AsyncLocalStorage. */
export interface RequestState {
  overlay?: Overlay;
  /** Set when the overlay was taken back mid-request: the request is served as without MRRT. */
  withdrawn?: boolean;
  /** A refusal to raise once oidc-provider has run its own checks, before it consumes the token. */
  refusal?: { readonly refreshTokenId: string; readonly error: Error };
}

export const union = (...lists: Iterable<string>[]): string[] => [...new Set(lists.flatMap((list) => [...list]))];
export const splitScope = (value: unknown): string[] => (typeof value === 'string' ? value.split(' ').filter(Boolean) : []);
const asList = (value: unknown): string[] => (Array.isArray(value) ? (value as string[]) : typeof value === 'string' ? [value] : []);

const isConstructable = (fn: unknown): fn is AdapterConstructor => typeof fn === 'function' && typeof fn.prototype === 'object' && fn.prototype !== null;

function restoreOriginal(payload: AdapterPayload, original: Overlay['original']): AdapterPayload {
  const { resource: _resource, scope: _scope, ...rest } = payload;
  const restored: Record<string, unknown> = { ...rest };
  if (original.resource !== undefined) restored.resource = original.resource;
  if (original.scope !== undefined) restored.scope = original.scope;
  return restored as AdapterPayload;
}

/**
 * Wraps the deployment's adapter (a class, a factory or, when none is configured, {@link MemoryAdapter})
 * so that, during an MRRT exchange only, reads of that one refresh token and Grant carry the overlay,
 * the rotated refresh token is saved with the original resource and scope, a Grant is never saved
 * with the overlay, and a pending refusal is raised before the refresh token is consumed.
 */
export function decorateAdapter(
  Base: AdapterConstructor | AdapterFactory | undefined,
  stateOf: () => RequestState | undefined,
): AdapterConstructor {
  const make: (name: string) => Adapter = Base === undefined
    ? (name) => new MemoryAdapter(name)
    : isConstructable(Base) ? (name) => new Base(name) : (name) => (Base as AdapterFactory)(name);

  return class MrrtAdapter implements Adapter {
    readonly #name: string;
    readonly #inner: Adapter;

    constructor(name: string) {
      this.#name = name;
      this.#inner = make(name);
    }

    async find(id: string): Promise<AdapterPayload | undefined | void> {
      const payload = await this.#inner.find(id);
      const overlay = stateOf()?.overlay;
      if (!payload || !overlay) return payload;
      if (this.#name === 'RefreshToken' && id === overlay.refreshTokenId && payload.grantId === overlay.grantId) {
        return {
          ...payload,
          resource: union(asList(payload.resource), [overlay.target]),
          scope: union(splitScope(payload.scope), overlay.policyScopes).join(' '),
        };
      }
      if (this.#name === 'Grant' && id === overlay.grantId) {
        const resources = (payload.resources ?? {}) as Record<string, string>;
        const scope = union(splitScope(resources[overlay.target]), overlay.policyScopes).join(' ');
        return { ...payload, resources: { ...resources, [overlay.target]: scope } };
      }
      return payload;
    }

    async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
      const overlay = stateOf()?.overlay;
      if (overlay && this.#name === 'Grant' && id === overlay.grantId) {
        throw new Error('oidc-provider-mrrt: refusing to persist a Grant while an MRRT overlay is applied');
      }
      if (overlay && this.#name === 'RefreshToken' && payload.grantId === overlay.grantId) {
        payload = restoreOriginal(payload, overlay.original);
      }
      await this.#inner.upsert(id, payload, expiresIn);
    }

    async consume(id: string): Promise<void> {
      const refusal = stateOf()?.refusal;
      if (refusal && this.#name === 'RefreshToken' && id === refusal.refreshTokenId) throw refusal.error;
      await this.#inner.consume(id);
    }

    async findByUid(uid: string): Promise<AdapterPayload | undefined | void> {
      return this.#inner.findByUid(uid);
    }

    async findByUserCode(userCode: string): Promise<AdapterPayload | undefined | void> {
      return this.#inner.findByUserCode(userCode);
    }

    async destroy(id: string): Promise<void> {
      await this.#inner.destroy(id);
    }

    async revokeByGrantId(grantId: string): Promise<void> {
      await this.#inner.revokeByGrantId(grantId);
    }
  };
}
