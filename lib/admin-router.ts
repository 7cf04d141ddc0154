import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type Provider from 'oidc-provider';
import type { KoaContextWithOIDC } from 'oidc-provider';

import { ADMIN_DEFAULTS } from './defaults.js';
import { MrrtTypeError, PolicyConflictError, PolicyStoreError, PolicyValidationError, type PolicyIssue } from './errors.js';
import { isResourceIndicator, parseWithin, type Policy } from './policy.js';
import type { MrrtClient } from './options.js';
import { mrrtInstallation, type MrrtInstallation } from './provider.js';
import {
  askResourceServer,
  audienceRefusal,
  clientRefusal,
  definedScopes,
  resourceServerRefusal,
  type ResourceServerAnswer,
  type TargetRefusal,
} from './rules.js';
import type { PolicyAuditEvent, PolicyRecord, PolicyStore } from './store.js';

export type { PolicyAuditEvent } from './store.js';

/** A refusal returned by an {@link AdminAuthorize} function. */
export interface AdminDenial {
  readonly status: 401 | 403;
  readonly error: string;
  readonly error_description?: string;
}

/** The caller, when allowed; `actor` is recorded in audit events. */
export interface AdminGrant {
  readonly actor: string;
}

/**
 * Decides whether a request to the admin API may proceed: `true` or an {@link AdminGrant} allows,
 * `false` (403) or an {@link AdminDenial} refuses. Throwing refuses with a 500.
 */
export type AdminAuthorize = (req: Request) => boolean | AdminGrant | AdminDenial | Promise<boolean | AdminGrant | AdminDenial>;

/** Options of {@link createPolicyRouter}. */
export interface PolicyRouterOptions {
  /** The provider built with `withMrrt`: clients, APIs and deny-list are checked against it. Required. */
  provider: Provider;
  /** Who may use the API. Required: the router refuses to exist without it. */
  authorize: AdminAuthorize;
  /**
   * The admin API's own audience (resource indicator), as its access tokens carry it. Required, and
   * it must be on `withMrrt`'s `denyList` (the router refuses to be built otherwise), so that no
   * refresh token can ever be exchanged for a token to this API (SPEC P5). `null` only when the
   * admin API accepts no OAuth access tokens at all.
   */
  audience: string | null;
  /** Where policies are written. Default: the store the provider's MRRT reads from. */
  store?: PolicyStore;
  /** Largest accepted request body, as for `express.json`. Default `'32kb'`. */
  bodyLimit?: string | number;
  /** Called after every successful change. */
  onAudit?: (event: PolicyAuditEvent) => void;
}

/** Where the caller's `actor` travels from authorization to the route, for audit events. */
const ACTOR = 'oidc-provider-mrrt.actor';

class AdminError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    readonly description: string,
    readonly issues?: readonly PolicyIssue[],
  ) {
    super(description);
  }
}

const etag = (version: string): string => `"${version}"`;

function ifMatchOf(req: Request): string | null | undefined | '*' {
  const ifNoneMatch = req.get('if-none-match');
  if (ifNoneMatch !== undefined) {
    if (ifNoneMatch.trim() !== '*') throw new AdminError(400, 'invalid_request', 'If-None-Match supports only "*"');
    return null;
  }
  const header = req.get('if-match');
  if (header === undefined) return undefined;
  const value = header.trim();
  if (value === '*') return '*';
  const match = /^"([^"]{1,128})"$/.exec(value);
  if (!match) throw new AdminError(400, 'invalid_request', 'If-Match must be "*" or one strong ETag');
  return match[1]!;
}

function clientIdOf(req: Request): string {
  const { clientId } = req.params;
  if (typeof clientId !== 'string' || clientId.length === 0 || clientId.length > 1024) {
    throw new AdminError(400, 'invalid_request', 'client id must be 1 to 1024 characters');
  }
  return clientId;
}

function recordBody(record: PolicyRecord): Record<string, unknown> {
  return { client_id: record.clientId, policies: record.policies, version: record.version };
}

