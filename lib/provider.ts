import Provider, { type Configuration, type KoaContextWithOIDC, type TokenEndpointGrantContext } from 'oidc-provider';

import {
  createExchangeHandler,
  rotationAskedOutsidePolicy,
  type Exchange,
  type ExchangeSetup,
  type MrrtExchangeEvent,
  type ResourceServerInfo,
} from './exchange.js';
import { observedConfiguration, watchedModels, type WatchedModels } from './observers.js';
import { resolveOptions, type MrrtConfiguration, type MrrtOptions } from './options.js';
import { oidcScopesOf, staticFirstParty } from './rules.js';
import type { PolicyAuditEvent } from './store.js';
import { MrrtTypeError } from './errors.js';

/** The MRRT settings a `withMrrt` provider runs with, for the admin API and for inspection. */
export const mrrtConfiguration: unique symbol = Symbol.for('oidc-provider-mrrt.configuration');

/** What the admin API needs to know of a `withMrrt` provider. */
export interface MrrtInstallation extends ExchangeSetup {
  /** Why MRRT is inactive on this provider, or `undefined` when it is active. */
  readonly inactive: string | undefined;
}

const installations = new WeakMap<object, MrrtInstallation>();
/** The watched models of each active `withMrrt` provider. */
const watched = new WeakMap<object, WatchedModels>();

/** The MRRT installation of a provider built with {@link withMrrt}, or `undefined` for any other object. */
export function mrrtInstallation(provider: unknown): MrrtInstallation | undefined {
  return typeof provider === 'object' && provider !== null ? installations.get(provider) : undefined;
}

type ProviderClass = typeof Provider;

/** Typed listeners for the events the extension emits on the provider. */
export interface MrrtEvents {
  on(event: 'mrrt.exchange', listener: (ctx: KoaContextWithOIDC, event: MrrtExchangeEvent) => void): this;
  on(event: 'mrrt.store_error', listener: (ctx: KoaContextWithOIDC, error: unknown) => void): this;
  on(event: 'mrrt.check_error', listener: (ctx: KoaContextWithOIDC, error: unknown) => void): this;
  on(event: 'mrrt.policy_changed', listener: (event: PolicyAuditEvent) => void): this;
  once(event: 'mrrt.exchange', listener: (ctx: KoaContextWithOIDC, event: MrrtExchangeEvent) => void): this;
  once(event: 'mrrt.store_error', listener: (ctx: KoaContextWithOIDC, error: unknown) => void): this;
  once(event: 'mrrt.check_error', listener: (ctx: KoaContextWithOIDC, error: unknown) => void): this;
  once(event: 'mrrt.policy_changed', listener: (event: PolicyAuditEvent) => void): this;
  off(event: 'mrrt.exchange', listener: (ctx: KoaContextWithOIDC, event: MrrtExchangeEvent) => void): this;
  off(event: 'mrrt.store_error', listener: (ctx: KoaContextWithOIDC, error: unknown) => void): this;
  off(event: 'mrrt.check_error', listener: (ctx: KoaContextWithOIDC, error: unknown) => void): this;
  off(event: 'mrrt.policy_changed', listener: (event: PolicyAuditEvent) => void): this;
}

/**
 * The class {@link withMrrt} returns: the given Provider class whose instances also type the MRRT
 * events. Its own construct signature comes first, so `new` picks it (and the events) over the base's.
 */
export type MrrtProviderClass<P extends ProviderClass> = (new (...args: ConstructorParameters<P>) => MrrtEvents & InstanceType<P>) & P;
type Handler = (ctx: KoaContextWithOIDC) => Promise<void>;
type ParamList = string | readonly string[] | ReadonlySet<string>;

const warned = new Set<string>();
/** Says once per process, the way oidc-provider warns, that MRRT is inactive and why. */
function warnOnce(message: string): void {
  if (warned.has(message)) return;
  warned.add(message);
  const warning = `oidc-provider-mrrt WARNING: ${message}`;
  console.warn(process.stderr.isTTY ? `\x1b[31;1m${warning}\x1b[0m` : warning);
}

const INACTIVE = {
  resourceIndicators: 'features.resourceIndicators is disabled, MRRT is inactive for this provider (it names the target API with a resource indicator)',
  refreshToken:
    'the configuration has no refresh_token grant (add "offline_access" to scopes or configure issueRefreshToken), MRRT is inactive for this provider',
} as const;

