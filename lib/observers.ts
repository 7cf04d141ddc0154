import type Provider from 'oidc-provider';
import type { Configuration, KoaContextWithOIDC } from 'oidc-provider';
import { defaults as providerDefaults } from 'oidc-provider/lib/helpers/defaults.js';

import type { Exchange } from './exchange.js';
import { MrrtTypeError } from './errors.js';

/**
 * Where the extension watches oidc-provider from inside. Each observer forwards what it sees to the
 * request's {@link Exchange} — one call each — and holds no rule.
 *
 * During an exchange that watches the models (`Exchange.watchesModels`), and only then, the
 * provider hands oidc-provider subclasses of its own `RefreshToken` and `Grant` models (see
 * `provider.ts`): the refresh token oidc-provider finds, the one it rotates to and the Grant it
 * loads are instances of these, and report how oidc-provider reads their scopes and resources and
 * when it consumes the refresh token. Nothing of oidc-provider is changed: no model class,
 * prototype or object of another request; the watched models store exactly what the models they
 * extend store, through the same adapters. The configured `getResourceServerInfo` and
 * `rotateRefreshToken` are the only other touch points. A target outside the policy (served only
 * when the refresh token holds it) has no exchange watching the models unless its request sends a
 * `scope` or `withMrrt` was given a subclass of `Provider` (see `provider.ts`): oidc-provider asks
 * `rotateRefreshToken` once every check of the refresh token has passed and before it consumes
 * it, and that is where such a target is refused.
 */

/** The exchange in flight on a provider, for the request being served; `undefined` when there is none. */
type ExchangeOn = (provider: unknown) => Exchange | undefined;
/** The exchange of the request being served, when `ctx` is its context; `undefined` otherwise. */
type ExchangeOf = (ctx: unknown) => Exchange | undefined;
/** Tells a refresh request of this provider that oidc-provider asks `rotateRefreshToken` (see `provider.ts`); throws to refuse it. */
type RotationAsked = (ctx: KoaContextWithOIDC) => void;

/** The models an exchange's request is given in place of the provider's own. */
export interface WatchedModels {
  readonly RefreshToken: object;
  readonly Grant: object;
}

// the parts of oidc-provider's models the watched models extend (types only)
interface RefreshTokenInstance {
  get adapter(): unknown;
  readonly grantId?: string;
  readonly resource?: string | string[];
  readonly scope?: string;
  get scopes(): Set<string>;
  get resourceIndicators(): Set<string>;
  consume(): Promise<void>;
  emit(eventName: string): void;
}
interface GrantInstance {
  get adapter(): unknown;
  readonly jti?: string;
  getResourceScopeFiltered(resource: string, filter: Iterable<string>): string;
  emit(eventName: string): void;
}
type RefreshTokenModel = (new (...args: never[]) => RefreshTokenInstance) & {
  readonly adapter: unknown;
  find(value: string, ...rest: unknown[]): Promise<object | undefined>;
};
type GrantModel = (new (...args: never[]) => GrantInstance) & { readonly adapter: unknown };

function requireMembers(model: object, owner: string, statics: readonly string[], members: readonly string[]): void {
  const proto = (model as { prototype?: object }).prototype;
  for (const name of statics)
    if (!(name in model)) throw new MrrtTypeError(`oidc-provider-mrrt: ${owner}.${name} is missing; this oidc-provider version is not supported`);
  for (const name of members)
    if (!proto || !(name in proto))
      throw new MrrtTypeError(`oidc-provider-mrrt: ${owner}.prototype.${name} is missing; this oidc-provider version is not supported`);
}

/**
 * This provider's `RefreshToken` and `Grant`, extended to report to the request's exchange. Each
 * keeps its model's name (stored payloads carry it as `kind`) and uses its model's adapter, so
 * what is found, saved and consumed is exactly what the provider's own models find, save and consume.
 */
