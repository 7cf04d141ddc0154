import { errors, type KoaContextWithOIDC } from 'oidc-provider';

import { PolicyStoreError } from './errors.js';
import type { MrrtClient, MrrtConfiguration } from './options.js';
import { PolicyCache } from './policy-cache.js';
import {
  TARGET_REFUSALS,
  askResourceServer,
  consentRefusal,
  definedScopes,
  denyListRefusal,
  firstPartyRefusal,
  hasFixedAnswers,
  isThenable,
  isWellFormedAnswer,
  policyScopes,
  resourceServerRefusal,
  splitScope,
  union,
  type MrrtReason,
  type ResourceServerAnswer,
  type TargetRefusal,
} from './rules.js';
import type { PolicyRecord } from './store.js';
import { policyReader } from './stores/reader.js';
import type { PolicyEntry } from './policy.js';

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

/** The deployment's `getResourceServerInfo`, as oidc-provider calls it. */
export type ResourceServerInfo = (ctx: KoaContextWithOIDC, resource: string, client: MrrtClient) => unknown;

/** What one provider instance tells the exchanges it runs. */
export interface ExchangeSetup {
  readonly config: MrrtConfiguration;
  readonly isFirstParty: (client: MrrtClient) => unknown;
  readonly getResourceServerInfo: ResourceServerInfo | undefined;
  /** The provider's OpenID scopes: never given to an API token through a policy. */
  readonly oidcScopes: ReadonlySet<string>;
}

type Handler = (ctx: KoaContextWithOIDC) => Promise<void>;

/** What the policy says of the target before any token is read. */
type Plan = { readonly kind: 'policy'; readonly policyScopes: readonly string[] } | Refusal;

/** A refusal decided before any token is read; `unlessGranted`: void when the refresh token holds the target. */
interface Refusal {
  readonly kind: 'refusal';
  readonly reason: RefusalReason;
  readonly unlessGranted: boolean;
}

type RefusalReason = TargetRefusal | 'store_unavailable' | 'store_corrupt' | 'check_unavailable';

/** The deployment's answer for the target that the rules held, or a promise of it when the deployment answers with one. */
type Settled = ResourceServerAnswer | undefined | Promise<ResourceServerAnswer | undefined>;

/** What this request's refresh token holds, as stored. */
interface Held {
  readonly grantId: string | undefined;
  readonly subject: string | undefined;
  readonly scope: string | undefined;
  readonly granted: boolean;
}

/** The parts of oidc-provider's models an exchange reads. */
interface RefreshTokenLike {
  readonly grantId?: string;
  readonly accountId?: string;
  readonly resource?: string | string[];
  readonly scope?: string;
  readonly clientId?: string;
  readonly jkt?: string;
  readonly 'x5t#S256'?: string;
}
interface GrantLike {
  readonly jti?: string;
  readonly rejected?: { readonly openid?: { readonly scope?: string }; readonly resources?: Record<string, string | undefined> };
}

function refusalError(reason: RefusalReason): Error {
  if (reason === 'store_corrupt') {
    const error = new errors.OIDCProviderError(500, 'server_error');
    return Object.assign(error, { error_description: 'the MRRT policy of this client could not be read', expose: true });
  }
  if (reason === 'store_unavailable' || reason === 'check_unavailable') {
    const what = reason === 'store_unavailable' ? 'the MRRT policy store is unavailable' : 'the MRRT client checks could not be completed';
    const error = new errors.TemporarilyUnavailable(`${what}, try again later`);
    return Object.assign(error, { status: 503, statusCode: 503, expose: true });
  }
  return new errors.InvalidTarget(TARGET_REFUSALS[reason]);
}

const NOTHING_REJECTED: ReadonlySet<string> = new Set();

/** Every scope the user rejected in the Grant, for the OpenID layer or any API (SPEC E13). */
function rejectedScopes(grant: GrantLike): ReadonlySet<string> {
  // most Grants hold no rejection: nothing is built for them
  if (grant.rejected === undefined) return NOTHING_REJECTED;
  const rejected = new Set(splitScope(grant.rejected.openid?.scope));
  for (const scope of Object.values(grant.rejected.resources ?? {})) for (const value of splitScope(scope)) rejected.add(value);
  return rejected;
}

/** Whether a refresh token holds `target` among its resources, as stored. */
function holds(token: RefreshTokenLike, target: string): boolean {
  const { resource } = token;
  return Array.isArray(resource) ? resource.includes(target) : resource === target;
}

/** The entry of a client's policy for `target`, if it has one. */
function policyEntry(record: PolicyRecord | undefined, target: string): PolicyEntry | undefined {
  if (record) for (const entry of record.policies) if (entry.audience === target) return entry;
  return undefined;
}