/**
 * An Express router administering MRRT policies (SPEC A1–A4):
 *
 * | method | path | |
 * | --- | --- | --- |
 * | GET | `/clients?after=&limit=` | client ids with a policy, paginated |
 * | GET | `/clients/:clientId/policy` | the policy, with its `ETag` |
 * | PUT | `/clients/:clientId/policy` | replace it: body `{ "policies": [...] }`, `If-Match` / `If-None-Match: *` |
 * | DELETE | `/clients/:clientId/policy` | delete it, `If-Match` |
 *
 * Writes are validated against the provider (the client exists and is first-party; every audience
 * is a known API that allows skipping consent and is not deny-listed; every scope is defined by it),
 * every problem reported with its JSON path; a refused request changes nothing. The router owns
 * the two paths above (another method on them is a 405 with `Allow`); any other request falls
 * through to the next route of the app, untouched.
 *
 * @example
 * ```ts
 * const MrrtProvider = withMrrt(Provider, { store, denyList: ['https://admin.example.com'] });
 * app.use('/admin', createPolicyRouter({
 *   provider,
 *   audience: 'https://admin.example.com',
 *   authorize: jwtAuthorizer({ key: createLocalJWKSet(jwks), issuer, audience: 'https://admin.example.com', scope: 'mrrt:admin' }),
 * }));
 * ```
 */
