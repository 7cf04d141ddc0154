import { errors } from 'oidc-provider';

import type { MrrtClient, MrrtConfiguration } from './options.js';

/** Scopes of the OpenID layer in every configuration; a provider's own add to them (see {@link oidcScopesOf}). */
export const OIDC_SCOPES: ReadonlySet<string> = new Set(['openid', 'offline_access']);

/**
 * The OpenID scopes of a provider configuration, as oidc-provider resolves them: `scopes` (default
 * `openid offline_access`) and every scope `claims` defines. None of them ever goes into an API
 * access token through a policy (SPEC E4).
 */
export function oidcScopesOf(configuration: { readonly scopes?: unknown; readonly claims?: unknown }): ReadonlySet<string> {
  const scopes = new Set(OIDC_SCOPES);
  const configured: unknown = configuration.scopes;
  if (Array.isArray(configured) || configured instanceof Set) for (const scope of configured) if (typeof scope === 'string') scopes.add(scope);
  const claims: unknown = configuration.claims;
  if (typeof claims === 'object' && claims !== null) {
    for (const [scope, value] of Object.entries(claims)) if (typeof value === 'object' && value !== null) scopes.add(scope);
  }
  return scopes;
}

/** Every reason an MRRT exchange can end with (`MrrtExchangeEvent.reason`); README's error table lists each. */
export const MRRT_REASONS = Object.freeze([
  'policy',
  'multiple_targets',
  'not_first_party',
  'deny_listed',
  'no_policy',
  'not_in_policy',
  'unknown_resource',
  'consent_required',
  'scope_not_allowed',
  'empty_scope',
  'store_unavailable',
  'store_corrupt',
  'check_unavailable',
  'public_client_unprotected',
  'provider_check',
] as const);

/** Why an MRRT exchange ended as it did (`MrrtExchangeEvent.reason`). */
export type MrrtReason = (typeof MRRT_REASONS)[number];

/** The reasons for which a target is not reachable through MRRT, each with the description a client sees. */
export const TARGET_REFUSALS = {
  multiple_targets: 'only one resource (audience) may be requested per access token',
  not_first_party: 'resource is not allowed: MRRT is available to first-party clients only',
  deny_listed: 'resource is not allowed for multi-resource refresh',
  no_policy: 'resource is not in the MRRT policy of this client',
  not_in_policy: 'resource is not in the MRRT policy of this client',
  unknown_resource: 'resource is not a known API',
  consent_required: 'resource requires user consent and cannot be reached through MRRT',
  public_client_unprotected: 'MRRT for public clients requires refresh token rotation or a DPoP-bound refresh token',
} as const satisfies Partial<Record<MrrtReason, string>>;

export type TargetRefusal = keyof typeof TARGET_REFUSALS;

/** What a deployment's `getResourceServerInfo` answers, as far as the rules read it. */
export interface ResourceServerAnswer {
  readonly scope?: unknown;
  readonly audience?: unknown;
}

/**
 * The rules of SPEC E3 and P3. The admin API applies them through these two functions; the token
 * endpoint applies the same predicates below in the same order, with each operator answer bounded
 * in time (exchange.ts).
 * Option functions may answer with a promise or any thenable; `await` settles both, so a thenable
 * is never mistaken for a truthy answer.
 */
export async function clientRefusal(isFirstParty: (client: MrrtClient) => unknown, client: MrrtClient): Promise<TargetRefusal | undefined> {
  return firstPartyRefusal(await isFirstParty(client));
}

/** The target itself: never a deny-listed API, and only one whose user consent may be skipped. */
export async function audienceRefusal(config: MrrtConfiguration, target: string, client: MrrtClient): Promise<TargetRefusal | undefined> {
  return denyListRefusal(config, target) ?? consentRefusal(await config.allowSkippingConsent(target, client));
}

// only `true` allows: a string such as "false" (what a cache or database may hand back) refuses
/** The operator's `isFirstParty` answer, settled. */
export const firstPartyRefusal = (answer: unknown): TargetRefusal | undefined => (answer === true ? undefined : 'not_first_party');
/** The operator's `allowSkippingConsent` answer, settled. */
export const consentRefusal = (answer: unknown): TargetRefusal | undefined => (answer === true ? undefined : 'consent_required');
/** A target on the deny-list. */
export const denyListRefusal = (config: MrrtConfiguration, target: string): TargetRefusal | undefined =>
  config.denyList.has(target) ? 'deny_listed' : undefined;

/**
 * Whether an answer has the shape oidc-provider accepts for issuance (`scope` string; `audience`,
 * `accessTokenTTL`, `accessTokenFormat` as documented), so that a malformed answer is refused before
 * anything is written rather than by oidc-provider after rotation.
 */
