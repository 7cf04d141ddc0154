import type { Adapter, AdapterConstructor, AdapterFactory, AdapterPayload } from 'oidc-provider';

import { MemoryAdapter } from './adapters/memory.js';

/**
 * Per-request MRRT state, keyed by the Koa context that oidc-provider keeps in its AsyncLocalStorage.
 * The plan is made from the policy alone; what the refresh token and Grant hold is learnt from the
 * reads oidc-provider's own handler makes through the adapter, so an exchange reads nothing twice.
 */
export interface RequestState {
  /** The adapter id (the value) of this request's refresh token. */
  readonly refreshTokenValue: string;
  readonly target: string;
  /** MRRT applies: the policy scopes presented with the target, for this request only. */
  readonly policyScopes?: readonly string[];
  /** The scopes the target API defines (for the empty-scope check). */
  readonly defined?: ReadonlySet<string>;
  /** Set once the empty-scope check has passed: the refresh token and Grant it read do not change. */
  cleared?: boolean;
  /** A refusal: unconditional, or only when the target turns out not to be in the refresh token. */
  readonly refusal?: { readonly error: Error; readonly reason: string; readonly unlessGranted: boolean };
  /** What the refresh token held, once oidc-provider read it. */
  loaded?: {
    readonly original: { readonly resource: unknown; readonly scope: unknown };
    readonly granted: boolean;
    readonly grantId: string | undefined;
    readonly subject: string | undefined;
  };
  /** The scope the Grant held for the target, once oidc-provider read it. */
  grantedScope?: string | undefined;
  /** Set when the overlay was taken back mid-request: the request is served as without MRRT. */
  withdrawn?: boolean;
  /** The refusal raised at a checkpoint, with its reason. */
  raised?: { readonly error: Error; readonly reason: string };
  /** Raises the refusal due at this point, if any; called before oidc-provider writes anything. */
  checkpoint?: () => void;
}

/** The values of `first`, then those of `second` it lacks, each once (order kept). */
export function union(first: readonly string[], second: readonly string[]): string[] {
  if (first.length + second.length > 32) return [...new Set([...first, ...second])];
  // the usual lists hold a handful of values: a linear scan allocates nothing but the result
  const out: string[] = [];
  for (const value of first) if (!out.includes(value)) out.push(value);
  for (const value of second) if (!out.includes(value)) out.push(value);
  return out;
}

/** The values of a space-separated parameter such as `scope`; anything but a string has none. */
export function splitScope(value: unknown): string[] {
  if (typeof value !== 'string') return [];
  const parts = value.split(' ');
  return parts.includes('') ? parts.filter(Boolean) : parts;
}
const asList = (value: unknown): string[] => (Array.isArray(value) ? (value as string[]) : typeof value === 'string' ? [value] : []);

const isConstructable = (fn: unknown): fn is AdapterConstructor => typeof fn === 'function' && typeof fn.prototype === 'object' && fn.prototype !== null;

function restoreOriginal(payload: AdapterPayload, original: { readonly resource: unknown; readonly scope: unknown }): AdapterPayload {
  // a plain copy, not a rest pattern: V8 copies an object literal spread on a fast path
  const restored: Record<string, unknown> = { ...payload };
  if (original.resource === undefined) delete restored.resource;
  else restored.resource = original.resource;
  if (original.scope === undefined) delete restored.scope;
  else restored.scope = original.scope;
  return restored as AdapterPayload;
}

/** Records what this request's refresh token holds and, for an MRRT target, presents the target and policy scopes. */
function presentRefreshToken(payload: AdapterPayload | undefined | void, state: RequestState): AdapterPayload | undefined | void {
  if (!payload) return payload;
  const resources = asList(payload.resource);
  state.loaded = {
    original: { resource: payload.resource, scope: payload.scope },
    granted: resources.includes(state.target),
    grantId: typeof payload.grantId === 'string' ? payload.grantId : undefined,
    subject: typeof payload.accountId === 'string' ? payload.accountId : undefined,
  };
  if (!state.policyScopes) return payload;
  return {
    ...payload,
    resource: union(resources, [state.target]),
    scope: union(splitScope(payload.scope), state.policyScopes).join(' '),
  };
}

/** Presents the policy scopes for the target in this request's Grant (read after its refresh token). */
function presentGrant(payload: AdapterPayload | undefined | void, state: RequestState): AdapterPayload | undefined | void {
  if (!payload || !state.policyScopes) return payload;
  const resources = (payload.resources ?? {}) as Record<string, string>;
  state.grantedScope = resources[state.target];
  const scope = union(splitScope(resources[state.target]), state.policyScopes).join(' ');
  return { ...payload, resources: { ...resources, [state.target]: scope } };
}

/**
 * Wraps the deployment's adapter (a class, a factory or, when none is configured, {@link MemoryAdapter})
 * so that, during an MRRT exchange only, reads of that one refresh token and Grant carry the target
 * and policy scopes, the rotated refresh token is saved with the original resource and scope, a
 * Grant is never saved with the overlay, and a due refusal is raised before the token is consumed.
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

    // outside an MRRT exchange, and for every other record, a call goes straight to the deployment's
    // adapter; this request's refresh token and Grant get one `then` (no async function frame)
    find(id: string): Promise<AdapterPayload | undefined | void> {
      const state = stateOf();
      if (state) {
        if (this.#name === 'RefreshToken' && id === state.refreshTokenValue) {
          return Promise.resolve(this.#inner.find(id)).then((payload) => presentRefreshToken(payload, state));
        }
        if (this.#name === 'Grant' && state.policyScopes && id === state.loaded?.grantId) {
          return Promise.resolve(this.#inner.find(id)).then((payload) => presentGrant(payload, state));
        }
      }
      return this.#inner.find(id);
    }

    upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void | undefined> {
      const state = stateOf();
      const grantId = state?.policyScopes ? state.loaded?.grantId : undefined;
      if (grantId !== undefined && this.#name === 'Grant' && id === grantId) {
        throw new Error('oidc-provider-mrrt: refusing to persist a Grant while an MRRT overlay is applied');
      }
      if (grantId !== undefined && this.#name === 'RefreshToken' && payload.grantId === grantId) {
        payload = restoreOriginal(payload, state!.loaded!.original);
      }
      return this.#inner.upsert(id, payload, expiresIn);
    }

    consume(id: string): Promise<void | undefined> {
      const state = stateOf();
      if (state && this.#name === 'RefreshToken' && id === state.refreshTokenValue) state.checkpoint?.();
      return this.#inner.consume(id);
    }

    findByUid(uid: string): Promise<AdapterPayload | undefined | void> {
      return this.#inner.findByUid(uid);
    }

    findByUserCode(userCode: string): Promise<AdapterPayload | undefined | void> {
      return this.#inner.findByUserCode(userCode);
    }

    destroy(id: string): Promise<void | undefined> {
      return this.#inner.destroy(id);
    }

    revokeByGrantId(grantId: string): Promise<void | undefined> {
      return this.#inner.revokeByGrantId(grantId);
    }
  };
}