/**
 * oidc-provider asks `rotateRefreshToken` on a request that has no exchange installed: one without
 * a target, or one whose target is outside the client's cached policy, which the handler hands to
 * oidc-provider as it is (see {@link createExchangeHandler}). Such a target is served only when the
 * refresh token holds it (SPEC E3); when it does not, the request stops here, before the token is
 * consumed (SPEC E6), and the handler answers with the reason.
 */
export function rotationAskedOutsidePolicy(ctx: KoaContextWithOIDC): void {
  const target: unknown = ctx.oidc.params?.resource;
  const token = ctx.oidc.entities.RefreshToken as RefreshTokenLike | undefined;
  if (typeof target === 'string' && token && !holds(token, target)) throw new errors.InvalidTarget();
}

/**
 * One MRRT exchange: the state of one token request, with a transition for each thing the
 * request's observers report (see `observers.ts`). The overlay it presents — the target among the
 * refresh token's resources, the policy scopes among its scopes and in the Grant — exists only in
 * what oidc-provider reads during this request; nothing a model stores ever carries it.
 */
export class Exchange {
  readonly target: string;
  readonly targets: readonly string[];
  readonly refreshTokenValue: string;
  readonly plan: Plan;
  readonly started: number;
  /** The `scope` parameter as the client sent it. */
  readonly requestedScope: string | undefined;
  /**
   * Whether this exchange needs the watched models: a policy's overlay does; a refusal only to learn
   * of the refresh token before oidc-provider checks the `scope` parameter (the refusal answers
   * first), otherwise it is checked at `rotateRefreshToken` (the provider may still hand them out,
   * see `provider.ts`).
   */
  readonly watchesModels: boolean;
  #held: Held | undefined;
  /** Set once the rules have run against the answer issuance uses: that answer, or the rules' error. */
  #settled: { readonly answer: Settled } | { readonly error: unknown } | undefined;
  #withdrawn = false;
  #ended = false;
  #muted = false;
  #nothingAvailable = false;
  #raised: { readonly error: Error; readonly reason: MrrtReason } | undefined;
  #heldScopes: ReadonlySet<string> | undefined;
  readonly #setup: ExchangeSetup;
  readonly #setExchange: (ctx: KoaContextWithOIDC, exchange: undefined) => void;

  /**
   * `ctx`: the request's context. `setExchange(ctx, undefined)` takes the exchange off the request:
   * what oidc-provider does next is a plain refresh.
   */
  constructor(
    readonly ctx: KoaContextWithOIDC,
    setup: ExchangeSetup,
    request: { readonly targets: readonly string[]; readonly refreshTokenValue: string; readonly requestedScope: string | undefined; readonly started: number },
    plan: Plan,
    setExchange: (ctx: KoaContextWithOIDC, exchange: undefined) => void,
  ) {
    const { targets, refreshTokenValue, requestedScope, started } = request;
    this.#setup = setup;
    this.#setExchange = setExchange;
    this.requestedScope = requestedScope;
    this.targets = targets;
    this.target = targets[0]!;
    this.refreshTokenValue = refreshTokenValue;
    this.plan = plan;
    this.started = started;
    this.watchesModels = plan.kind === 'policy' || Boolean(requestedScope);
  }

  get held(): Held | undefined {
    return this.#held;
  }

  /** The scopes of this request's refresh token, as stored. */
  get heldScopes(): ReadonlySet<string> {
    this.#heldScopes ??= new Set(splitScope(this.#held?.scope));
    return this.#heldScopes;
  }

  get raised(): { readonly error: Error; readonly reason: MrrtReason } | undefined {
    return this.#raised;
  }

  /** The overlay was taken back: the request is served exactly as without MRRT. */
  get withdrawn(): boolean {
    return this.#withdrawn;
  }