export function watchedModels(provider: Provider, exchangeOn: ExchangeOn): WatchedModels {
  const { RefreshToken: Token, Grant: GrantBase } = provider as unknown as { RefreshToken: RefreshTokenModel; Grant: GrantModel };
  requireMembers(Token, 'RefreshToken', ['find', 'adapter'], ['scopes', 'resourceIndicators', 'consume', 'emit']);
  requireMembers(GrantBase, 'Grant', ['find', 'adapter'], ['getResourceScopeFiltered', 'emit']);

  // once the exchange has stepped aside (or ended), find, the scope and resource getters and consume
  // are one check of an empty map and a direct call: no promise or closure of their own
  const RefreshToken = class RefreshToken extends Token {
    // the model's own adapter; a deployment's subclass of this one gets its own, as of the model itself
    static override get adapter(): unknown {
      return this === RefreshToken ? Token.adapter : super.adapter;
    }

    override get adapter(): unknown {
      return this.constructor === RefreshToken ? Token.adapter : super.adapter;
    }

    static override find(value: string, ...rest: unknown[]): Promise<object | undefined> {
      const exchange = exchangeOn(provider);
      const found = super.find(value, ...rest);
      if (exchange === undefined) return found;
      return found.then((token) => {
        if (token) exchange.sawRefreshToken(value, token);
        return token;
      });
    }

    override get scopes(): Set<string> {
      const own = super.scopes;
      const exchange = exchangeOn(provider);
      return exchange === undefined ? own : exchange.presentScopes(this, own);
    }

    override get resourceIndicators(): Set<string> {
      const own = super.resourceIndicators;
      const exchange = exchangeOn(provider);
      return exchange === undefined ? own : exchange.presentResources(this, own);
    }

    override consume(): Promise<void> {
      const exchange = exchangeOn(provider);
      if (exchange === undefined) return super.consume();
      let checked: PromiseLike<unknown> | undefined;
      try {
        checked = exchange.beforeRotation(this);
      } catch (err) {
        return Promise.reject(err as Error);
      }
      return checked === undefined ? super.consume() : Promise.resolve(checked).then(() => super.consume());
    }

    // the deployment's listeners (`refresh_token.saved`, `.consumed`, `grant.*`) see the models as stored
    override emit(eventName: string): void {
      const exchange = exchangeOn(provider);
      if (exchange) exchange.withoutOverlay(super.emit, this, eventName);
      else super.emit(eventName);
    }
  };

  const Grant = class Grant extends GrantBase {
    // the model's own adapter; a deployment's subclass of this one gets its own, as of the model itself
    static override get adapter(): unknown {
      return this === Grant ? GrantBase.adapter : super.adapter;
    }

    override get adapter(): unknown {
      return this.constructor === Grant ? GrantBase.adapter : super.adapter;
    }

    override getResourceScopeFiltered(resource: string, filter: Iterable<string>): string {
      const own = super.getResourceScopeFiltered(resource, filter);
      const exchange = exchangeOn(provider);
      return exchange === undefined ? own : exchange.presentGrantScope(this, resource, filter, own);
    }

    // as the refresh token's: the deployment's listeners see the Grant as stored
    override emit(eventName: string): void {
      const exchange = exchangeOn(provider);
      if (exchange) exchange.withoutOverlay(super.emit, this, eventName);
      else super.emit(eventName);
    }
  };

  return { RefreshToken, Grant };
}

type ResourceIndicators = NonNullable<NonNullable<Configuration['features']>['resourceIndicators']>;
type GetResourceServerInfo = NonNullable<ResourceIndicators['getResourceServerInfo']>;
type RotateRefreshToken = (ctx: KoaContextWithOIDC) => unknown;

/** oidc-provider's own `rotateRefreshToken`, asked when the deployment configures none. */
const defaultRotateRefreshToken: unknown = providerDefaults.rotateRefreshToken;

/**
 * The deployment's configuration with the two hooks an exchange answers observed. Outside an
 * exchange, and for another provider's or another request's question, each calls the deployment's
 * own function (or oidc-provider's default) exactly as configured.
 */
export function observedConfiguration(configuration: Configuration, exchangeOf: ExchangeOf, rotationAsked: RotationAsked): Configuration {
  return observeResourceServerInfo(observeRotation(configuration, rotationAsked), exchangeOf);
}

/**
 * `rotateRefreshToken`: oidc-provider asks it after every check of the refresh token (client,
 * expiry, sender constraint, Grant, account, reuse) and before it consumes the token. The request
 * is told first and a refusal is raised there, before anything is written (SPEC E6); whether to rotate
 * is the deployment's answer, or oidc-provider's default, as configured.
 */
function observeRotation(configuration: Configuration, rotationAsked: RotationAsked): Configuration {
  const configured: unknown = configuration.rotateRefreshToken;
  // never rotating, oidc-provider writes nothing before its own target check refuses
  if (configured !== undefined && configured !== true && typeof configured !== 'function') return configuration;
  // a function is asked, none configured is oidc-provider's default, and the rest is `true`
  const rotate: RotateRefreshToken =
    typeof configured === 'function' ? (configured as RotateRefreshToken) : configured === undefined ? providerDefault() : () => true;
  return {
    ...configuration,
    rotateRefreshToken(ctx: KoaContextWithOIDC) {
      rotationAsked(ctx);
      return rotate(ctx);
    },
  } as Configuration;
}

function providerDefault(): RotateRefreshToken {
  if (typeof defaultRotateRefreshToken !== 'function') {
    throw new MrrtTypeError('oidc-provider-mrrt: oidc-provider has no default rotateRefreshToken; this oidc-provider version is not supported');
  }
  return defaultRotateRefreshToken as RotateRefreshToken;
}

/**
 * `getResourceServerInfo`: during an exchange oidc-provider's question goes to the exchange, which
 * answers with the answer its rules were checked against.
 */
function observeResourceServerInfo(configuration: Configuration, exchangeOf: ExchangeOf): Configuration {
  const resourceIndicators = configuration.features?.resourceIndicators;
  const getResourceServerInfo = resourceIndicators?.getResourceServerInfo;
  // without one, oidc-provider's own default (which knows no API) stays in place and an exchange finds no API
  if (!getResourceServerInfo) return configuration;
  const ask = (ctx: KoaContextWithOIDC, resource: string, client: Parameters<GetResourceServerInfo>[2]): ReturnType<GetResourceServerInfo> =>
    getResourceServerInfo(ctx, resource, client);
  return {
    ...configuration,
    features: {
      ...configuration.features,
      resourceIndicators: {
        ...resourceIndicators,
        getResourceServerInfo(ctx, resource, client) {
          const exchange = exchangeOf(ctx);
          // another provider's question, or another request's, is the deployment's to answer
          if (exchange === undefined) return ask(ctx, resource, client);
          return exchange.resourceServerInfo(resource, () => ask(ctx, resource, client)) as ReturnType<GetResourceServerInfo>;
        },
      },
    },
  };
}
