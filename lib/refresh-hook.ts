import { errors, type KoaContextWithOIDC } from 'oidc-provider';

import { PolicyStoreError } from './errors.js';
import type { MrrtClient, MrrtConfiguration } from './options.js';
import { splitScope, type RequestState } from './overlay.js';
import { PolicyCache } from './policy-cache.js';
import type { PolicyRecord } from './store.js';

/** Scopes that belong to the OpenID layer and never go into an API access token for a policy-only target. */
const OIDC_SCOPES = new Set(['openid', 'offline_access']);

/** Why an MRRT exchange ended as it did (`MrrtExchangeEvent.reason`). */
export type MrrtReason =
  | 'policy'
  | 'multiple_targets'
  | 'not_first_party'
  | 'deny_listed'
  | 'no_policy'
  | 'not_in_policy'
  | 'unknown_resource'
  | 'consent_required'
  | 'scope_not_allowed'
  | 'empty_scope'
  | 'store_unavailable'
  | 'store_corrupt'
  | 'public_client_unprotected'
  | 'provider_check';

/**
 * Emitted on the provider as `mrrt.exchange` `(ctx, event)` for every refresh request that used or
 * was refused by MRRT. Never carries token values.
 */
export interface MrrtExchangeEvent {
  readonly outcome: 'issued' | 'refused';
  readonly reason: MrrtReason;
  /** The OAuth error returned, for refusals. */
  readonly error?: string;
  readonly clientId: string;
  readonly subject: string | undefined;
  readonly grantId: string | undefined;
  readonly requestedAudience: string;
  readonly resolvedAudience: string | undefined;
  readonly requestedScope: string | undefined;
  readonly grantedScope: string | undefined;
  /** Time the token endpoint spent on the request's grant handling, in milliseconds. */
  readonly durationMs: number;
}

type ResourceServerInfoFn = (ctx: KoaContextWithOIDC, resource: string, client: MrrtClient) => unknown;
type Handler = (ctx: KoaContextWithOIDC) => Promise<void>;

/** What the policy alone says about a target, before any token is read. */
type Plan =
  | { readonly kind: 'mrrt'; readonly policyScopes: readonly string[]; readonly defined: ReadonlySet<string> }
  | { readonly kind: 'refuse'; readonly error: () => Error; readonly reason: MrrtReason; readonly unlessGranted: boolean };

function readValues(value: unknown): string[] {
  if (value === undefined || value === null || value === '') return [];
  return Array.isArray(value) ? value.map(String) : [String(value)];
}

