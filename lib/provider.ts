import Provider, {
  errors, type Configuration, type KoaContextWithOIDC, type TokenEndpointGrantContext,
} from 'oidc-provider';

import { resolveOptions, type MrrtConfiguration, type MrrtOptions } from './options.js';
import { decorateAdapter, splitScope, type RequestState } from './overlay.js';
import { createRefreshHook, unprotectedPublicClient, type MrrtExchangeEvent } from './refresh-hook.js';

/** The MRRT settings a `withMrrt` provider runs with, for the admin API and for inspection. */
export const mrrtConfiguration: unique symbol = Symbol.for('oidc-provider-mrrt.configuration');

type ResourceServerInfoFn = NonNullable<NonNullable<NonNullable<Configuration['features']>['resourceIndicators']>['getResourceServerInfo']>;

/** What the admin API needs to know of a `withMrrt` provider. */
export interface MrrtInstallation {
  readonly config: MrrtConfiguration;
  readonly getResourceServerInfo: ResourceServerInfoFn | undefined;
}

const installations = new WeakMap<object, MrrtInstallation>();

/** The MRRT installation of a provider built with {@link withMrrt}, or `undefined` for any other object. */
export function mrrtInstallation(provider: unknown): MrrtInstallation | undefined {
  return typeof provider === 'object' && provider !== null ? installations.get(provider) : undefined;
}

type ProviderClass = typeof Provider;

/** Typed listeners for the events the extension emits on the provider. */
export interface MrrtEvents {
  on(event: 'mrrt.exchange', listener: (ctx: KoaContextWithOIDC, event: MrrtExchangeEvent) => void): this;
  on(event: 'mrrt.store_error', listener: (ctx: KoaContextWithOIDC, error: unknown) => void): this;
  once(event: 'mrrt.exchange', listener: (ctx: KoaContextWithOIDC, event: MrrtExchangeEvent) => void): this;
  once(event: 'mrrt.store_error', listener: (ctx: KoaContextWithOIDC, error: unknown) => void): this;
  off(event: 'mrrt.exchange', listener: (ctx: KoaContextWithOIDC, event: MrrtExchangeEvent) => void): this;
  off(event: 'mrrt.store_error', listener: (ctx: KoaContextWithOIDC, error: unknown) => void): this;
}

/** The class {@link withMrrt} returns: the given Provider class whose instances also type the MRRT events. */
export type MrrtProviderClass<P extends ProviderClass> = P & (new (...args: ConstructorParameters<P>) => InstanceType<P> & MrrtEvents);
type Handler = (ctx: KoaContextWithOIDC) => Promise<void>;
type ParamList = string | readonly string[] | ReadonlySet<string>;

function prepareConfiguration(
  configuration: Configuration,
  config: MrrtConfiguration,
  stateOf: () => RequestState | undefined,
): Configuration {
  if (typeof configuration !== 'object' || configuration === null) throw new TypeError('configuration must be an object');
  const resourceIndicators = configuration.features?.resourceIndicators;
  if (resourceIndicators?.enabled === false) {
    throw new TypeError('"features.resourceIndicators.enabled" must not be false: MRRT names its target API with a resource indicator');
  }
  const { defaultResource, getResourceServerInfo } = resourceIndicators ?? {};
  const prepared: Configuration = {
    ...configuration,
    adapter: decorateAdapter(configuration.adapter, stateOf),
    features: {
      ...configuration.features,
      // a refused MRRT request must never reach token issuance, whichever way oidc-provider resolves the resource
      resourceIndicators: {
        ...resourceIndicators,
        // not async functions: no promise of their own; a refusal is returned as a rejected promise
        defaultResource(ctx, client, oneOf) {
          try {
            stateOf()?.checkpoint?.();
            return defaultResource ? defaultResource(ctx, client, oneOf) : (oneOf as never);
          } catch (err) {
            return Promise.reject(err);
          }
        },
        getResourceServerInfo(ctx, resource, client) {
          try {
            const state = stateOf();
            if (state) {
              state.checkpoint?.();
              // oidc-provider has decided on rotation by now and written nothing yet
              if (state.policyScopes && state.loaded && !state.withdrawn && config.publicClients !== 'any' && !protectedPublicRefresh(ctx)) {
                if (!state.loaded.granted) throw unprotectedPublicClient();
                withdrawOverlay(ctx, state);
              }
            }
            if (!getResourceServerInfo) throw new errors.InvalidTarget();
            return getResourceServerInfo(ctx, resource, client);
          } catch (err) {
            return Promise.reject(err);
          }
        },
      },
    },
  };

  if (config.registerFirstPartyMetadata) {
    const extra = configuration.extraClientMetadata ?? {};
    const properties = extra.properties ?? [];
    const validator = extra.validator;
    prepared.extraClientMetadata = {
      ...extra,
      properties: properties.includes('first_party') ? properties : [...properties, 'first_party'],
      validator(ctx, key, value, metadata) {
        if (key === 'first_party' && value !== undefined && typeof value !== 'boolean') {
          throw new errors.InvalidClientMetadata('first_party must be a boolean');
        }
        return validator?.(ctx, key, value, metadata);
      },
    };
  }
  return prepared;
}

