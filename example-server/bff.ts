import { createHash, randomBytes } from 'node:crypto';

import express, { type Request, type Response, type Router } from 'express';
import * as jose from 'jose';

import type { DemoClient, ExampleConfig } from './config.js';
import { html, json, sendPage, type Html } from './html.js';
import type { Logger } from './log.js';

/**
 * The home page's "backend for frontend": a server-side web app, registered as the first-party
 * client `demo-app`, that signs the user in with the authorization code flow + PKCE against this
 * same provider and keeps every token server-side, in a session keyed by an HttpOnly cookie. The
 * browser only ever sees decoded token contents, never a token.
 */
export interface BffOptions {
  readonly config: ExampleConfig;
  readonly client: DemoClient;
  /** The provider's issuer as the browser reaches it (authorization endpoint). */
  readonly issuer: string;
  /** The public base URL of the server (redirect URI, API URLs shown on the page). */
  readonly baseUrl: string;
  /** Where the server reaches itself for server-side calls (token endpoint, APIs). */
  readonly internalUrl: string;
  /** The provider's public keys, to verify the ID token. */
  readonly keys: jose.JWTVerifyGetKey;
  readonly logger: Logger;
  /** Server-side session lifetime, ms. Default one hour. */
  readonly sessionTtl?: number;
}

interface Decoded {
  readonly header: jose.ProtectedHeaderParameters;
  readonly payload: jose.JWTPayload;
}
interface ApiCall {
  readonly url: string;
  readonly token: string;
  readonly status: number;
  readonly wwwAuthenticate: string | undefined;
  readonly body: unknown;
}
interface Exchange {
  readonly request: Record<string, string>;
  readonly status: number;
  readonly body: unknown;
  readonly decoded: Decoded | undefined;
  readonly refreshTokenBefore: string;
  readonly refreshTokenAfter: string;
}
interface DemoSession {
  readonly id: string;
  expires: number;
  pending?: { readonly state: string; readonly verifier: string; readonly nonce: string };
  refreshToken?: string;
  idToken?: jose.JWTPayload;
  /** The ID token as issued, for the provider's logout (id_token_hint). */
  idTokenValue?: string;
  grantedScope?: string;
  tokens: { messages?: string; billing?: string };
  steps: { messages?: ApiCall; exchange?: Exchange; billing?: ApiCall; mixup?: ApiCall };
  error?: string;
}

const COOKIE = 'demo_sid';
const MAX_SESSIONS = 10_000;
const random = (): string => randomBytes(32).toString('base64url');
/** A short, stable, non-reversible label for a token, so the page can show "the same refresh token" without the token. */
export const fingerprint = (token: string): string => `sha256:${createHash('sha256').update(token).digest('base64url').slice(0, 12)}`;

function readCookie(req: Request, name: string): string | undefined {
  for (const part of (req.get('cookie') ?? '').split(';')) {
    const [key, ...value] = part.trim().split('=');
    if (key === name) return value.join('=');
  }
  return undefined;
}

function decode(token: string | undefined): Decoded | undefined {
  if (!token) return undefined;
  try {
    return { header: jose.decodeProtectedHeader(token), payload: jose.decodeJwt(token) };
  } catch {
    return undefined;
  }
}

/** A token response with every token replaced by its fingerprint. */
function redact(body: unknown): unknown {
  if (typeof body !== 'object' || body === null) return body;
  return Object.fromEntries(
    Object.entries(body).map(([key, value]) =>
      ['access_token', 'refresh_token', 'id_token'].includes(key) && typeof value === 'string' ? [key, `<${fingerprint(value)}>`] : [key, value],
    ),
  );
}