/**
 * The MRRT settings of one provider: `withMrrt`'s options, or the configuration's `mrrt` key, or both
 * (the configuration's keys win over the class's).
 */
function configurationFor(classConfig: MrrtConfiguration | undefined, classOptions: MrrtOptions | undefined, instanceOptions: unknown): MrrtConfiguration {
  // undefined means "the default" here as for every option: the class's value, not the package's
  if (instanceOptions === undefined) {
    if (classConfig) return classConfig;
    throw new MrrtTypeError('MRRT options are required: give them to withMrrt(Provider, options) or as the "mrrt" key of the provider configuration');
  }
  if (typeof instanceOptions !== 'object' || instanceOptions === null || Array.isArray(instanceOptions)) {
    throw new MrrtTypeError('"mrrt" configuration must be an object of MRRT options');
  }
  const given = Object.fromEntries(Object.entries(instanceOptions).filter(([, value]) => value !== undefined));
  return resolveOptions(classOptions ? { ...classOptions, ...given } : given);
}

function toSet(value: ParamList | undefined): Set<string> {
  if (value === undefined) return new Set();
  return new Set(typeof value === 'string' ? [value] : [...value]);
}

/**
 * Returns a `Provider` subclass with Multi-Resource Refresh Tokens installed. Construct it exactly
 * like `Provider`, with your own issuer and configuration: the extension wraps the built-in
 * `refresh_token` grant, observes this provider's `RefreshToken` and `Grant` models, its
 * `getResourceServerInfo` and its `rotateRefreshToken` during an exchange, and changes nothing
 * else. A configuration without a refresh_token grant or with resource indicators disabled
 * constructs as plain oidc-provider, with MRRT inactive (said once at start).
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
export function withMrrt<P extends ProviderClass>(Base: P, options?: MrrtOptions): MrrtProviderClass<P> {
  if (typeof Base !== 'function' || !(Base === Provider || Base.prototype instanceof Provider)) {
    throw new MrrtTypeError('withMrrt: the first argument must be the oidc-provider Provider class (or a subclass of it)');
  }
  if (typeof Base.prototype.registerGrantType !== 'function' || !Object.getOwnPropertyDescriptor(Provider, 'ctx')?.get) {
    throw new MrrtTypeError('withMrrt: this oidc-provider version is not supported (registerGrantType and Provider.ctx are required)');
  }
  // validated here, once, so that a bad option fails where the class is made
  const classConfig = options === undefined ? undefined : resolveOptions(options);
  // this class's exchanges in flight, by the request's Koa context: nothing is added to the context
  // itself, and each leaves the map when its request's grant handling ends
  const exchanges = new Map<KoaContextWithOIDC, Exchange>();
  // the exchange in flight on `provider`, read at every watched read of a model: another provider
  // of this class, even sharing its storage, never sees it; with no exchange in flight not even
  // the request's context is looked up
  const exchangeOn = (provider: unknown): Exchange | undefined => {
    if (exchanges.size === 0) return undefined;
    const ctx = Base.ctx;
    const exchange = ctx === undefined ? undefined : exchanges.get(ctx);
    return exchange !== undefined && exchange.ctx.oidc.provider === provider ? exchange : undefined;
  };
  // the exchange of the request being served, when `ctx` is that request's context: another
  // request's or another provider's question is not this exchange's
  const exchangeOf = (ctx: unknown): Exchange | undefined => {
    if (exchanges.size === 0) return undefined;
    return Base.ctx === ctx ? exchanges.get(ctx as KoaContextWithOIDC) : undefined;
  };
  // the exchanges that watch no model (a refusal, see Exchange.watchesModels): the models and
  // getResourceServerInfo never see them; the rotation hook finds them by the request's context
  const refusals = new Map<KoaContextWithOIDC, Exchange>();
  // oidc-provider asks rotateRefreshToken of a refresh request: its exchange is told, and a request
  // handed on with none installed (a target outside the cached policy) is checked
  const rotationAsked = (ctx: KoaContextWithOIDC): void => {
    const exchange = (refusals.size === 0 ? undefined : refusals.get(ctx)) ?? (exchanges.size === 0 ? undefined : exchanges.get(ctx));
    if (exchange) exchange.rotationAsked();
    else rotationAskedOutsidePolicy(ctx);
  };
  // a refusal may rely on the observed rotateRefreshToken only when oidc-provider surely gets it: a
  // Provider subclass's constructor may replace it, so under one every exchange watches the models
  // (the refresh token's consume is then the last moment to refuse)
  const rotationObserved = Base === Provider;
  const install = (ctx: KoaContextWithOIDC, exchange: Exchange | undefined): void => {
    if (exchange === undefined) {
      exchanges.delete(ctx);
      refusals.delete(ctx);
    } else if (exchange.watchesModels || !rotationObserved) exchanges.set(ctx, exchange);
    else refusals.set(ctx, exchange);
  };
  // set while a constructor runs: oidc-provider registers its grants synchronously from the constructor
  let constructing: { readonly setup: ExchangeSetup; hooked: boolean } | undefined;

  const Mrrt = class MrrtProvider extends (Base as ProviderClass) {
    declare readonly [mrrtConfiguration]: MrrtConfiguration;

    constructor(issuer: string, given: Configuration = {}) {
      if (typeof given !== 'object' || given === null) throw new MrrtTypeError('configuration must be an object');
      // the MRRT options may live in the provider configuration itself, per instance; oidc-provider never sees them
      const { mrrt: instanceOptions, ...configuration } = given as Configuration & { mrrt?: unknown };
      const config = configurationFor(classConfig, options, instanceOptions);
      const active = configuration.features?.resourceIndicators?.enabled !== false;
      const setup: ExchangeSetup = {
        config,
        isFirstParty: config.isFirstParty ?? staticFirstParty(configuration),
        getResourceServerInfo: configuration.features?.resourceIndicators?.getResourceServerInfo as ResourceServerInfo | undefined,
        oidcScopes: oidcScopesOf(configuration),
      };
      const state = active ? { setup, hooked: false } : undefined;
      constructing = state;
      try {
        super(issuer, active ? observedConfiguration(configuration, exchangeOf, rotationAsked) : configuration);
      } finally {
        constructing = undefined;
      }

      let inactive: string | undefined;
      if (!active) inactive = INACTIVE.resourceIndicators;
      else if (!state!.hooked) inactive = INACTIVE.refreshToken;
      if (inactive) warnOnce(inactive);
      else watched.set(this, watchedModels(this, exchangeOn));
      installations.set(this, { ...setup, inactive });
      Object.defineProperty(this, mrrtConfiguration, { value: config, enumerable: false });
    }

    override registerGrantType<Params extends object>(
      name: string,
      handler: (ctx: TokenEndpointGrantContext<Params>) => void | Promise<void>,
      params?: ParamList,
      dupes?: ParamList,
    ): void {
      if (name === 'refresh_token' && constructing) {
        handler = createExchangeHandler(constructing.setup, install, { rotationObserved })(handler as unknown as Handler) as never;
        params = new Set([...toSet(params), 'audience']);
        dupes = new Set([...toSet(dupes), 'resource', 'audience']);
        constructing.hooked = true;
      }
      super.registerGrantType(name, handler, params, dupes);
    }
  };
  // During an exchange that watches the models (see Exchange.watchesModels), and only then,
  // oidc-provider is handed the watched models (see observers.ts).
  // Outside one, the deployment's code and oidc-provider's share the provider's own models: a method
  // a deployment replaces on them (instrumentation, a test stub) is still reached through the
  // watched models' overrides, which call the models they extend, and never replaces an override.
  const modelGetter = (name: keyof WatchedModels): PropertyDescriptor => {
    // the given class's own getter when it overrides oidc-provider's
    let own: (() => unknown) | undefined;
    for (let at: object | null = Base.prototype; at !== null && !own; at = Object.getPrototypeOf(at) as object | null) {
      own = Object.getOwnPropertyDescriptor(at, name)?.get;
    }
    if (!own) throw new MrrtTypeError(`withMrrt: this oidc-provider version is not supported (Provider.prototype.${name} is not a getter)`);
    const model = own;
    return {
      configurable: true,
      get(this: object) {
        const base: unknown = model.call(this);
        return exchangeOn(this) === undefined ? base : (watched.get(this)?.[name] ?? base);
      },
    };
  };
  Object.defineProperties(Mrrt.prototype, { RefreshToken: modelGetter('RefreshToken'), Grant: modelGetter('Grant') });
  return Mrrt as unknown as MrrtProviderClass<P>;
}