/**
 * Returns a `Provider` subclass with Multi-Resource Refresh Tokens installed. Construct it exactly
 * like `Provider`, with your own issuer and configuration: the extension wraps the configured
 * adapter (or an in-memory one when there is none), registers the `first_party` client metadata
 * unless `isFirstParty` is given, and wraps the built-in `refresh_token` grant.
 *
 * @example
 * ```ts
 * import Provider from 'oidc-provider';
 * import { withMrrt, RedisPolicyStore } from 'oidc-provider-mrrt';
 *
 * const MrrtProvider = withMrrt(Provider, {
 *   store: new RedisPolicyStore(redis),
 *   allowSkippingConsent: ['https://billing.example.com'],
 *   denyList: ['https://admin.example.com'],
 * });
 * const provider = new MrrtProvider('https://auth.example.com', configuration);
 * ```
 */
export function withMrrt<P extends ProviderClass>(Base: P, options: MrrtOptions): MrrtProviderClass<P> {
  if (typeof Base !== 'function' || !(Base === Provider || Base.prototype instanceof Provider)) {
    throw new TypeError('withMrrt: the first argument must be the oidc-provider Provider class (or a subclass of it)');
  }
  const config = resolveOptions(options);
  // this provider class's MRRT state of a request lives on its Koa context, under a key of its own
  const slot: unique symbol = Symbol('oidc-provider-mrrt.request');
  const stateOf = (): RequestState | undefined => (Base.ctx as { [slot]?: RequestState } | undefined)?.[slot];
  // set while a constructor runs: oidc-provider registers its grants synchronously from the constructor
  let constructing: Configuration | undefined;
  let constructingInfo: ResourceServerInfoFn | undefined;
  let hooked = false;

  const Mrrt = class MrrtProvider extends (Base as ProviderClass) {
    readonly [mrrtConfiguration]: MrrtConfiguration = config;

    constructor(issuer: string, configuration: Configuration = {}) {
      const prepared = prepareConfiguration(configuration, config, stateOf);
      constructing = prepared;
      constructingInfo = configuration.features?.resourceIndicators?.getResourceServerInfo;
      hooked = false;
      try {
        super(issuer, prepared);
      } finally {
        constructing = undefined;
      }
      installations.set(this, { config, getResourceServerInfo: configuration.features?.resourceIndicators?.getResourceServerInfo });
      if (!hooked) {
        throw new Error('oidc-provider-mrrt: the refresh_token grant was not registered through registerGrantType during construction; this oidc-provider version is not supported');
      }
    }

    override registerGrantType<Params extends object>(
      name: string,
      handler: (ctx: TokenEndpointGrantContext<Params>) => void | Promise<void>,
      params?: ParamList,
      dupes?: ParamList,
    ): void {
      if (name === 'refresh_token' && constructing) {
        const getResourceServerInfo = constructingInfo;
        handler = createRefreshHook(config, getResourceServerInfo as never, slot)(handler as unknown as Handler) as never;
        params = new Set([...toSet(params), 'audience']);
        dupes = new Set([...toSet(dupes), 'resource', 'audience']);
        hooked = true;
      }
      super.registerGrantType(name, handler, params, dupes);
    }
  };
  return Mrrt as unknown as MrrtProviderClass<P>;
}

function toSet(value: ParamList | undefined): Set<string> {
  if (value === undefined) return new Set();
  return new Set(typeof value === 'string' ? [value] : [...value]);
}

/**
 * Serves a granted target as without MRRT: the in-memory Grant of this request (never saved) gets
 * back the scope it holds for the target, so oidc-provider computes the token exactly as it would.
 */
function withdrawOverlay(ctx: KoaContextWithOIDC, state: RequestState): void {
  const grant = ctx.oidc.entities.Grant;
  const { target, grantedScope } = state;
  const { original } = state.loaded!;
  state.withdrawn = true;
  if (ctx.oidc.params?.scope) {
    // the check oidc-provider would have made against the refresh token without the overlay
    const held = new Set(splitScope(original.scope));
    const missing = [...ctx.oidc.requestParamScopes].filter((scope) => !held.has(scope));
    if (missing.length !== 0) {
      throw new errors.InvalidScope(`refresh token missing requested scope${missing.length === 1 ? '' : 's'}`, missing.join(' '));
    }
  }
  if (grant) {
    const resources = { ...(grant.resources ?? {}) };
    if (grantedScope === undefined) delete resources[target];
    else resources[target] = grantedScope;
    grant.resources = resources;
  }
}

/** RFC 9700 §2.2.2: a public client's refresh token must be rotated or sender-constrained. */
function protectedPublicRefresh(ctx: KoaContextWithOIDC): boolean {
  if (ctx.oidc.client?.clientAuthMethod !== 'none') return true;
  const { RefreshToken: refreshToken, RotatedRefreshToken: rotated } = ctx.oidc.entities;
  return rotated !== undefined || Boolean(refreshToken?.jkt) || Boolean(refreshToken?.['x5t#S256']);
}