function storeFailure(err: unknown): { error: Error; reason: MrrtReason } {
  if (err instanceof PolicyStoreError && err.code === 'ERR_MRRT_STORE_CORRUPT') {
    const error = new errors.OIDCProviderError(500, 'server_error');
    Object.assign(error, { error_description: 'the MRRT policy of this client could not be read', expose: true });
    return { error, reason: 'store_corrupt' };
  }
  const error = new errors.TemporarilyUnavailable('the MRRT policy store is unavailable, try again later');
  Object.assign(error, { status: 503, statusCode: 503, expose: true });
  return { error, reason: 'store_unavailable' };
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new PolicyStoreError('ERR_MRRT_STORE_UNAVAILABLE', `policy store did not answer within ${ms}ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const REASON = Symbol('mrrt.reason');

/** The refusal of an MRRT exchange by a public client whose refresh token is neither rotated nor bound. */
export function unprotectedPublicClient(): Error {
  const error = new errors.InvalidTarget('MRRT for public clients requires refresh token rotation or a DPoP-bound refresh token');
  return Object.assign(error, { [REASON]: 'public_client_unprotected' as MrrtReason });
}

const describe = (values: readonly string[]): string => values.join(' ');

/** A refusal whose error object (with its stack trace) is built on first use. */
class LazyRefusal {
  readonly reason: string;
  readonly unlessGranted: boolean;
  #make: (() => Error) | undefined;
  #error: Error | undefined;

  constructor(make: () => Error, reason: string, unlessGranted: boolean) {
    this.#make = make;
    this.reason = reason;
    this.unlessGranted = unlessGranted;
  }

  get error(): Error {
    if (this.#error === undefined) {
      this.#error = this.#make!();
      this.#make = undefined;
    }
    return this.#error;
  }
}

/** What `await` would wait for: a promise or any thenable (object or function). */
const isPromise = (value: unknown): value is PromiseLike<unknown> => (
  value instanceof Promise
  || ((typeof value === 'object' || typeof value === 'function') && value !== null && typeof (value as PromiseLike<unknown>).then === 'function')
);

/**
 * Runs steps that yield values or promises: synchronously for as long as every yielded value is
 * ready, so that a plan made from cached answers costs no promise at all.
 */
function drive<T>(steps: Generator<unknown, T, unknown>, resume?: { readonly value: unknown } | { readonly error: unknown }): T | Promise<T> {
  let result = resume === undefined ? steps.next() : 'error' in resume ? steps.throw(resume.error) : steps.next(resume.value);
  while (!result.done) {
    const { value } = result;
    if (isPromise(value)) return Promise.resolve(value).then((ready) => drive(steps, { value: ready }), (error: unknown) => drive(steps, { error }));
    result = steps.next(value);
  }
  return result.value;
}

/** The refusal in force for this request: unconditional, or because the target is not in the refresh token. */
function activeRefusal(state: RequestState): RequestState['refusal'] {
  const { refusal } = state;
  if (!refusal) return undefined;
  if (!refusal.unlessGranted) return refusal;
  return state.loaded && !state.loaded.granted ? refusal : undefined;
}

/**
 * Wraps oidc-provider's built-in refresh_token handler with the MRRT decision (SPEC E1–E11).
 *
 * The plan is made from the authenticated client, the parameters and the policy. An MRRT target is
 * presented to the built-in handler through the adapter, in the refresh token and Grant it reads
 * itself; a refusal is raised once the built-in handler has run all of its own checks and before it
 * writes anything, so its errors win and a refused request never rotates anything.
 */
export function createRefreshHook(
  config: MrrtConfiguration,
  getResourceServerInfo: ResourceServerInfoFn | undefined,
  slot: symbol,
): (builtin: Handler) => Handler {
  const cache = config.cache === false ? undefined : new PolicyCache(config.store, config.cache);
  const lookup = (clientId: string): PolicyRecord | undefined | Promise<PolicyRecord | undefined> => {
    const hit = cache?.peek(clientId);
    if (hit) return hit.record;
    return withTimeout(cache ? cache.get(clientId) : config.store.get(clientId), config.storeTimeout);
  };
  // the event object is built only when someone listens
  const emit = (ctx: KoaContextWithOIDC, build: () => MrrtExchangeEvent): void => {
    if (ctx.oidc.provider.listenerCount('mrrt.exchange') !== 0) ctx.oidc.provider.emit('mrrt.exchange', ctx, build());
  };

  /** What the policy alone says about `target`; synchronous unless a store read or an option function is. */
  function* plan(ctx: KoaContextWithOIDC, target: string): Generator<unknown, Plan, unknown> {
    const client = ctx.oidc.client!;
    // the error is built only when the refusal is raised: most such plans end as plain refreshes
    const refuse = (reason: MrrtReason, description: string): Plan => (
      { kind: 'refuse', error: () => new errors.InvalidTarget(description), reason, unlessGranted: true }
    );
    if (!(yield config.isFirstParty(client))) return refuse('not_first_party', 'resource is not allowed: MRRT is available to first-party clients only');
    if (config.denyList.has(target)) return refuse('deny_listed', 'resource is not allowed for multi-resource refresh');

    let record: PolicyRecord | undefined;
    try {
      record = (yield lookup(client.clientId)) as PolicyRecord | undefined;
    } catch (err) {
      ctx.oidc.provider.emit('mrrt.store_error', ctx, err);
      const { error, reason } = storeFailure(err);
      return { kind: 'refuse', error: () => error, reason, unlessGranted: true };
    }
    const entry = record?.policies.find((candidate) => candidate.audience === target);
    if (!entry) return refuse(record ? 'not_in_policy' : 'no_policy', 'resource is not in the MRRT policy of this client');

    let info: { scope?: unknown; audience?: unknown };
    try {
      info = (yield getResourceServerInfo?.(ctx, target, client)) as typeof info;
      if (!info) throw new errors.InvalidTarget();
    } catch (err) {
      if (err instanceof errors.InvalidTarget) return refuse('unknown_resource', 'resource is not a known API');
      throw err;
    }
    if (typeof info.audience === 'string' && config.denyList.has(info.audience)) {
      return refuse('deny_listed', 'resource is not allowed for multi-resource refresh');
    }
    if (!(yield config.allowSkippingConsent(target, client))) {
      return refuse('consent_required', 'resource requires user consent and cannot be reached through MRRT');
    }
    return {
      kind: 'mrrt',
      policyScopes: entry.scope.filter((scope) => !OIDC_SCOPES.has(scope)),
      defined: new Set(splitScope(info.scope)),
    };
  }

  /** Raised before oidc-provider writes anything: a refusal in force, or no API scope left (E5). */
  function checkpoint(ctx: KoaContextWithOIDC, state: RequestState): void {
    if (state.raised) throw state.raised.error;
    const refusal = activeRefusal(state);
    if (refusal) {
      state.raised = { error: refusal.error, reason: refusal.reason };
      throw refusal.error;
    }
    const { loaded, policyScopes, defined, target } = state;
    if (!policyScopes || !defined || !loaded || loaded.granted || state.cleared) return;
    const grant = ctx.oidc.entities.Grant;
    const refreshToken = ctx.oidc.entities.RefreshToken;
    if (!grant || !refreshToken) return;
    const requested = ctx.oidc.params?.scope ? [...ctx.oidc.requestParamScopes] : undefined;
    const candidates = (requested ?? [...refreshToken.scopes]).filter((scope) => defined.has(scope));
    if (grant.getResourceScopeFiltered(target, candidates) === '') {
      const scope = requested ? describe(requested) : (undefined as unknown as string);
      const error = new errors.InvalidScope(`no requested scope is available for ${target}`, scope);
      state.raised = { error, reason: 'empty_scope' };
      throw error;
    }
    state.cleared = true;
  }

  return (builtin) => function mrrtRefreshTokenHandler(ctx) {
    try {
      const started = performance.now();
      const params = ctx.oidc.params!;
      const resources = readValues(params.resource);
      const audiences = readValues(params.audience);
      if (resources.length === 0 && audiences.length === 0) return builtin(ctx);
      let targets = resources.length !== 0 ? resources : audiences;
      if (resources.length === 1 && audiences.length === 1) {
        if (resources[0] !== audiences[0]) throw new errors.InvalidRequest('"audience" and "resource" must have the same value when both are sent');
      } else if (resources.length !== 0 && audiences.length !== 0) {
        targets = [...resources, ...audiences];
      }
      if (resources.length === 0) params.resource = audiences.length === 1 ? audiences[0] : audiences;
      const value = params.refresh_token;
      if (typeof value !== 'string' || value.length === 0) return builtin(ctx);

      const target = targets[0]!;
      if (targets.length !== 1) {
        const error = (): Error => new errors.InvalidTarget('only one resource (audience) may be requested per access token');
        return exchange(ctx, builtin, { kind: 'refuse', error, reason: 'multiple_targets', unlessGranted: false }, value, targets, started);
      }
      const decided = drive(plan(ctx, target));
      return decided instanceof Promise
        ? decided.then((ready) => exchange(ctx, builtin, ready, value, targets, started))
        : exchange(ctx, builtin, decided, value, targets, started);
    } catch (err) {
      return Promise.reject(err);
    }
  };

  /** Runs oidc-provider's handler with the plan in force for this request, and reports the outcome. */
  async function exchange(ctx: KoaContextWithOIDC, builtin: Handler, decided: Plan, value: string, targets: readonly string[], started: number): Promise<void> {
    const target = targets[0]!;
    const params = ctx.oidc.params!;
    const state: RequestState = decided.kind === 'mrrt'
      ? { refreshTokenValue: value, target, policyScopes: decided.policyScopes, defined: decided.defined }
      : { refreshTokenValue: value, target, refusal: new LazyRefusal(decided.error, decided.reason, decided.unlessGranted) };
    state.checkpoint = () => checkpoint(ctx, state);
    // a property of the request's own context, not a WeakMap entry: nothing for the GC to trace;
    // not enumerable, so spreading or copying the context never carries it along
    const holder = ctx as unknown as Record<symbol, RequestState | undefined>;
    Object.defineProperty(holder, slot, { value: state, writable: true, configurable: true, enumerable: false });

    const client = ctx.oidc.client!;
    const event = (outcome: MrrtExchangeEvent['outcome'], reason: MrrtReason, extra: Partial<MrrtExchangeEvent>): MrrtExchangeEvent => ({
      outcome,
      reason,
      clientId: client.clientId,
      subject: state.loaded?.subject,
      grantId: state.loaded?.grantId,
      requestedAudience: describe(targets),
      resolvedAudience: undefined,
      requestedScope: typeof params.scope === 'string' ? params.scope : undefined,
      grantedScope: undefined,
      durationMs: performance.now() - started,
      ...extra,
    });

    try {
      await builtin(ctx);
    } catch (err) {
      // a withdrawn overlay is served as without MRRT: oidc-provider's own error, no MRRT event
      if (state.withdrawn) throw err;
      const { raised } = state;
      if (raised && err === raised.error) {
        emit(ctx, () => event('refused', raised.reason as MrrtReason, { error: (err as { error?: string }).error }));
        throw err;
      }
      const refusal = activeRefusal(state);
      if (refusal && (err instanceof errors.InvalidTarget || err instanceof errors.InvalidScope)) {
        // oidc-provider's own checks passed and it stopped at the target or scope: report the MRRT reason
        emit(ctx, () => event('refused', refusal.reason as MrrtReason, { error: (refusal.error as { error?: string }).error }));
        throw refusal.error;
      }
      if (state.policyScopes && state.loaded && err instanceof errors.InvalidScope) {
        // oidc-provider checked the scope parameter against the refresh token plus the policy (E4)
        const missing = splitScope((err as { scope?: unknown }).scope);
        const description = `requested scope${missing.length === 1 ? ' is' : 's are'} not allowed for ${target}`;
        const error = new errors.InvalidScope(description, describe(missing));
        emit(ctx, () => event('refused', 'scope_not_allowed', { error: 'invalid_scope' }));
        throw error;
      }
      if (state.loaded && (state.policyScopes || refusal)) {
        const reason = (err as { [REASON]?: MrrtReason })[REASON] ?? 'provider_check';
        emit(ctx, () => event('refused', reason, { error: (err as { error?: string }).error ?? 'server_error' }));
      }
      throw err;
    } finally {
      holder[slot] = undefined;
    }

    const refusal = activeRefusal(state);
    if (refusal) {
      // unreachable by construction: a refused target is never one oidc-provider would issue for
      ctx.body = undefined;
      throw refusal.error;
    }
    if (!state.policyScopes || !state.loaded || state.withdrawn) return;
    const body = ctx.body as Record<string, unknown>;
    body.resource = target;
    emit(ctx, () => event('issued', 'policy', {
      resolvedAudience: target,
      grantedScope: typeof body.scope === 'string' ? body.scope : undefined,
    }));
  }
}
