import Provider, { errors, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';

import { MrrtTypeError } from './errors.js';
import { staticFirstParty } from './rules.js';

/** Koa middleware as `provider.use()` takes it. */
export type ProviderMiddleware = Parameters<Provider['use']>[0];

/** The client of a request, as oidc-provider hands it to configuration functions. */
export type Auth0Client = NonNullable<KoaContextWithOIDC['oidc']['client']>;

/**
 * Auth0's endpoint paths as oidc-provider `routes`: what Auth0's SDKs call below their `domain`.
 * Discovery stays at `/.well-known/openid-configuration`, where Auth0 has it too.
 */
export const AUTH0_ROUTES = Object.freeze({
  authorization: '/authorize',
  token: '/oauth/token',
  revocation: '/oauth/revoke',
  userinfo: '/userinfo',
  jwks: '/.well-known/jwks.json',
  end_session: '/v2/logout',
  pushed_authorization_request: '/oauth/par',
  device_authorization: '/oauth/device/code',
  backchannel_authentication: '/bc-authorize',
} as const);

/** Options of {@link auth0Configuration}. All optional. */
export interface Auth0ConfigurationOptions {
  /**
   * Whether a client is first-party. First-party clients get `offline_access` (a refresh token)
   * without `prompt=consent`, and skip the consent prompt for the APIs in `allowSkippingConsent`.
   * Default: the client is one of the configuration's static `clients` with `first_party: true`, the
   * same rule `withMrrt` applies.
   */
  isFirstParty?: (client: Auth0Client) => boolean | Promise<boolean>;
  /**
   * The APIs whose consent a first-party client skips (Auth0's "Allow Skipping User Consent"), as a
   * list of resource indicators or a function. A request that names any other API goes through the
   * consent prompt as before. Default: none (consent prompts unchanged).
   */
  allowSkippingConsent?: readonly string[] | ((resource: string, client: Auth0Client) => boolean | Promise<boolean>);
}

type ExtraParamValidator = (ctx: KoaContextWithOIDC, value: string | undefined, client: Auth0Client) => void | Promise<void>;
type ResourceIndicators = NonNullable<NonNullable<Configuration['features']>['resourceIndicators']>;
type RpInitiatedLogout = NonNullable<NonNullable<Configuration['features']>['rpInitiatedLogout']>;

const AUTHORIZATION_ROUTES = new Set(['authorization', 'resume', 'pushed_authorization_request', 'device_authorization', 'backchannel_authentication']);
const OFFLINE_ROUTES = new Set(['authorization']);
const KNOWN = new Set(['isFirstParty', 'allowSkippingConsent']);

function resolveOptions(options: Auth0ConfigurationOptions | undefined, configuration: Configuration) {
  if (options === null || (options !== undefined && typeof options !== 'object')) throw new MrrtTypeError('auth0Configuration: options must be an object');
  const given = options ?? {};
  for (const key of Object.keys(given)) {
    if (!KNOWN.has(key)) throw new MrrtTypeError(`auth0Configuration: unknown option "${key}"`);
  }
  const { isFirstParty, allowSkippingConsent } = given;
  if (isFirstParty !== undefined && typeof isFirstParty !== 'function') throw new MrrtTypeError('"isFirstParty" option must be a function');
  let skipConsent: (resource: string, client: Auth0Client) => boolean | Promise<boolean>;
  if (allowSkippingConsent === undefined) {
    skipConsent = () => false;
  } else if (typeof allowSkippingConsent === 'function') {
    skipConsent = allowSkippingConsent;
  } else if (Array.isArray(allowSkippingConsent) && allowSkippingConsent.every((value) => typeof value === 'string')) {
    const allowed = new Set<string>(allowSkippingConsent);
    skipConsent = (resource) => allowed.has(resource);
  } else {
    throw new MrrtTypeError('"allowSkippingConsent" option must be an array of resource indicators or a function');
  }
  return { isFirstParty: isFirstParty ?? staticFirstParty(configuration), skipConsent };
}

function extraParamsObject(extraParams: Configuration['extraParams']): Record<string, ExtraParamValidator | null> {
  if (extraParams === undefined) return {};
  if (Array.isArray(extraParams) || extraParams instanceof Set) {
    return Object.fromEntries([...(extraParams as Iterable<string>)].map((name) => [name, null]));
  }
  return { ...(extraParams as Record<string, ExtraParamValidator | null>) };
}

const autoSubmitLogout: NonNullable<RpInitiatedLogout['logoutSource']> = (ctx, form) => {
  // Auth0's /v2/logout ends the session without asking; logout=yes ends it for every client, as there
  const confirm = form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>');
  ctx.body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Signing out</title></head>
<body>${confirm}<noscript><button type="submit" form="op.logoutForm">Sign out</button></noscript>
<script>document.getElementById('op.logoutForm').submit()</script></body></html>`;
};

/**
 * Returns a copy of an oidc-provider configuration with what apps written for Auth0's SDKs
 * (auth0-spa-js, auth0-react, auth0-auth-js, …) expect from their tenant, so that such an app
 * changes only `domain` and `clientId`:
 *
 * - Auth0's endpoint paths ({@link AUTH0_ROUTES}: `/authorize`, `/oauth/token`, `/v2/logout`, …);
 *   the operator's own `routes` win.
 * - `audience` at the authorization endpoint names the API like `resource` (RFC 8707); both with
 *   different values is `invalid_request`.
 * - The granted API is used at the token endpoint when the request names none (the SDKs send no
 *   `audience` with the code, nor with a plain refresh): `useGrantedResource` answers `true`.
 * - First-party clients get `offline_access` without `prompt=consent` at the authorization endpoint
 *   (oidc-provider otherwise drops it, and no refresh token is issued; a request object or a pushed
 *   request keeps oidc-provider's rule), and skip consent for the APIs in `allowSkippingConsent`
 *   (through `loadExistingGrant`, after the operator's own).
 * - ID tokens are signed with RS256 (the only algorithm Auth0's SDKs accept); the provider's `jwks`
 *   needs an RSA key.
 * - RP-initiated logout ends the session without a confirmation page (the operator's own
 *   `logoutSource` wins). Pair with {@link auth0LogoutParameters} for `returnTo`.
 * - CORS at the token, revocation and userinfo endpoints: only from an origin of one of the
 *   client's `redirect_uris` (the operator's own `clientBasedCORS` wins).
 *
 * The issuer must be `https://<domain>/`, with the trailing slash: the SDKs compare the ID token's
 * `iss` with it. Everything else in the configuration is kept as given.
 *
 * @example
 * ```ts
 * const provider = new MrrtProvider('https://login.example.com/', auth0Configuration({
 *   ...yourConfiguration,
 * }, { allowSkippingConsent: ['https://api.example.com'] }));
 * provider.use(auth0LogoutParameters());
 * ```
 */
export function auth0Configuration(configuration: Configuration, options?: Auth0ConfigurationOptions): Configuration {
  if (typeof configuration !== 'object' || configuration === null) throw new MrrtTypeError('auth0Configuration: configuration must be an object');
  const { isFirstParty, skipConsent } = resolveOptions(options, configuration);
  const features = configuration.features ?? {};
  const resourceIndicators: ResourceIndicators = features.resourceIndicators ?? {};
  const operatorDefaultResource = resourceIndicators.defaultResource;
  const operatorLoadGrant = configuration.loadExistingGrant;
  const extraParams = extraParamsObject(configuration.extraParams);
  const operatorAudience = extraParams.audience;

  const firstParty = async (client: Auth0Client | undefined): Promise<boolean> => client !== undefined && (await isFirstParty(client)) === true;

  const validateAudience: ExtraParamValidator = async (ctx, audience, client) => {
    const params = ctx.oidc.params!;
    if (audience !== undefined && params.resource !== undefined && params.resource !== audience) {
      throw new errors.InvalidRequest('audience and resource must name the same API when both are given');
    }
    if (OFFLINE_ROUTES.has(ctx.oidc.route) && offlineAccessDropped(ctx, client) && (await firstParty(client))) {
      params.scope = `${String(params.scope ?? '')} offline_access`.trim();
    }
    if (operatorAudience) await operatorAudience(ctx, audience, client);
  };

  return {
    ...configuration,
    routes: { ...AUTH0_ROUTES, ...configuration.routes },
    extraParams: { ...extraParams, audience: validateAudience },
    clientDefaults: { ...configuration.clientDefaults, id_token_signed_response_alg: 'RS256' },
    clientBasedCORS:
      configuration.clientBasedCORS ?? ((_ctx, origin, client) => client.redirectUris?.some((uri) => URL.parse(uri)?.origin === origin) ?? false),
    loadExistingGrant: async (ctx) => {
      const existing = operatorLoadGrant ? await operatorLoadGrant(ctx) : await defaultLoadGrant(ctx);
      const { client, session } = ctx.oidc;
      if (!session?.accountId || !(await firstParty(client))) return existing;
      const resources = Object.entries(ctx.oidc.resourceServers ?? {});
      for (const [indicator] of resources) {
        if ((await skipConsent(indicator, client!)) !== true) return existing;
      }
      const grant = existing ?? new ctx.oidc.provider.Grant({ clientId: client!.clientId, accountId: session.accountId });
      const oidcScope = [...ctx.oidc.requestParamOIDCScopes];
      if (oidcScope.length) grant.addOIDCScope(oidcScope.join(' '));
      const claims = [...ctx.oidc.requestParamClaims];
      if (claims.length) grant.addOIDCClaims(claims);
      for (const [indicator, server] of resources) {
        const scope = [...ctx.oidc.requestParamScopes].filter((value) => server.scopes.has(value));
        if (scope.length) grant.addResourceScope(indicator, scope.join(' '));
      }
      await grant.save();
      return grant;
    },
    features: {
      ...features,
      resourceIndicators: {
        ...resourceIndicators,
        defaultResource: async (ctx, client, oneOf) => {
          const audience: unknown = ctx.oidc.params?.audience;
          if (!oneOf && AUTHORIZATION_ROUTES.has(ctx.oidc.route) && typeof audience === 'string' && audience) return audience;
          if (operatorDefaultResource) return operatorDefaultResource(ctx, client, oneOf);
          return oneOf;
        },
        useGrantedResource: () => true,
      },
      rpInitiatedLogout: {
        ...features.rpInitiatedLogout,
        logoutSource: features.rpInitiatedLogout?.logoutSource ?? autoSubmitLogout,
      },
    },
  };
}

async function defaultLoadGrant(ctx: KoaContextWithOIDC) {
  const grantId = ctx.oidc.result?.consent?.grantId ?? ctx.oidc.session?.grantIdFor(ctx.oidc.client!.clientId);
  return grantId ? ctx.oidc.provider.Grant.find(grantId) : undefined;
}

/** Whether oidc-provider dropped a requested `offline_access` (it keeps it only with `prompt=consent`). */
function offlineAccessDropped(ctx: KoaContextWithOIDC, client: Auth0Client): boolean {
  const params = ctx.oidc.params!;
  const raw = (ctx.method === 'POST' ? ctx.oidc.body : ctx.query) as Record<string, unknown> | undefined;
  const requested = typeof raw?.scope === 'string' && raw.scope.split(' ').includes('offline_access');
  const kept = String(params.scope ?? '')
    .split(' ')
    .includes('offline_access');
  return (
    requested &&
    !kept &&
    String(params.response_type ?? '')
      .split(' ')
      .includes('code') &&
    client.grantTypeAllowed('refresh_token')
  );
}

/**
 * Koa middleware for `provider.use()`: Auth0's `returnTo` at the logout endpoint becomes
 * `post_logout_redirect_uri` (it must be one of the client's `post_logout_redirect_uris`; the SDKs
 * send `client_id`, which oidc-provider needs to check it). `path` is the logout route, default
 * Auth0's `/v2/logout`.
 *
 * @example
 * ```ts
 * provider.use(auth0LogoutParameters());
 * ```
 */
export function auth0LogoutParameters(path: string = AUTH0_ROUTES.end_session): ProviderMiddleware {
  if (typeof path !== 'string' || !path.startsWith('/')) throw new MrrtTypeError('auth0LogoutParameters: path must be a path starting with "/"');
  return async (ctx, next) => {
    if (ctx.path === path && (ctx.method === 'GET' || ctx.method === 'HEAD')) {
      const { returnTo, ...rest } = ctx.query;
      if (typeof returnTo === 'string' && rest.post_logout_redirect_uri === undefined) {
        ctx.query = { ...rest, post_logout_redirect_uri: returnTo };
      }
    }
    await next();
  };
}