async function readBody(response: globalThis.Response): Promise<unknown> {
  const text = await response.text();
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export function bffRoutes(options: BffOptions): Router {
  const { config, client, issuer, baseUrl, internalUrl, keys, logger } = options;
  const sessionTtl = options.sessionTtl ?? 3600_000;
  const demo = config.demoApp;
  const redirectUri = new URL(client.redirect_paths[0] ?? '/callback', baseUrl).href;
  const internalIssuer = new URL(new URL(issuer).pathname, internalUrl).href.replace(/\/$/, '');
  const secure = baseUrl.startsWith('https:');
  const sessions = new Map<string, DemoSession>();
  const router = express.Router();
  const basic = `Basic ${Buffer.from(`${encodeURIComponent(client.client_id)}:${encodeURIComponent(client.client_secret)}`).toString('base64')}`;
  const messagesUrl = `${baseUrl}/api/messages`;
  const billingUrl = `${baseUrl}/api/billing`;

  const sessionOf = (req: Request): DemoSession | undefined => {
    const id = readCookie(req, COOKIE);
    const session = id ? sessions.get(id) : undefined;
    if (session && session.expires < Date.now()) {
      sessions.delete(session.id);
      return undefined;
    }
    return session;
  };
  const newSession = (res: Response): DemoSession => {
    const now = Date.now();
    for (const [id, old] of sessions) if (old.expires < now || sessions.size >= MAX_SESSIONS) sessions.delete(id);
    const session: DemoSession = { id: random(), expires: now + sessionTtl, tokens: {}, steps: {} };
    sessions.set(session.id, session);
    res.set('Set-Cookie', `${COOKIE}=${session.id}; Path=/; HttpOnly; SameSite=Lax${secure ? '; Secure' : ''}; Max-Age=${Math.floor(sessionTtl / 1000)}`);
    return session;
  };

  const tokenRequest = async (params: Record<string, string>): Promise<{ status: number; body: Record<string, unknown> }> => {
    const response = await fetch(`${internalIssuer}/token`, {
      method: 'POST',
      headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: new URLSearchParams(params).toString(),
      signal: AbortSignal.timeout(10_000),
    });
    const body = await readBody(response);
    return {
      status: response.status,
      body: (typeof body === 'object' && body !== null ? body : { error: 'invalid_response', error_description: String(body) }) as Record<string, unknown>,
    };
  };

  const callApi = async (url: string, label: string, token: string): Promise<ApiCall> => {
    const path = new URL(url).pathname;
    const response = await fetch(new URL(path, internalUrl), {
      headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
      signal: AbortSignal.timeout(10_000),
    });
    return {
      url,
      token: label,
      status: response.status,
      wwwAuthenticate: response.headers.get('www-authenticate') ?? undefined,
      body: await readBody(response),
    };
  };

  // back to the step the user acted on, so its result is where they are looking
  const back = (res: Response, step?: string): void => {
    res.redirect(303, step ? `/#${step}` : '/');
  };

  router.get('/', (req, res) => {
    sendPage(res, 'MRRT demo', homePage(options, sessionOf(req), { messagesUrl, billingUrl }));
  });

  router.post('/signin', (req, res) => {
    const old = sessionOf(req);
    if (old) sessions.delete(old.id);
    const session = newSession(res);
    const verifier = random();
    session.pending = { state: random(), verifier, nonce: random() };
    const url = new URL(`${issuer}/auth`);
    url.search = new URLSearchParams({
      client_id: client.client_id,
      response_type: 'code',
      redirect_uri: redirectUri,
      scope: demo.loginScope,
      resource: demo.loginAudience,
      code_challenge: createHash('sha256').update(verifier).digest('base64url'),
      code_challenge_method: 'S256',
      state: session.pending.state,
      nonce: session.pending.nonce,
      // oidc-provider only honours offline_access (a refresh token) when consent is prompted for
      prompt: 'consent',
    }).toString();
    res.redirect(303, url.href);
  });

  router.get(new URL(redirectUri).pathname, async (req, res) => {
    const session = sessionOf(req);
    const pending = session?.pending;
    const state = typeof req.query.state === 'string' ? req.query.state : undefined;
    if (!session || !pending || state !== pending.state) {
      sendPage(
        res,
        'Sign-in failed',
        html`<h1>Sign-in failed</h1>
          <p>This sign-in response does not belong to a sign-in started here (state mismatch or expired session).</p>
          <p><a href="/">Start again</a></p>`,
        400,
      );
      return;
    }
    delete session.pending;
    if (typeof req.query.error === 'string') {
      const description = typeof req.query.error_description === 'string' ? req.query.error_description : '';
      session.error =
        req.query.error === 'access_denied'
          ? `Sign-in ${description.includes('denied') ? 'denied' : 'cancelled'}: ${description}`
          : `${req.query.error}: ${description}`;
      back(res, 'step-1');
      return;
    }
    const code = typeof req.query.code === 'string' ? req.query.code : '';
    const { status, body } = await tokenRequest({
      grant_type: 'authorization_code',
      code,
      redirect_uri: redirectUri,
      code_verifier: pending.verifier,
      resource: demo.loginAudience,
    });
    if (status !== 200 || typeof body.access_token !== 'string' || typeof body.refresh_token !== 'string' || typeof body.id_token !== 'string') {
      session.error = `code exchange failed (${status}): ${String(body.error ?? '')} ${String(body.error_description ?? '')}`;
      logger.warn({ event: 'demo.code_exchange_failed', status, error: body.error });
      back(res);
      return;
    }
    try {
      const { payload } = await jose.jwtVerify(body.id_token, keys, { issuer, audience: client.client_id, algorithms: ['RS256'] });
      if (payload.nonce !== pending.nonce) throw new Error('nonce mismatch');
      session.idToken = payload;
      session.idTokenValue = body.id_token;
    } catch (err) {
      session.error = `the ID token is invalid: ${(err as Error).message}`;
      back(res);
      return;
    }
    session.refreshToken = body.refresh_token;
    session.tokens = { messages: body.access_token };
    session.grantedScope = typeof body.scope === 'string' ? body.scope : undefined;
    session.steps = {};
    delete session.error;
    back(res);
  });

  const signedIn = (req: Request, res: Response): DemoSession | undefined => {
    const session = sessionOf(req);
    if (session?.refreshToken) return session;
    back(res);
    return undefined;
  };

  router.post('/demo/messages', async (req, res) => {
    const session = signedIn(req, res);
    if (!session) return;
    session.steps.messages = await callApi(messagesUrl, 'the messages access token', session.tokens.messages ?? '');
    back(res, 'step-2');
  });

  router.post('/demo/exchange', async (req, res) => {
    const session = signedIn(req, res);
    if (!session?.refreshToken) return;
    const before = session.refreshToken;
    const { status, body } = await tokenRequest({ grant_type: 'refresh_token', refresh_token: before, audience: demo.mrrtAudience });
    if (status === 200 && typeof body.access_token === 'string') {
      session.tokens.billing = body.access_token;
      // with refresh token rotation the response carries the new one; without it, the same one stays valid
      if (typeof body.refresh_token === 'string') session.refreshToken = body.refresh_token;
      delete session.steps.billing;
    }
    session.steps.exchange = {
      request: {
        grant_type: 'refresh_token',
        refresh_token: `<${fingerprint(before)}>`,
        audience: demo.mrrtAudience,
        client_id: `${client.client_id} (HTTP Basic)`,
      },
      status,
      body: redact(body),
      decoded: status === 200 && typeof body.access_token === 'string' ? decode(body.access_token) : undefined,
      refreshTokenBefore: fingerprint(before),
      refreshTokenAfter: fingerprint(session.refreshToken),
    };
    back(res, 'step-3');
  });

  router.post('/demo/billing', async (req, res) => {
    const session = signedIn(req, res);
    if (!session) return;
    if (!session.tokens.billing) {
      back(res, 'step-3');
      return;
    }
    session.steps.billing = await callApi(billingUrl, 'the billing access token (from the MRRT exchange)', session.tokens.billing);
    back(res, 'step-4');
  });

  router.post('/demo/mixup', async (req, res) => {
    const session = signedIn(req, res);
    if (!session) return;
    session.steps.mixup = await callApi(billingUrl, 'the messages access token (wrong audience)', session.tokens.messages ?? '');
    back(res, 'step-5');
  });

  // signs out of the app and, through RP-initiated logout, of the provider too (the next sign-in asks who you are)
  router.post('/signout', async (req, res) => {
    const session = sessionOf(req);
    const logout = new URL(`${issuer}/session/end`);
    logout.search = new URLSearchParams({
      client_id: client.client_id,
      post_logout_redirect_uri: new URL('/', baseUrl).href,
      ...(session?.idTokenValue ? { id_token_hint: session.idTokenValue } : {}),
    }).toString();
    if (session) {
      sessions.delete(session.id);
      if (session.refreshToken) {
        try {
          await fetch(`${internalIssuer}/token/revocation`, {
            method: 'POST',
            headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
            body: new URLSearchParams({ token: session.refreshToken, token_type_hint: 'refresh_token' }).toString(),
            signal: AbortSignal.timeout(10_000),
          });
        } catch (err) {
          logger.warn({ event: 'demo.revocation_failed', message: (err as Error).message });
        }
      }
    }
    res.set('Set-Cookie', `${COOKIE}=; Path=/; HttpOnly; SameSite=Lax${secure ? '; Secure' : ''}; Max-Age=0`);
    res.redirect(303, logout.href);
  });

  return router;
}

const button = (action: string, label: string): Html =>
  html`<form class="inline" method="post" action="${action}"><button type="submit">${label}</button></form>`;

function tokenView(title: string, token: string | undefined): Html {
  const decoded = decode(token);
  if (!decoded || !token) return html``;
  return html`<details open>
    <summary>${title} <code>${fingerprint(token)}</code></summary>
    <p class="muted">header</p>
    ${json(decoded.header)}
    <p class="muted">payload</p>
    ${json(decoded.payload)}
  </details>`;
}

function callView(call: ApiCall | undefined): Html {
  if (!call) return html``;
  const ok = call.status >= 200 && call.status < 300;
  return html`<p>GET <code>${call.url}</code> with ${call.token} → <strong class="${ok ? 'ok' : 'bad'}">${call.status}</strong></p>
    ${call.wwwAuthenticate ? html`<p><code>WWW-Authenticate: ${call.wwwAuthenticate}</code></p>` : ''}${json(call.body)}`;
}

function homePage(options: BffOptions, session: DemoSession | undefined, urls: { messagesUrl: string; billingUrl: string }): Html {
  const { config, issuer } = options;
  const demo = config.demoApp;
  const signedIn = Boolean(session?.refreshToken);
  const exchange = session?.steps.exchange;
  return html`<h1>Multi-Resource Refresh Tokens: the demo</h1>
    <p>
      This one process runs an OpenID Provider (<a href="${issuer}/.well-known/openid-configuration">${issuer}</a>) with the MRRT extension, two APIs (<code
        >${urls.messagesUrl}</code
      >
      for <code>${demo.loginAudience}</code> and <code>${urls.billingUrl}</code> for <code>${demo.mrrtAudience}</code>), the MRRT admin API at
      <code>/admin</code>, and this page, a server-side app (client <code>${demo.clientId}</code>) that keeps the tokens on the server. The story: sign in for
      the messages API, call it, then exchange <em>the same refresh token</em> for a billing API token, which the sign-in never asked for: the app's MRRT policy
      allows it.
    </p>
    <p>
      The same story in the browser with Auth0's own SDK (<code>@auth0/auth0-spa-js</code>, <code>useMrrt: true</code>), unmodified:
      <a href="/spa">the SPA page</a>.
    </p>
    ${session?.error ? html`<p class="error" role="alert">${session.error}</p>` : ''}

    <div class="step" id="step-1">
      <h2>1. Sign in for the messages API</h2>
      ${
        signedIn && session
          ? html`<p>
                Signed in as <strong>${String(session.idToken?.name ?? session.idToken?.sub)}</strong> (sub <code>${String(session.idToken?.sub)}</code>).
                Granted scope: <code>${session.grantedScope ?? ''}</code>. Refresh token: <code>${fingerprint(session.refreshToken ?? '')}</code> (kept on the
                server; shown as a fingerprint).
              </p>
              ${button('/signout', 'Sign out')}`
          : html`<p>Authorization code flow with PKCE, <code>scope=${demo.loginScope}</code>, <code>resource=${demo.loginAudience}</code>.</p>
              ${button('/signin', 'Sign in')}`
      }
    </div>

    ${
      signedIn && session
        ? html` <div class="step" id="step-2">
              <h2>2. Call the messages API</h2>
              ${tokenView('Access token for the messages API', session.tokens.messages)} ${button('/demo/messages', 'Call the messages API')}
              ${callView(session.steps.messages)}
            </div>

            <div class="step" id="step-3">
              <h2>3. Exchange the same refresh token for the billing API (MRRT)</h2>
              <p>
                <code>POST ${issuer}/token</code> with <code>grant_type=refresh_token</code>, the refresh token from step 1 and
                <code>audience=${demo.mrrtAudience}</code>.
              </p>
              ${button('/demo/exchange', 'Exchange the same refresh token for billing (MRRT)')}
              ${
                exchange
                  ? html`<p>request</p>
                      ${json(exchange.request)}
                      <p>response <strong class="${exchange.status === 200 ? 'ok' : 'bad'}">${exchange.status}</strong></p>
                      ${json(exchange.body)}
                      <p>
                        Refresh token before <code>${exchange.refreshTokenBefore}</code>, after
                        <code>${exchange.refreshTokenAfter}</code>
                        ${exchange.refreshTokenBefore === exchange.refreshTokenAfter ? '(the same refresh token, still valid)' : '(rotated by the provider; the new one carries exactly the original grant)'}.
                      </p>
                      ${
                        exchange.decoded
                          ? html`<p class="muted">decoded access token header</p>
                              ${json(exchange.decoded.header)}
                              <p class="muted">payload</p>
                              ${json(exchange.decoded.payload)}`
                          : ''
                      }`
                  : ''
              }
            </div>

            <div class="step" id="step-4">
              <h2>4. Call the billing API</h2>
              ${session.tokens.billing ? button('/demo/billing', 'Call the billing API with the billing token') : html`<p class="muted">Do step 3 first.</p>`}
              ${callView(session.steps.billing)}
            </div>

            <div class="step" id="step-5">
              <h2>5. Send the messages token to the billing API</h2>
              <p>Each access token is for exactly one API. The billing API verifies <code>aud</code>, so a token for the messages API is refused.</p>
              ${button('/demo/mixup', 'Send the messages token to the billing API')} ${callView(session.steps.mixup)}
            </div>`
        : ''
    }

    <h2>Behind the scenes</h2>
    <ul>
      <li>
        MRRT policy of <code>${demo.clientId}</code>: managed through the admin API at <code>/admin/clients/${demo.clientId}/policy</code> (client credentials
        token for <code>${config.admin.clientId}</code>, scope <code>${config.admin.scope}</code>, audience <code>${config.admin.audience}</code>; see the
        README).
      </li>
      <li>Provider keys: <a href="${issuer}/jwks">${issuer}/jwks</a>. Server logs: one JSON line per request and per MRRT exchange on stdout.</li>
    </ul>`;
}
