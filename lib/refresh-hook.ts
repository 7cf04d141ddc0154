import { errors, type KoaContextWithOIDC } from 'oidc-provider';

import { PolicyStoreError } from './errors.js';
import type { MrrtClient, MrrtConfiguration } from './options.js';
import { splitScope, union, type Overlay, type RequestState } from './overlay.js';
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

interface Subject {
  readonly subject: string | undefined;
  readonly grantId: string | undefined;
}
interface Refusal extends Subject {
  readonly kind: 'refuse';
  readonly error: Error;
  readonly reason: MrrtReason;
  readonly refreshTokenId: string;
}
type Decision =
  | { readonly kind: 'pass' }
  | Refusal
  | (Subject & { readonly kind: 'overlay'; readonly overlay: Overlay });

const PASS: Decision = Object.freeze({ kind: 'pass' });

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

/**
 * Wraps oidc-provider's built-in refresh_token handler with the MRRT decision (SPEC E1–E11).
 *
 * The decision runs with the authenticated client and parsed parameters. An allowed MRRT target
 * becomes a request-scoped overlay that the built-in handler sees through the adapter; a refusal
 * is raised once the built-in handler has run all of its own checks and before it consumes the
 * refresh token, so its errors win and a refused request never rotates anything.
 */
export function createRefreshHook(
  config: MrrtConfiguration,
  getResourceServerInfo: ResourceServerInfoFn | undefined,
  requestState: WeakMap<object, RequestState>,
): (builtin: Handler) => Handler {
  const cache = config.cache === false ? undefined : new PolicyCache(config.store, config.cache);
  const lookup = (clientId: string): Promise<PolicyRecord | undefined> => (cache ? cache.get(clientId) : config.store.get(clientId));
  const emit = (ctx: KoaContextWithOIDC, event: MrrtExchangeEvent): void => {
    ctx.oidc.provider.emit('mrrt.exchange', ctx, event);
  };

  async function decide(ctx: KoaContextWithOIDC, targets: readonly string[]): Promise<Decision> {
    const { provider } = ctx.oidc;
    const params = ctx.oidc.params!;
    const client = ctx.oidc.client!;
    const value = params.refresh_token;
    if (typeof value !== 'string' || value.length === 0) return PASS;

    const refreshToken = await provider.RefreshToken.find(value, { ignoreExpiration: true }).catch(() => undefined);
    // oidc-provider rejects these itself before it rotates anything (and revokes the grant on reuse)
    if (!refreshToken || refreshToken.clientId !== client.clientId || refreshToken.isExpired || refreshToken.consumed) return PASS;

    const refreshTokenId = refreshToken.jti;
    const who: Subject = { subject: refreshToken.accountId, grantId: refreshToken.grantId };
    const refuse = (error: Error, reason: MrrtReason): Refusal => ({ kind: 'refuse', error, reason, refreshTokenId, ...who });
    if (targets.length !== 1) {
      return refuse(new errors.InvalidTarget('only one resource (audience) may be requested per access token'), 'multiple_targets');
    }

    const target = targets[0]!;
    const granted = refreshToken.resourceIndicators.has(target);
    const notAllowed = (reason: MrrtReason, description: string): Decision => (
      granted ? PASS : refuse(new errors.InvalidTarget(description), reason)
    );

    if (!(await config.isFirstParty(client))) return notAllowed('not_first_party', 'resource is not allowed: MRRT is available to first-party clients only');
    if (config.denyList.has(target)) return notAllowed('deny_listed', 'resource is not allowed for multi-resource refresh');

    let record;
    try {
      record = await withTimeout(lookup(client.clientId), config.storeTimeout);
    } catch (err) {
      provider.emit('mrrt.store_error', ctx, err);
      if (granted) return PASS;
      const { error, reason } = storeFailure(err);
      return refuse(error, reason);
    }
    const entry = record?.policies.find((candidate) => candidate.audience === target);
    if (!entry) return notAllowed(record ? 'not_in_policy' : 'no_policy', 'resource is not in the MRRT policy of this client');

    let info: { scope?: unknown; audience?: unknown };
    try {
      info = (await getResourceServerInfo?.(ctx, target, client)) as typeof info;
      if (!info) throw new errors.InvalidTarget();
    } catch (err) {
      if (err instanceof errors.InvalidTarget) return notAllowed('unknown_resource', 'resource is not a known API');
      throw err;
    }
    if (typeof info.audience === 'string' && config.denyList.has(info.audience)) {
      return notAllowed('deny_listed', 'resource is not allowed for multi-resource refresh');
    }
    if (!(await config.allowSkippingConsent(target, client))) {
      return notAllowed('consent_required', 'resource requires user consent and cannot be reached through MRRT');
    }

    const policyScopes = entry.scope.filter((scope) => !OIDC_SCOPES.has(scope));
    const requested = params.scope ? [...ctx.oidc.requestParamScopes] : undefined;
    if (requested) {
      const policySet = new Set(policyScopes);
      const missing = requested.filter((scope) => !refreshToken.scopes.has(scope) && !policySet.has(scope));
      if (missing.length !== 0) {
        const description = `requested scope${missing.length === 1 ? ' is' : 's are'} not allowed for ${target}`;
        return refuse(new errors.InvalidScope(description, describe(missing)), 'scope_not_allowed');
      }
    }

    const grant = refreshToken.grantId === undefined
      ? undefined
      : await provider.Grant.find(refreshToken.grantId, { ignoreExpiration: true }).catch(() => undefined);
    // oidc-provider rejects a missing, expired or foreign grant itself, before rotation
    if (!grant || grant.clientId !== client.clientId || grant.isExpired) return PASS;

    // compute the access token's scope exactly as oidc-provider will, on an in-memory copy
    const defined = new Set(splitScope(info.scope));
    const candidates = (requested ?? union(refreshToken.scopes, policyScopes)).filter((scope) => defined.has(scope));
    const resources = { ...(grant.resources ?? {}) };
    const grantedScope = resources[target];
    resources[target] = union(splitScope(grantedScope), policyScopes).join(' ');
    grant.resources = resources;
    if (!granted && grant.getResourceScopeFiltered(target, candidates) === '') {
      const scope = requested ? describe(requested) : (undefined as unknown as string);
      return refuse(new errors.InvalidScope(`no requested scope is available for ${target}`, scope), 'empty_scope');
    }

    return {
      kind: 'overlay',
      ...who,
      overlay: Object.freeze({
        refreshTokenId,
        grantId: refreshToken.grantId!,
        target,
        policyScopes: Object.freeze(policyScopes),
        original: Object.freeze({ resource: refreshToken.resource, scope: refreshToken.scope }),
        granted,
        grantedScope,
      }),
    };
  }

  return (builtin) => async function mrrtRefreshTokenHandler(ctx) {
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
    const requestedAudience = describe(targets);

    const decision = await decide(ctx, targets);
    if (decision.kind === 'pass') return builtin(ctx);

    const client = ctx.oidc.client!;
    const base = {
      get durationMs() { return performance.now() - started; },
      clientId: client.clientId,
      requestedAudience,
      requestedScope: typeof params.scope === 'string' ? params.scope : undefined,
    };
    const state: RequestState = decision.kind === 'overlay'
      ? { overlay: decision.overlay }
      : { refusal: { refreshTokenId: decision.refreshTokenId, error: decision.error } };
    requestState.set(ctx, state);

    const refused = (reason: MrrtReason, error: unknown): MrrtExchangeEvent => ({
      ...base,
      outcome: 'refused',
      reason,
      error: (error as { error?: string }).error ?? 'server_error',
      subject: decision.subject,
      grantId: decision.grantId,
      resolvedAudience: undefined,
      grantedScope: undefined,
    });

    try {
      await builtin(ctx);
    } catch (err) {
      // a withdrawn overlay is served as without MRRT: oidc-provider's own error, no MRRT event
      if (state.withdrawn) throw err;
      if (decision.kind === 'refuse' && (err === decision.error || err instanceof errors.InvalidTarget || err instanceof errors.InvalidScope)) {
        // oidc-provider's own checks passed and it stopped at the target or scope: report the MRRT reason
        emit(ctx, refused(decision.reason, decision.error));
        throw decision.error;
      }
      emit(ctx, refused((err as { [REASON]?: MrrtReason })[REASON] ?? 'provider_check', err));
      throw err;
    } finally {
      requestState.delete(ctx);
    }

    if (decision.kind === 'refuse') {
      // unreachable by construction: a refused target is never one oidc-provider would issue for
      ctx.body = undefined;
      throw decision.error;
    }

    if (state.withdrawn) return;
    const body = ctx.body as Record<string, unknown>;
    body.resource = decision.overlay.target;
    emit(ctx, {
      ...base,
      outcome: 'issued',
      reason: 'policy',
      subject: decision.subject,
      grantId: decision.grantId,
      resolvedAudience: decision.overlay.target,
      grantedScope: typeof body.scope === 'string' ? body.scope : undefined,
    });
  };
}
