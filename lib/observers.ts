import type Provider from 'oidc-provider';
import type { Configuration, KoaContextWithOIDC } from 'oidc-provider';

import type { Exchange } from './exchange.js';
import { MrrtTypeError } from './errors.js';

/**
 * Where the extension watches oidc-provider from inside. Each observer forwards what it sees to the
 * request's {@link Exchange} — one call each — and holds no rule.
 *
 * Two observers live as long as the provider: `RefreshToken.find` and the configured
 * `getResourceServerInfo`; outside an exchange each is a plain call of what it wraps after one
 * lookup. Everything else is watched on the instances one exchange reads — the refresh token it
 * finds, that token's rotation and the Grant — as own properties of those objects: no model class
 * or prototype is changed, so oidc-provider runs its own code for every other request, and an
 * object of another request can never show this one's overlay.
 */

type ExchangeOf = () => Exchange | undefined;
type Getter = (this: unknown) => Set<string>;
type Consume = (this: unknown) => Promise<void>;
type GetResourceScopeFiltered = (this: unknown, resource: string, filter: Iterable<string>) => string;
type Entity = (this: unknown, key: string, value: unknown) => void;

function getterOf(proto: object, name: string, owner: string): Getter {
  for (let at: object | null = proto; at !== null; at = Object.getPrototypeOf(at) as object | null) {
    const descriptor = Object.getOwnPropertyDescriptor(at, name);
    if (descriptor?.get) return descriptor.get as Getter;
  }
  throw new MrrtTypeError(`oidc-provider-mrrt: ${owner}.${name} is not a getter; this oidc-provider version is not supported`);
}

function methodOf<T extends (...args: never[]) => unknown>(target: object, name: string, owner: string): T {
  const method = (target as Record<string, unknown>)[name];
  if (typeof method !== 'function')
    throw new MrrtTypeError(`oidc-provider-mrrt: ${owner}.${name} is not a function; this oidc-provider version is not supported`);
  return method as T;
}

type ModelClass = object & { readonly prototype: object };

/**
 * Observes this provider's refresh tokens for the request's exchange. When oidc-provider finds the
 * request's refresh token and the exchange asks to watch it, the token's scopes and resources as
 * oidc-provider reads them, and the moment before it consumes the token, go to the exchange; so do
 * the rotated refresh token and the Grant oidc-provider sets on the request's context. The models'
 * stored data is never changed: what is watched are reads, on own properties of this request's
 * objects, which no model stores.
 */
export function observeModels(provider: Provider, exchangeOf: ExchangeOf): void {
  const { RefreshToken, Grant, OIDCContext } = provider as unknown as { RefreshToken: ModelClass; Grant: ModelClass; OIDCContext: ModelClass };
  const find = methodOf<(this: unknown, value: string, ...rest: unknown[]) => Promise<unknown>>(RefreshToken, 'find', 'RefreshToken');
  // read once, from the classes as oidc-provider built them; the watched objects keep using these
  const scopes = getterOf(RefreshToken.prototype, 'scopes', 'RefreshToken.prototype');
  const resourceIndicators = getterOf(RefreshToken.prototype, 'resourceIndicators', 'RefreshToken.prototype');
  const consume = methodOf<Consume>(RefreshToken.prototype, 'consume', 'RefreshToken.prototype');
  const getResourceScopeFiltered = methodOf<GetResourceScopeFiltered>(Grant.prototype, 'getResourceScopeFiltered', 'Grant.prototype');
  const entity = methodOf<Entity>(OIDCContext.prototype, 'entity', 'OIDCContext.prototype');

  // each watched object, and the exchange it reports to; the property descriptors below are the same
  // objects for every request, so watched objects share their shapes and oidc-provider's code stays fast
  const watched = new WeakMap<object, Exchange>();
  const tokenWatch: PropertyDescriptorMap = {
    scopes: {
      configurable: true,
      get(this: object) {
        const own = scopes.call(this);
        return watched.get(this)?.presentScopes(this, own) ?? own;
      },
    },
    resourceIndicators: {
      configurable: true,
      get(this: object) {
        const own = resourceIndicators.call(this);
        return watched.get(this)?.presentResources(this, own) ?? own;
      },
    },
    consume: {
      configurable: true,
      writable: true,
      value: function consumeRefreshToken(this: object): Promise<void> {
        const exchange = watched.get(this);
        return exchange ? exchange.beforeRotation(this).then(() => consume.call(this)) : consume.call(this);
      },
    },
  };
  const grantWatch: PropertyDescriptorMap = {
    getResourceScopeFiltered: {
      configurable: true,
      writable: true,
      value: function getResourceScopeFilteredForExchange(this: object, resource: string, filter: Iterable<string>): string {
        const own = getResourceScopeFiltered.call(this, resource, filter);
        return watched.get(this)?.presentGrantScope(this, resource, filter, own) ?? own;
      },
    },
  };
  // the rotated refresh token and the Grant are first handed to the request's context: watched from there on
  const contextWatch: PropertyDescriptorMap = {
    entity: {
      configurable: true,
      writable: true,
      value: function entityOfExchange(this: object, key: string, value: unknown): void {
        entity.call(this, key, value);
        const exchange = watched.get(this);
        if (!exchange || typeof value !== 'object' || value === null || watched.has(value)) return;
        if (key === 'Grant') watch(value, exchange, grantWatch);
        else if (key === 'RefreshToken') watch(value, exchange, tokenWatch);
      },
    },
  };
  const watch = (target: object, exchange: Exchange, descriptors: PropertyDescriptorMap): void => {
    watched.set(target, exchange);
    Object.defineProperties(target, descriptors);
  };

  Object.defineProperty(RefreshToken, 'find', {
    configurable: true,
    writable: true,
    value: function findRefreshToken(this: unknown, value: string, ...rest: unknown[]): Promise<unknown> {
      const found = find.call(this, value, ...rest);
      const exchange = exchangeOf();
      if (!exchange) return found;
      return found.then((token) => {
        if (typeof token === 'object' && token !== null && exchange.sawRefreshToken(value, token)) {
          watch(token, exchange, tokenWatch);
          watch(exchange.ctx.oidc, exchange, contextWatch);
        }
        return token;
      });
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
          return exchange.resourceServerInfo(resource, () => ask(ctx, resource, client)) as ReturnType<GetResourceServerInfo>;
        },
      },
    },
  };
}