  /** Whether this request presents its overlay in an object holding `grantId` (its refresh token, the rotation, the Grant). */
  #presents(token: { readonly grantId?: string }): boolean {
    const grantId = this.#held?.grantId;
    return this.plan.kind === 'policy' && !this.#withdrawn && !this.#ended && !this.#muted && grantId !== undefined && token.grantId === grantId;
  }

  /** The refusal in force: unconditional, or because the target is not among the refresh token's resources. */
  activeRefusal(): Refusal | undefined {
    const { plan } = this;
    if (plan.kind !== 'refusal') return undefined;
    if (!plan.unlessGranted) return plan;
    return this.#held && !this.#held.granted ? plan : undefined;
  }

  // --- transitions, one for each observation ---

  /**
   * oidc-provider found a refresh token (and has not checked the `scope` parameter yet), seen
   * through the watched models (see {@link watchesModels}).
   */
  sawRefreshToken(value: string, token: RefreshTokenLike): void {
    // another client's refresh token is oidc-provider's to refuse (client mismatch); the exchange never holds it
    if (value !== this.refreshTokenValue || this.#held || token.clientId !== this.ctx.oidc.client?.clientId) return;
    const held = this.#hold(token);
    // a refusal that only applies outside the grant, for a target the refresh token holds: nothing left to do
    if (this.plan.kind === 'refusal' && this.plan.unlessGranted && held.granted) this.#setExchange(this.ctx, undefined);
    else if (this.#setup.config.profile === 'auth0' && this.plan.kind === 'policy') this.#dropUnavailableScopes(this.plan.policyScopes);
  }

  #hold(token: RefreshTokenLike): Held {
    this.#held = { grantId: token.grantId, subject: token.accountId, scope: token.scope, granted: holds(token, this.target) };
    return this.#held;
  }

  /**
   * Runs `model.emit(eventName)` with the overlay off: what the deployment's event listeners read is
   * what is stored.
   */
  withoutOverlay(emit: (this: object, eventName: string) => void, model: object, eventName: string): void {
    const muted = this.#muted;
    this.#muted = true;
    try {
      emit.call(model, eventName);
    } finally {
      this.#muted = muted;
    }
  }

  /**
   * oidc-provider's handler returned or threw: the exchange leaves the request, and whatever reads
   * this request's objects from now on sees what they hold.
   */
  end(): void {
    this.#setExchange(this.ctx, undefined);
    this.#ended = true;
  }

  /** A policy's token was issued: the response names its audience, and the exchange is reported. */
  issued(): void {
    const held = this.#held;
    if (this.plan.kind !== 'policy' || !held || this.#withdrawn) return;
    const { ctx } = this;
    const body = ctx.body as Record<string, unknown>;
    body.resource = this.target;
    const tokenScope = typeof body.scope === 'string' ? body.scope : undefined;
    if (this.#setup.config.profile === 'auth0' && ctx.oidc.params!.scope) {
      // Auth0 answers with the requested OpenID scopes too; the access token's own `scope` claim keeps API scopes only
      const scopes = this.heldScopes;
      const oidc = [...ctx.oidc.requestParamOIDCScopes].filter((scope) => scopes.has(scope));
      body.scope = union(splitScope(body.scope), oidc).join(' ');
    }
    // the event reports what the access token grants, whatever the response's profile adds
    emit(ctx, this, 'issued', 'policy', { resolvedAudience: this.target, grantedScope: tokenScope });
  }

  /**
   * SPEC E14: with Auth0's wire semantics a requested scope that neither the refresh token nor the
   * policy entry holds is dropped rather than refused. When nothing would remain the parameter is
   * left as sent, so the scope check refuses it (reported as `empty_scope`).
   */
  #dropUnavailableScopes(policy: readonly string[]): void {
    const { oidc } = this.ctx;
    const params = oidc.params;
    if (!params?.scope) return;
    const requested = [...oidc.requestParamScopes];
    const held = this.heldScopes;
    const available = requested.filter((scope) => held.has(scope) || policy.includes(scope));
    if (available.length === requested.length) return;
    if (available.length === 0) {
      this.#nothingAvailable = true;
      return;
    }
    params.scope = available.join(' ');
  }

  /** With Auth0's wire semantics, every requested scope was unavailable. */
  get nothingAvailable(): boolean {
    return this.#nothingAvailable;
  }

  /** A refresh token's `scopes`, as this request presents them. */
  presentScopes(token: RefreshTokenLike, scopes: Set<string>): Set<string> {
    if (!this.#presents(token)) return scopes;
    const presented = new Set(scopes);
    for (const scope of (this.plan as Plan & { kind: 'policy' }).policyScopes) presented.add(scope);
    return presented;
  }

  /** A refresh token's `resourceIndicators`, as this request presents them. */
  presentResources(token: RefreshTokenLike, resources: Set<string>): Set<string> {
    return this.#presents(token) ? new Set(resources).add(this.target) : resources;
  }

  /** The Grant's scope for `resource` filtered by `filter`, as this request presents it: the policy scopes the user never rejected join the target's. */
  presentGrantScope(grant: GrantLike, resource: string, filter: Iterable<string>, scope: string): string {
    if (resource !== this.target || !this.#presents({ grantId: grant.jti })) return scope;
    const wanted = new Set(filter);
    const rejected = rejectedScopes(grant);
    const added: string[] = [];
    for (const value of (this.plan as Plan & { kind: 'policy' }).policyScopes) if (wanted.has(value) && !rejected.has(value)) added.push(value);
    return added.length === 0 ? scope : union(splitScope(scope), added).join(' ');
  }

  /**
   * oidc-provider is about to consume (rotate) this request's refresh token: the last moment to
   * refuse without loss. A promise only when the deployment's `getResourceServerInfo` answers with one.
   */
  beforeRotation(token: RefreshTokenLike): PromiseLike<unknown> | undefined {
    if (token.grantId === undefined || token.grantId !== this.#held?.grantId) return undefined;
    const settled = this.#settle(true);
    return isThenable(settled) ? settled : undefined;
  }

  /**
   * oidc-provider has checked the refresh token (client, expiry, sender constraint, Grant, account,
   * reuse) and asks `rotateRefreshToken`, before it consumes the token: a refusal is raised here,
   * before anything is written (SPEC E6), unless it applies outside the grant only and the refresh
   * token holds the target. A policy's rules run at `consume`, once the deployment said to rotate.
   */
  rotationAsked(): void {
    const { plan } = this;
    if (plan.kind !== 'refusal') return;
    const held = this.#held ?? this.#heldEntity();
    if (!(plan.unlessGranted && held?.granted)) this.#raise(plan.reason);
  }

  /**
   * What the refresh token holds, for a refusal's exchange that watched no model and failed: known
   * once oidc-provider accepted the token (its entities are set); before that the request's error is
   * oidc-provider's own, and the token is not read again to find out whether MRRT was involved.
   */
  learnHeld(): void {
    if (!this.#held) this.#heldEntity();
  }

  #heldEntity(): Held | undefined {
    const token = this.ctx.oidc.entities.RefreshToken as RefreshTokenLike | undefined;
    return token && this.#hold(token);
  }

  /**
   * oidc-provider asks for the target's resource server to build the access token. Nothing is
   * written before this answer on a request without rotation; with rotation the rules ran before
   * the refresh token was consumed and this is the answer they were checked against (SPEC E12).
   */
  resourceServerInfo(resource: string, ask: () => unknown): unknown {
    const settled = this.#settle(false);
    if (isThenable(settled)) return settled.then((answer) => (resource === this.target && answer !== undefined ? answer : ask()));
    return resource === this.target && settled !== undefined ? settled : ask();
  }

  // --- the rules that need the refresh token, Grant and account loaded ---

  /** The rules, run once: their answer (a promise only when the deployment's is one) or their error, each time. */
  #settle(rotating: boolean): Settled {
    if (this.#settled === undefined) {
      try {
        if (this.#raised) throw this.#raised.error;
        let answer: Settled;
        const held = this.#held;
        if (this.plan.kind !== 'policy') {
          const refusal = this.activeRefusal();
          if (refusal) this.#raise(refusal.reason);
        } else if (held) {
          const { ctx } = this;
          const asked = askResourceServer(this.#setup.getResourceServerInfo, ctx, this.target, ctx.oidc.client!);
          answer = isThenable(asked) ? asked.then((settled) => this.#checkAnswer(held, rotating, settled)) : this.#checkAnswer(held, rotating, asked);
        }
        this.#settled = { answer };
      } catch (error) {
        this.#settled = { error };
      }
    }
    if ('error' in this.#settled) throw this.#settled.error;
    return this.#settled.answer;
  }

  /** The rules that read the deployment's answer for the target, in order (SPEC E12, E5, P4). */
  #checkAnswer(held: Held, rotating: boolean, answer: ResourceServerAnswer | undefined): ResourceServerAnswer | undefined {
    const { oidc } = this.ctx;
    const { config } = this.#setup;
    if (answer && !isWellFormedAnswer(answer)) {
      // the deployment's bug, reported as oidc-provider would, but before the refresh token is consumed
      const error = new errors.OIDCProviderError(500, 'server_error');
      this.#raise('provider_check', Object.assign(error, { error_description: 'the resource server configuration of this API is invalid' }));
    }
    const refused = resourceServerRefusal(config, answer);
    if (refused) return this.#refuseOrWithdraw(held, refused);

    // SPEC E5: a policy-only target needs at least one API scope, from the scopes the token would
    // get. The usual case is decided without presenting the scopes: a policy scope the API defines,
    // requested (when `scope` is sent) and never rejected by the user, is always in the token.
    if (!held.granted) {
      const defined = definedScopes(answer!);
      const requested = oidc.params?.scope ? oidc.requestParamScopes : undefined;
      const grant = oidc.entities.Grant!;
      const rejected = rejectedScopes(grant);
      let available = false;
      for (const scope of (this.plan as Plan & { kind: 'policy' }).policyScopes) {
        if (defined.has(scope) && (requested === undefined || requested.has(scope)) && !rejected.has(scope)) {
          available = true;
          break;
        }
      }
      // otherwise the Grant decides, as it will for the token; oidc-provider set both entities
      // before it resolves the account, the earliest point this runs at
      if (!available) {
        const candidates = [...(requested ?? oidc.entities.RefreshToken!.scopes)].filter((scope) => defined.has(scope));
        if (grant.getResourceScopeFiltered(this.target, candidates) === '') {
          const sent = requested && [...requested].join(' ');
          this.#raise('empty_scope', new errors.InvalidScope(`no requested scope is available for ${this.target}`, sent as string));
        }
      }
    }

    // RFC 9700 §2.2.2 for an exchange (SPEC P4): a public client's refresh token must be rotated or
    // sender-constrained, unless the deployment allows any public client
    if (rotating || config.publicClients === 'any' || oidc.client?.clientAuthMethod !== 'none') return answer;
    const { RefreshToken: token, RotatedRefreshToken: rotated } = oidc.entities;
    if (rotated === undefined && !token?.jkt && !token?.['x5t#S256']) return this.#refuseOrWithdraw(held, 'public_client_unprotected');
    return answer;
  }

  /** A rule that failed for the target: a refusal, or for a target the refresh token holds, a refresh as without MRRT. */
  #refuseOrWithdraw(held: Held, reason: TargetRefusal): undefined {
    if (!held.granted) this.#raise(reason);
    this.#withdraw();
    return undefined;
  }

  /** Refuses the exchange: an MRRT rule's reason, with the error built for it unless one is given. */
  #raise(reason: RefusalReason | 'empty_scope' | 'provider_check', error: Error = refusalError(reason as RefusalReason)): never {
    this.#raised = { error, reason };
    throw error;
  }

  /**
   * Serves a granted target as without MRRT: the scope parameter as the client sent it (the Auth0
   * profile may have dropped some), checked against the refresh token alone as oidc-provider does.
   */
  #withdraw(): void {
    this.#withdrawn = true;
    if (this.requestedScope === undefined) return;
    this.ctx.oidc.params!.scope = this.requestedScope;
    const held = this.heldScopes;
    const missing = splitScope(this.requestedScope).filter((scope) => !held.has(scope));
    if (missing.length !== 0) {
      throw new errors.InvalidScope(`refresh token missing requested scope${missing.length === 1 ? '' : 's'}`, missing.join(' '));
    }
  }
}

/** A refusal decided before any token is read, void when the refresh token holds the target. */
function refusalPlan(reason: RefusalReason): Refusal {
  return { kind: 'refusal', reason, unlessGranted: true };
}

/**
 * The targets a refresh request names: `resource`, and Auth0's `audience`, which names the same
 * thing. oidc-provider resolves the target from `resource`, so `audience` sent alone becomes it.
 * Both sent with one value each must agree.
 */
function requestedTargets(params: Record<string, unknown>): string[] {
  const { resource, audience } = params;
  // the usual request, one `resource`, without the arrays of the general case
  if (audience === undefined && typeof resource === 'string' && resource !== '') return [resource];
  const resources = readValues(resource);
  const audiences = readValues(audience);
  if (resources.length === 1 && audiences.length === 1 && resources[0] !== audiences[0]) {
    throw new errors.InvalidRequest('"audience" and "resource" must have the same value when both are sent');
  }
  if (resources.length === 0) {
    if (audiences.length !== 0) params.resource = audiences.length === 1 ? audiences[0] : audiences;
    return audiences;
  }
  return audiences.length === 0 || (resources.length === 1 && audiences.length === 1) ? resources : [...resources, ...audiences];
}

function readValues(value: unknown): string[] {
  if (value === undefined || value === null || value === '') return [];
  return Array.isArray(value) ? value.map(String) : [String(value)];
}

function withTimeout<T>(promise: Promise<T>, ms: number, timedOut: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timedOut()), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The MRRT refresh_token handler of one provider (SPEC E1–E14): decides from the parameters, the
 * client and the policy; runs oidc-provider's own handler with the exchange installed on the
 * request, so that every check of oidc-provider runs and wins and a refusal is raised before
 * anything is written; reports the outcome.
 *
 * `rotationObserved`: oidc-provider surely asks the observed `rotateRefreshToken` (see
 * `provider.ts`). A target outside the client's cached policy is then handed to oidc-provider with
 * nothing installed and nothing decided, the way most refreshes of a deployment go: only when the
 * refresh token turns out not to hold it is the refusal decided, at {@link rotationAskedOutsidePolicy}
 * or from oidc-provider's own error.
 */
export function createExchangeHandler(
  setup: ExchangeSetup,
  install: (ctx: KoaContextWithOIDC, exchange: Exchange | undefined) => void,
  { rotationObserved }: { readonly rotationObserved: boolean },
): (builtin: Handler) => Handler {
  const { config } = setup;
  const store = policyReader(config.store);
  const cache = config.cache === false ? undefined : new PolicyCache(store, { ...config.cache, readTimeout: config.storeTimeout });
  // a cached policy is used as it is, without a promise; anything else is read, bounded by storeTimeout
  const lookup = (clientId: string): PolicyRecord | undefined | Promise<PolicyRecord | undefined> => {
    const hit = cache?.peek(clientId);
    if (hit) return hit.record;
    return cache
      ? cache.get(clientId)
      : withTimeout(
          store.get(clientId),
          config.storeTimeout,
          () => new PolicyStoreError('ERR_MRRT_STORE_UNAVAILABLE', `policy store did not answer within ${config.storeTimeout}ms`),
        );
  };
  /**
   * The answer of one of the operator's client checks: `isFirstParty(client)`, or with a target
   * `allowSkippingConsent(target, client)`. They may ask a database. The documented answer, a
   * boolean, is used at once; anything else (a promise, any thenable, whatever a cache hands back)
   * becomes a promise of what `await` would make of it, for at most storeTimeout, so that the
   * caller never touches the operator's object; any failure (a throw, a `then` that cannot be read,
   * a rejection, no answer in time) is a rejected promise, which refuses only what needs the answer
   * (checkFailed; a granted target is still served).
   */
  const askCheck = (client: MrrtClient, target?: string): boolean | Promise<unknown> => {
    try {
      const answer = target === undefined ? setup.isFirstParty(client) : config.allowSkippingConsent(target, client);
      if (typeof answer === 'boolean') return answer;
      const settled = Promise.resolve().then(() => answer);
      return withTimeout(settled, config.storeTimeout, () => new Error(`MRRT client checks did not answer within ${config.storeTimeout}ms`));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  };
  // a policy entry's plan, once per entry: cached records (and their entries) are immutable and shared
  const plans = new WeakMap<PolicyEntry, Plan>();
  const planOf = (entry: PolicyEntry): Plan => {
    let plan = plans.get(entry);
    if (plan === undefined) {
      plan = { kind: 'policy', policyScopes: policyScopes(entry.scope, setup.oidcScopes) };
      plans.set(entry, plan);
    }
    return plan;
  };
  // With client checks whose answers never change (the built-in ones, see rules.ts fixedAnswers), a
  // cached policy entry the client was allowed to use stays allowed while the entry is cached: its
  // plan is kept with the entry, for that client. The deny-list is still read on every exchange, a
  // refusal is decided anew every time, and a changed policy is a new record with new entries. An
  // operator's own isFirstParty or allowSkippingConsent is asked on every exchange.
  const allowed =
    hasFixedAnswers(setup.isFirstParty) && hasFixedAnswers(config.allowSkippingConsent)
      ? new WeakMap<PolicyEntry, { readonly clientId: string; readonly plan: Plan }>()
      : undefined;
  /** A client check that threw, rejected or timed out: refuses what needs its answer. */
  const checkFailed = (ctx: KoaContextWithOIDC, err: unknown): Plan => {
    ctx.oidc.provider.emit('mrrt.check_error', ctx, err);
    return refusalPlan('check_unavailable');
  };

  const storeFailed = (ctx: KoaContextWithOIDC, err: unknown): Plan => {
    ctx.oidc.provider.emit('mrrt.store_error', ctx, err);
    return refusalPlan(err instanceof PolicyStoreError && err.code === 'ERR_MRRT_STORE_CORRUPT' ? 'store_corrupt' : 'store_unavailable');
  };

  // The decision is three steps, each going on from the answer of an operator's function or of the
  // store: a cached policy and synchronous client checks decide without a promise or a closure of
  // their own, which a request pays for with cold caches (docs/benchmark.md).

  /**
   * What the policy alone says about the target (SPEC E3), before any token is read. `cached`: the
   * client's policy as the cache answered when the request began, used instead of a lookup; when
   * `isFirstParty` answers asynchronously and `afterWait` is 'read again', the policy is read once it
   * has answered, so that one deleted meanwhile no longer applies (SPEC E10).
   */
  function decide(
    ctx: KoaContextWithOIDC,
    target: string,
    cached: { readonly record: PolicyRecord | undefined } | undefined,
    afterWait: 'read again' | 'as cached',
  ): Plan | Promise<Plan> {
    const firstParty = askCheck(ctx.oidc.client!);
    if (typeof firstParty === 'boolean') return fromFirstParty(ctx, target, firstParty, cached);
    return firstParty.then(
      (answer) => fromFirstParty(ctx, target, answer, afterWait === 'as cached' ? cached : undefined),
      (err: unknown) => checkFailed(ctx, err),
    );
  }

  /** The decision once `isFirstParty` answered: the client's and target's eligibility, then the policy. */
  function fromFirstParty(
    ctx: KoaContextWithOIDC,
    target: string,
    firstParty: unknown,
    cached: { readonly record: PolicyRecord | undefined } | undefined,
  ): Plan | Promise<Plan> {
    const ineligible = firstPartyRefusal(firstParty) ?? denyListRefusal(config, target);
    if (ineligible) return refusalPlan(ineligible);
    if (cached) return fromPolicy(ctx, target, cached.record);
    let found: ReturnType<typeof lookup>;
    try {
      found = lookup(ctx.oidc.client!.clientId);
    } catch (err) {
      return storeFailed(ctx, err);
    }
    if (!isThenable(found)) return fromPolicy(ctx, target, found);
    return found.then(
      (record) => fromPolicy(ctx, target, record),
      (err: unknown) => storeFailed(ctx, err),
    );
  }

  /** The plan for a target under the client's policy `record`, once the client itself is eligible. */
  function fromPolicy(ctx: KoaContextWithOIDC, target: string, record: PolicyRecord | undefined): Plan | Promise<Plan> {
    const entry = policyEntry(record, target);
    if (!entry) return refusalPlan(record ? 'not_in_policy' : 'no_policy');
    const consent = askCheck(ctx.oidc.client!, target);
    if (typeof consent === 'boolean') return fromConsent(entry, consent);
    return consent.then(
      (answer) => fromConsent(entry, answer),
      (err: unknown) => checkFailed(ctx, err),
    );
  }

  /** The plan once `allowSkippingConsent` answered. */
  function fromConsent(entry: PolicyEntry, consent: unknown): Plan {
    const refused = consentRefusal(consent);
    return refused ? refusalPlan(refused) : planOf(entry);
  }

  /**
   * The error of a request handed on outside the policy: when oidc-provider accepted a refresh token
   * that does not hold the target, the refusal's, reported as an exchange installed from the start
   * reports it, but decided now (with the policy of the request's start, and the first-party and
   * deny-list answers of this moment); otherwise oidc-provider's own.
   */
  async function outsidePolicyError(
    ctx: KoaContextWithOIDC,
    request: ConstructorParameters<typeof Exchange>[2],
    cached: { readonly record: PolicyRecord | undefined },
    err: unknown,
  ): Promise<unknown> {
    const token = ctx.oidc.entities.RefreshToken as RefreshTokenLike | undefined;
    const target = request.targets[0]!;
    if (!token || holds(token, target)) return err;
    const exchange = new Exchange(ctx, setup, request, await decide(ctx, target, cached, 'as cached'), () => {});
    exchange.learnHeld();
    return report(ctx, exchange, err);
  }

  return (builtin) => {
    /**
     * oidc-provider's handler with the exchange of `plan` installed, then the response's additions.
     * Written with `then` rather than as an async function: a saturated server pays for each
     * promise and frame of every request in flight.
     */
    function exchange(ctx: KoaContextWithOIDC, request: ConstructorParameters<typeof Exchange>[2], plan: Plan): Promise<void> {
      const running = new Exchange(ctx, setup, request, plan, install);
      install(ctx, running);
      let handled: Promise<void>;
      try {
        handled = builtin(ctx);
      } catch (err) {
        handled = Promise.reject(err as Error);
      }
      return handled.then(
        () => {
          running.end();
          running.issued();
        },
        (err: unknown) => {
          try {
            if (plan.kind === 'refusal') running.learnHeld();
            throw report(ctx, running, err);
          } finally {
            running.end();
          }
        },
      );
    }

    /**
     * The refresh_token grant. A request without a target (the refreshes of an app that never names
     * one) goes to oidc-provider's handler at once, without a promise or an allocation of the
     * extension's own. A request that names a target is refused at once when it names several,
     * handed to oidc-provider as it is when the target is outside the client's cached policy (and
     * neither a `scope` sent nor a Provider subclass needs the exchange to watch, see
     * `rotationObserved`), otherwise exchanged. Only the exchange is asynchronous of its own: a
     * request handed on is oidc-provider's promise, without an async frame or an `await` of the
     * handler's (with ten requests in flight, each costs a saturated server measurable CPU), and the
     * refusal is decided only if oidc-provider fails it.
     */
    return function mrrtRefreshTokenHandler(ctx) {
      const params = ctx.oidc.params;
      if (params?.resource === undefined && params?.audience === undefined) return builtin(ctx);
      try {
        const started = performance.now();
        const targets = requestedTargets(params);
        // values that name nothing (oidc-provider's parameters turn an empty one into undefined, handed
        // on above) are no target either
        if (targets.length === 0) return builtin(ctx);
        const value = params.refresh_token;
        if (typeof value !== 'string' || value.length === 0) return builtin(ctx);

        const request = { targets, refreshTokenValue: value, requestedScope: typeof params.scope === 'string' ? params.scope : undefined, started };
        if (targets.length !== 1) {
          // SPEC E1: one target per access token; refused before oidc-provider reads or writes anything
          const refused = new Exchange(ctx, setup, request, { kind: 'refusal', reason: 'multiple_targets', unlessGranted: false }, () => {});
          throw report(ctx, refused, refusalError('multiple_targets'));
        }
        const cached = cache?.peek(ctx.oidc.client!.clientId);
        const entry = cached && policyEntry(cached.record, targets[0]!);
        // a `scope` sent is checked by oidc-provider before it asks rotateRefreshToken: a refusal answers first (see Exchange.watchesModels)
        if (cached && !entry && rotationObserved && !request.requestedScope) {
          return builtin(ctx).catch(async (err: unknown) => {
            throw await outsidePolicyError(ctx, request, cached, err);
          });
        }
        // the exchange itself: the decision (with the policy of the request's start when the cache held
        // it), then oidc-provider's handler with the exchange installed
        const target = targets[0]!;
        const { clientId } = ctx.oidc.client!;
        const kept = entry && allowed?.get(entry);
        let plan: Plan | Promise<Plan>;
        if (kept && kept.clientId === clientId && !denyListRefusal(config, target)) plan = kept.plan;
        else {
          plan = decide(ctx, target, cached, 'read again');
          if (entry && allowed && !(plan instanceof Promise) && plan.kind === 'policy') allowed.set(entry, { clientId, plan });
        }
        return plan instanceof Promise ? plan.then((decided) => exchange(ctx, request, decided)) : exchange(ctx, request, plan);
      } catch (err) {
        // a handler answers with a promise, a refusal included
        return Promise.reject(err as Error);
      }
    };
  };
}

/** The error a failed exchange answers with, reported as an `mrrt.exchange` event when MRRT decided it. */
function report(ctx: KoaContextWithOIDC, exchange: Exchange, err: unknown): unknown {
  // a withdrawn overlay is served as without MRRT: oidc-provider's own error, no MRRT event
  if (exchange.withdrawn) return err;
  const { raised } = exchange;
  if (raised && err === raised.error) {
    emit(ctx, exchange, 'refused', raised.reason, { error: oauthError(err) });
    return err;
  }
  const refusal = exchange.activeRefusal();
  if (refusal && (err instanceof errors.InvalidTarget || err instanceof errors.InvalidScope)) {
    // oidc-provider's own checks passed and it stopped at the target or scope: answer with the MRRT reason
    const error = refusalError(refusal.reason);
    emit(ctx, exchange, 'refused', refusal.reason, { error: oauthError(error) });
    return error;
  }
  if (exchange.nothingAvailable && err instanceof errors.InvalidScope) {
    const error = new errors.InvalidScope(`no requested scope is available for ${exchange.target}`, String(ctx.oidc.params?.scope ?? ''));
    emit(ctx, exchange, 'refused', 'empty_scope', { error: 'invalid_scope' });
    return error;
  }
  if (exchange.plan.kind === 'policy' && exchange.held && err instanceof errors.InvalidScope) {
    // oidc-provider checked the scope parameter against the refresh token plus the policy (SPEC E4)
    const missing = splitScope((err as { scope?: unknown }).scope);
    const error = new errors.InvalidScope(`requested scope${missing.length === 1 ? ' is' : 's are'} not allowed for ${exchange.target}`, missing.join(' '));
    emit(ctx, exchange, 'refused', 'scope_not_allowed', { error: 'invalid_scope' });
    return error;
  }
  if (exchange.held && (exchange.plan.kind === 'policy' || refusal)) {
    emit(ctx, exchange, 'refused', 'provider_check', { error: oauthError(err) ?? 'server_error' });
  }
  return err;
}

const oauthError = (err: unknown): string | undefined => (err as { error?: string }).error;

/** Emits an exchange's `mrrt.exchange` event; the event object is built only when someone listens. */
function emit(ctx: KoaContextWithOIDC, exchange: Exchange, outcome: MrrtExchangeEvent['outcome'], reason: MrrtReason, extra: Partial<MrrtExchangeEvent>): void {
  if (ctx.oidc.provider.listenerCount('mrrt.exchange') !== 0) ctx.oidc.provider.emit('mrrt.exchange', ctx, event(ctx, exchange, outcome, reason, extra));
}

function event(
  ctx: KoaContextWithOIDC,
  exchange: Exchange,
  outcome: MrrtExchangeEvent['outcome'],
  reason: MrrtReason,
  extra: Partial<MrrtExchangeEvent>,
): MrrtExchangeEvent {
  return {
    outcome,
    reason,
    clientId: ctx.oidc.client!.clientId,
    subject: exchange.held?.subject,
    grantId: exchange.held?.grantId,
    requestedAudience: exchange.targets.join(' '),
    resolvedAudience: undefined,
    requestedScope: exchange.requestedScope,
    grantedScope: undefined,
    durationMs: performance.now() - exchange.started,
    ...extra,
  };
}