export function createPolicyRouter(options: PolicyRouterOptions): Router {
  if (typeof options !== 'object' || options === null) throw new MrrtTypeError('createPolicyRouter options must be an object');
  const { provider, authorize, bodyLimit = ADMIN_DEFAULTS.bodyLimit, onAudit, audience, store: storeOption, ...unknown } = options;
  const extra = Object.keys(unknown);
  if (extra.length) throw new MrrtTypeError(`"${extra[0]}" is not a createPolicyRouter option`);
  if (typeof authorize !== 'function') throw new MrrtTypeError('"authorize" option is required: the policy admin API must not run unprotected');
  const installation = mrrtInstallation(provider);
  if (!installation) throw new MrrtTypeError('"provider" option must be a provider built with withMrrt');
  if (installation.inactive) throw new MrrtTypeError(`"provider" option: MRRT is inactive on this provider (${installation.inactive})`);
  if (audience === undefined) {
    throw new MrrtTypeError(
      '"audience" option is required: the admin API\'s own audience, which must be on withMrrt\'s denyList (null if the admin API accepts no OAuth access tokens)',
    );
  }
  if (audience !== null && (typeof audience !== 'string' || !isResourceIndicator(audience))) {
    throw new MrrtTypeError('"audience" option must be an absolute URI or null');
  }
  // SPEC P5: a refresh token must never become an admin token; the provider's own list says so
  if (audience !== null && !installation.config.denyList.has(audience)) {
    throw new MrrtTypeError(
      `"audience" option: ${audience} must be on the provider's MRRT denyList (withMrrt's options or its configuration's mrrt key), so that no refresh token can be exchanged for an admin token`,
    );
  }
  const store = storeOption ?? installation.config.store;
  if (typeof store !== 'object' || store === null || typeof store.set !== 'function' || typeof store.list !== 'function') {
    throw new MrrtTypeError('"store" option must be a PolicyStore');
  }
  if (onAudit !== undefined && typeof onAudit !== 'function') throw new MrrtTypeError('"onAudit" option must be a function');
  if (typeof bodyLimit !== 'string' && typeof bodyLimit !== 'number') throw new MrrtTypeError('"bodyLimit" option must be a string or a number');

  const audit = (event: PolicyAuditEvent): void => {
    onAudit?.(event);
    (provider as unknown as { emit(event: string, ...args: unknown[]): boolean }).emit('mrrt.policy_changed', event);
  };

  /** Router-level, for this router's own paths only: no caching of answers, and the caller's authorization. */
  const authorizeRequest = async (req: Request, res: Response): Promise<void> => {
    res.set('Cache-Control', 'no-store');
    const decision = await authorize(req);
    if (decision === false) throw new AdminError(403, 'access_denied', 'not allowed to administer MRRT policies');
    if (typeof decision === 'object' && decision !== null && 'status' in decision) {
      throw new AdminError(decision.status === 401 ? 401 : 403, decision.error, decision.error_description ?? 'not allowed');
    }
    if (decision !== true && !(typeof decision === 'object' && decision !== null && 'actor' in decision)) {
      throw new MrrtTypeError('authorize must return true, false, { actor } or { status, error }');
    }
    res.locals[ACTOR] = decision === true ? undefined : decision.actor;
  };
  const actorOf = (res: Response): string | undefined => res.locals[ACTOR] as string | undefined;

  const guard = async (req: Request, res: Response, next: NextFunction): Promise<void> => {
    await authorizeRequest(req, res);
    next();
  };
  const methodNotAllowed =
    (allowed: string) =>
    (_req: Request, res: Response): void => {
      res.set('Allow', allowed);
      throw new AdminError(405, 'invalid_request', `this path accepts ${allowed}`);
    };

  const router = express.Router();
  const list = router.route('/clients').all(guard);
  const policy = router.route('/clients/:clientId/policy').all(guard);

  list.get(async (req, res) => {
    const after = req.query.after;
    const limitText = req.query.limit;
    if (after !== undefined && (typeof after !== 'string' || after.length === 0)) throw new AdminError(400, 'invalid_request', '"after" must be a client id');
    let limit: number = ADMIN_DEFAULTS.pageSize;
    if (limitText !== undefined) {
      if (typeof limitText !== 'string' || !/^[1-9]\d{0,3}$/.test(limitText) || Number(limitText) > ADMIN_DEFAULTS.maxPageSize) {
        throw new AdminError(400, 'invalid_request', `"limit" must be an integer between 1 and ${ADMIN_DEFAULTS.maxPageSize}`);
      }
      limit = Number(limitText);
    }
    const page = await store.list({ ...(after === undefined ? {} : { after }), limit });
    res.json({ clients: page.clientIds, ...(page.next === undefined ? {} : { next: page.next }) });
  });

  policy.get(async (req, res) => {
    const record = await store.get(clientIdOf(req));
    if (!record) throw new AdminError(404, 'not_found', 'this client has no MRRT policy');
    res.set('ETag', etag(record.version)).json(recordBody(record));
  });

  const requireJson = (req: Request, _res: Response, next: NextFunction): void => {
    if (!req.is('application/json')) throw new AdminError(415, 'invalid_request', 'the body must be application/json');
    next();
  };
  policy.put(requireJson, express.json({ limit: bodyLimit, strict: true, type: () => true }), async (req, res) => {
    const clientId = clientIdOf(req);
    const precondition = ifMatchOf(req);
    const policies = await validateWrite(provider as unknown as ProviderLike, installation, clientId, req.body, req, res);

    const current = await store.get(clientId).catch((err: unknown) => {
      if (err instanceof PolicyStoreError && err.code === 'ERR_MRRT_STORE_CORRUPT') return undefined;
      throw err;
    });
    if (precondition === '*' && !current) throw new AdminError(412, 'precondition_failed', 'the client has no policy to replace');
    const ifMatch = precondition === '*' ? current?.version : precondition;
    const record = await store.set(clientId, policies, { ifMatch });
    audit({
      action: 'put',
      clientId,
      actor: actorOf(res),
      previousVersion: current?.version,
      version: record.version,
      policies: record.policies,
      at: new Date().toISOString(),
    });
    res
      .status(current ? 200 : 201)
      .set('ETag', etag(record.version))
      .json(recordBody(record));
  });

  policy.delete(async (req, res) => {
    const clientId = clientIdOf(req);
    const precondition = ifMatchOf(req);
    if (precondition === null) throw new AdminError(400, 'invalid_request', 'If-None-Match is not supported on DELETE');
    const current = await store.get(clientId).catch((err: unknown) => {
      if (err instanceof PolicyStoreError && err.code === 'ERR_MRRT_STORE_CORRUPT') return undefined;
      throw err;
    });
    if (precondition !== undefined && !current) throw new AdminError(412, 'precondition_failed', 'the client has no policy');
    const deleted = await store.delete(clientId, precondition === undefined ? {} : { ifMatch: precondition === '*' ? current!.version : precondition });
    if (!deleted) throw new AdminError(404, 'not_found', 'this client has no MRRT policy');
    audit({
      action: 'delete',
      clientId,
      actor: actorOf(res),
      previousVersion: current?.version,
      version: undefined,
      policies: undefined,
      at: new Date().toISOString(),
    });
    res.status(204).end();
  });

  list.all(methodNotAllowed('GET, HEAD'));
  policy.all(methodNotAllowed('GET, HEAD, PUT, DELETE'));

  // errors of this router's own paths only (an error from elsewhere in the app never reaches it)
  router.use('/clients', (err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const failure = toAdminError(err);
    // RFC 6750 §3.1: a request without credentials gets the scheme only, no error code
    if (failure.status === 401) res.set('WWW-Authenticate', req.get('authorization') === undefined ? 'Bearer' : `Bearer error="${failure.error}"`);
    res
      .status(failure.status)
      .set('Cache-Control', 'no-store')
      .json({
        error: failure.error,
        error_description: failure.description,
        ...(failure.issues ? { issues: failure.issues } : {}),
      });
  });

  return router;
}