export function isWellFormedAnswer(answer: ResourceServerAnswer & { readonly accessTokenTTL?: unknown; readonly accessTokenFormat?: unknown }): boolean {
  return (
    typeof answer.scope === 'string' &&
    (answer.audience === undefined || typeof answer.audience === 'string') &&
    (answer.accessTokenTTL === undefined || (Number.isSafeInteger(answer.accessTokenTTL) && (answer.accessTokenTTL as number) > 0)) &&
    (answer.accessTokenFormat === undefined || answer.accessTokenFormat === 'opaque' || answer.accessTokenFormat === 'jwt')
  );
}

/** The deployment's answer for the target: a known API, whose token audience is not deny-listed. */
export function resourceServerRefusal(config: MrrtConfiguration, answer: ResourceServerAnswer | undefined): TargetRefusal | undefined {
  if (!answer) return 'unknown_resource';
  return typeof answer.audience === 'string' && config.denyList.has(answer.audience) ? 'deny_listed' : undefined;
}

/** Whether an operator's answer is a promise or any thenable, to be awaited; anything else is the answer itself. */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (typeof value === 'object' || typeof value === 'function') && value !== null && typeof (value as PromiseLike<unknown>).then === 'function';
}

/**
 * Asks the deployment's `getResourceServerInfo` about `resource`; its `InvalidTarget` (or no
 * answer, or no such function) means "not a known API". A synchronous answer is returned as it is:
 * an exchange then decides without a promise.
 */
export function askResourceServer<Context, Client>(
  getResourceServerInfo: ((ctx: Context, resource: string, client: Client) => unknown) | undefined,
  ctx: Context,
  resource: string,
  client: Client,
): ResourceServerAnswer | undefined | Promise<ResourceServerAnswer | undefined> {
  if (!getResourceServerInfo) return undefined;
  let answer: unknown;
  let thenable: boolean;
  try {
    answer = getResourceServerInfo(ctx, resource, client);
    // a `then` that throws is the answer's error, as `await` would make it
    thenable = isThenable(answer);
  } catch (err) {
    return unknownResource(err);
  }
  return thenable ? Promise.resolve(answer).then(asAnswer, unknownResource) : asAnswer(answer);
}

const asAnswer = (answer: unknown): ResourceServerAnswer | undefined =>
  typeof answer === 'object' && answer !== null ? (answer as ResourceServerAnswer) : undefined;

function unknownResource(err: unknown): undefined {
  if (err instanceof errors.InvalidTarget) return undefined;
  throw err;
}

/** The scopes an API defines, from its `getResourceServerInfo` answer. */
export function definedScopes(answer: ResourceServerAnswer): Set<string> {
  return new Set(splitScope(answer.scope));
}

/** The scopes of a policy entry that may go into an API access token: never an OpenID scope of the provider. */
export function policyScopes(scope: readonly string[], oidcScopes: ReadonlySet<string>): string[] {
  return scope.filter((value) => !oidcScopes.has(value));
}

/** The values of a space-separated parameter such as `scope`; anything but a string has none. */
export function splitScope(value: unknown): string[] {
  if (typeof value !== 'string') return [];
  const parts = value.split(' ');
  return parts.includes('') ? parts.filter(Boolean) : parts;
}

/** The values of `first`, then those of `second` it lacks, each once (order kept). */
export function union(first: Iterable<string>, second: Iterable<string>): string[] {
  return [...new Set([...first, ...second])];
}

const fixed = new WeakSet<object>();

/**
 * Marks a client check built from static lists (the built-in `isFirstParty`, `allowSkippingConsent`
 * given as a list or not at all): its answer for a client and target never changes, so an exchange
 * keeps a cached policy entry it allowed for the client (exchange.ts).
 */
export function fixedAnswers<Check extends object>(check: Check): Check {
  fixed.add(check);
  return check;
}

/** Whether a client check is one of {@link fixedAnswers}; an operator's own function never is. */
export const hasFixedAnswers = (check: unknown): boolean => typeof check === 'function' && fixed.has(check);

/**
 * The operator's own statement of which clients are first-party (SPEC P6): the statically configured
 * clients with `first_party: true`. oidc-provider drops the unknown property from the client it
 * builds, so no registration or registration-management request can ever set it.
 */
export function staticFirstParty(configuration: { readonly clients?: unknown }): (client: { readonly clientId: string }) => boolean {
  const ids = new Set<string>();
  // whatever oidc-provider will reject (not an array, null entries) it reports itself, with its own error
  const clients: unknown = configuration.clients;
  for (const client of Array.isArray(clients) ? (clients as unknown[]) : []) {
    if (typeof client !== 'object' || client === null) continue;
    const { first_party: firstParty, client_id: clientId } = client as { first_party?: unknown; client_id?: unknown };
    if (firstParty === true && typeof clientId === 'string') ids.add(clientId);
  }
  return fixedAnswers((client: { readonly clientId: string }) => ids.has(client.clientId));
}
