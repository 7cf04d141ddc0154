import type Provider from 'oidc-provider';
import type { Configuration, KoaContextWithOIDC } from 'oidc-provider';

import type { Exchange } from './exchange.js';
import { MrrtTypeError } from './errors.js';

/**
 * Where the extension watches oidc-provider from inside. Each observer forwards what it sees to the
 * request's {@link Exchange} — one call each — and holds no rule; outside an exchange it is a plain
 * call of what it wraps. Everything here is per provider instance: oidc-provider builds its model
 * classes for each provider, so nothing is shared with another provider in the process.
 */

type ExchangeOf = () => Exchange | undefined;
type Getter = (this: unknown) => Set<string>;

function getterOf(proto: object, name: string): Getter {
  for (let at: object | null = proto; at !== null; at = Object.getPrototypeOf(at) as object | null) {
    const descriptor = Object.getOwnPropertyDescriptor(at, name);
    if (descriptor?.get) return descriptor.get as Getter;
  }
  throw new MrrtTypeError(`oidc-provider-mrrt: RefreshToken.prototype.${name} is not a getter; this oidc-provider version is not supported`);
}

function methodOf<T extends (...args: never[]) => unknown>(target: object, name: string, owner: string): T {
  const method = (target as Record<string, unknown>)[name];
  if (typeof method !== 'function')
    throw new MrrtTypeError(`oidc-provider-mrrt: ${owner}.${name} is not a function; this oidc-provider version is not supported`);
  return method as T;
}

const define = (target: object, name: string, descriptor: PropertyDescriptor): void => {
  Object.defineProperty(target, name, { configurable: true, ...descriptor });
};

/**
 * Observes this provider's `RefreshToken` and `Grant` models for the request's exchange: the
 * refresh token oidc-provider finds, the scopes and resources it reads from it (and from its
 * rotation), the scope it reads from the Grant for the target, and the moment before it consumes
 * the refresh token. The models' stored data is never changed.
 */
export function observeModels(provider: Provider, exchangeOf: ExchangeOf): void {
  const { RefreshToken, Grant } = provider as unknown as { RefreshToken: object & { prototype: object }; Grant: object & { prototype: object } };

  const find = methodOf<(this: unknown, value: string, ...rest: unknown[]) => Promise<unknown>>(RefreshToken, 'find', 'RefreshToken');
  define(RefreshToken, 'find', {
    writable: true,
    value: function findRefreshToken(this: unknown, value: string, ...rest: unknown[]): Promise<unknown> {
      const found = find.call(this, value, ...rest);
      const exchange = exchangeOf();
      const ctx = (provider.constructor as typeof Provider).ctx;
      return exchange && ctx
        ? found.then((token) => {
            exchange.sawRefreshToken(ctx, value, token as never);
            return token;
          })
        : found;
    },
  });

  const tokenProto = RefreshToken.prototype;
  const scopes = getterOf(tokenProto, 'scopes');
  define(tokenProto, 'scopes', {
    get(this: object) {
      const own = scopes.call(this);
      return exchangeOf()?.presentScopes(this, own) ?? own;
    },
  });
  const resourceIndicators = getterOf(tokenProto, 'resourceIndicators');
  define(tokenProto, 'resourceIndicators', {
    get(this: object) {
      const own = resourceIndicators.call(this);
      return exchangeOf()?.presentResources(this, own) ?? own;
    },
  });
  const consume = methodOf<(this: unknown) => Promise<void>>(tokenProto, 'consume', 'RefreshToken.prototype');
  define(tokenProto, 'consume', {
    writable: true,
    value: function consumeRefreshToken(this: object): Promise<void> {
      const exchange = exchangeOf();
      const ctx = (provider.constructor as typeof Provider).ctx;
      return exchange && ctx ? exchange.beforeRotation(ctx, this).then(() => consume.call(this)) : consume.call(this);
    },
  });

  const grantProto = Grant.prototype;
  const getResourceScopeFiltered = methodOf<(this: unknown, resource: string, filter: Iterable<string>) => string>(
    grantProto,
    'getResourceScopeFiltered',
    'Grant.prototype',
  );
  define(grantProto, 'getResourceScopeFiltered', {
    writable: true,
    value: function getResourceScopeFilteredForExchange(this: object, resource: string, filter: Iterable<string>): string {
      const own = getResourceScopeFiltered.call(this, resource, filter);
      return exchangeOf()?.presentGrantScope(this, resource, filter, own) ?? own;
    },
  });
}

type ResourceIndicators = NonNullable<NonNullable<Configuration['features']>['resourceIndicators']>;
type GetResourceServerInfo = NonNullable<ResourceIndicators['getResourceServerInfo']>;

/**
 * The deployment's configuration with its `getResourceServerInfo` observed: during an exchange
 * oidc-provider's question goes to the exchange, which answers with the answer its rules were
 * checked against. Outside an exchange the deployment's function is called as configured.
 */
export function observeResourceServerInfo(configuration: Configuration, exchangeOf: ExchangeOf): Configuration {
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
          const exchange = exchangeOf();
          if (!exchange) return ask(ctx, resource, client);
          return exchange.resourceServerInfo(ctx, resource, () => ask(ctx, resource, client)) as ReturnType<GetResourceServerInfo>;
        },
      },
    },
  };
}