function toAdminError(err: unknown): AdminError {
  if (err instanceof AdminError) return err;
  if (err instanceof PolicyConflictError)
    return new AdminError(412, 'precondition_failed', 'the policy was changed by someone else; read it again and retry with its ETag');
  if (err instanceof PolicyValidationError) return new AdminError(400, 'invalid_request', err.message, err.issues);
  if (err instanceof PolicyStoreError) {
    return err.code === 'ERR_MRRT_STORE_UNAVAILABLE'
      ? new AdminError(503, 'temporarily_unavailable', 'the policy store is unavailable')
      : new AdminError(500, 'server_error', 'the stored policy is invalid');
  }
  const type = (err as { type?: unknown }).type;
  const status = (err as { status?: unknown }).status;
  if (type === 'entity.too.large') return new AdminError(413, 'invalid_request', 'the request body is too large');
  if (type === 'entity.parse.failed') return new AdminError(400, 'invalid_request', 'the request body is not valid JSON');
  if ((typeof type === 'string' && type.startsWith('encoding.')) || type === 'charset.unsupported') {
    return new AdminError(415, 'invalid_request', 'unsupported body encoding');
  }
  if (typeof status === 'number' && status >= 400 && status < 500) {
    // express and body-parser report malformed paths and bodies (bad escapes, bad compression) this way
    return new AdminError(400, 'invalid_request', 'the request is malformed');
  }
  return new AdminError(500, 'server_error', 'the request could not be processed');
}

async function validateWrite(
  provider: ProviderLike,
  installation: MrrtInstallation,
  clientId: string,
  body: unknown,
  req: Request,
  res: Response,
): Promise<Policy> {
  const { config } = installation;
  const issues: PolicyIssue[] = [];
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new AdminError(400, 'invalid_request', 'the body must be an object { "policies": [...] }', [
      { path: '$', message: 'must be an object with "policies"' },
    ]);
  }
  for (const key of Object.keys(body)) {
    if (key !== 'policies') issues.push({ path: `$[${JSON.stringify(key)}]`, message: 'is not an allowed property (only "policies")' });
  }
  let policies: Policy | undefined;
  try {
    policies = parseWithin((body as { policies?: unknown }).policies, config.limits);
  } catch (err) {
    if (!(err instanceof PolicyValidationError)) throw err;
    issues.push(...err.issues.map((issue) => ({ path: `$.policies${issue.path.slice(1)}`, message: issue.message })));
  }
  if (issues.length === 0 && policies) {
    issues.push(...(await checkAgainstProvider(provider, installation, clientId, policies, req, res)));
  }
  if (issues.length !== 0) {
    throw new AdminError(400, 'invalid_request', `invalid MRRT policy: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
  }
  return policies!;
}

interface ProviderLike {
  Client: { find(id: string): Promise<unknown> };
  createContext(req: Request, res: Response): KoaContextWithOIDC;
  OIDCContext: new (ctx: KoaContextWithOIDC) => KoaContextWithOIDC['oidc'];
}

const ADMIN_REFUSALS: Record<TargetRefusal, string> = {
  deny_listed: 'is deny-listed for MRRT',
  consent_required: 'does not allow skipping user consent',
  unknown_resource: 'is not a known API (resource server)',
  not_first_party: 'MRRT policies can only be stored for first-party clients',
  no_policy: 'is not in the policy',
  not_in_policy: 'is not in the policy',
  multiple_targets: 'names more than one API',
  public_client_unprotected: 'is not reachable by this client',
};

/**
 * The context the deployment's `getResourceServerInfo` gets for an admin write: a real oidc-provider
 * context for this HTTP request, with the policy's client loaded and no account, params or session
 * (there is no end-user in an admin request).
 */
function adminContext(provider: ProviderLike, req: Request, res: Response, client: MrrtClient): KoaContextWithOIDC {
  const ctx = provider.createContext(req, res);
  const oidc = new provider.OIDCContext(ctx);
  Object.defineProperty(ctx, 'oidc', { value: oidc, configurable: true });
  // no parameters were sent to oidc-provider: empty, so that reading them works as in any flow
  Object.assign(oidc, { params: {} });
  oidc.entity('Client', client as never);
  return ctx;
}

/** SPEC P3, with the rules the token endpoint applies: the client exists and is first-party; each audience is a known, consent-skippable, allowed API defining each scope. */
async function checkAgainstProvider(
  provider: ProviderLike,
  { config, getResourceServerInfo, isFirstParty, oidcScopes }: MrrtInstallation,
  clientId: string,
  policies: Policy,
  req: Request,
  res: Response,
): Promise<PolicyIssue[]> {
  const client = (await provider.Client.find(clientId).catch(() => undefined)) as MrrtClient | undefined;
  if (!client) return [{ path: 'client_id', message: `no client "${clientId}" is registered` }];
  const ineligible = await clientRefusal(isFirstParty, client);
  if (ineligible) return [{ path: 'client_id', message: ADMIN_REFUSALS[ineligible] }];

  const issues: PolicyIssue[] = [];
  for (const [i, entry] of policies.entries()) {
    const at = `$.policies[${i}]`;
    let answer: ResourceServerAnswer | undefined;
    try {
      const refused = await audienceRefusal(config, entry.audience, client);
      if (refused) {
        issues.push({ path: `${at}.audience`, message: ADMIN_REFUSALS[refused] });
        continue;
      }
      // without a getResourceServerInfo no API is known, and no context is built to ask
      answer = getResourceServerInfo && (await askResourceServer(getResourceServerInfo, adminContext(provider, req, res, client), entry.audience, client));
    } catch {
      // the deployment's own function failed on this request: the write cannot be checked, and is refused as such
      issues.push({ path: `${at}.audience`, message: 'could not be checked against the provider (its resource server lookup failed)' });
      continue;
    }
    const refused = resourceServerRefusal(config, answer);
    if (refused) {
      issues.push({ path: `${at}.audience`, message: ADMIN_REFUSALS[refused] });
      continue;
    }
    const defined = definedScopes(answer!);
    entry.scope.forEach((scope, j) => {
      if (oidcScopes.has(scope))
        issues.push({ path: `${at}.scope[${j}]`, message: `"${scope}" is an OpenID scope of the provider, never part of an API token` });
      else if (!defined.has(scope)) issues.push({ path: `${at}.scope[${j}]`, message: `"${scope}" is not a scope defined by ${entry.audience}` });
    });
  }
  return issues;
}
