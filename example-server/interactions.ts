import { createHash, timingSafeEqual } from 'node:crypto';

import express, { type Request, type Response, type Router } from 'express';
import type Provider from 'oidc-provider';

import type { PolicyStore } from '../lib/index.js';
import type { DemoUser, ExampleConfig } from './config.js';
import { html, sendPage, type Html } from './html.js';
import type { Logger } from './log.js';

const digest = (value: string): Buffer => createHash('sha256').update(value).digest();

/** The user with these credentials, compared in constant time. */
export function authenticate(users: readonly DemoUser[], username: unknown, password: unknown): DemoUser | undefined {
  if (typeof username !== 'string' || typeof password !== 'string') return undefined;
  let found: DemoUser | undefined;
  for (const user of users) {
    const ok = timingSafeEqual(digest(user.username), digest(username)) && timingSafeEqual(digest(user.password), digest(password));
    if (ok) found = user;
  }
  return found;
}

interface ConsentDetails {
  missingOIDCScope?: string[];
  missingOIDCClaims?: string[];
  missingResourceScopes?: Record<string, string[]>;
}

/** The demo users' credentials, shown on every sign-in page. */
/** The username and password form of a sign-in page, posting to `action`, with the last attempt's error. */
export const signInForm = (action: string, error: string | undefined, username: string): Html =>
  html`${error ? html`<p class="error" role="alert">${error}</p>` : ''}
    <form method="post" action="${action}">
      <label>Username <input name="username" autocomplete="username" required autofocus value="${username}" /></label>
      <label>Password <input name="password" type="password" autocomplete="current-password" required /></label>
      <button type="submit">Sign in</button>
    </form>`;

export const demoCredentials = (users: readonly DemoUser[]): Html =>
  html`<h2>Demo credentials</h2>
    <table>
      <tr>
        <th>username</th>
        <th>password</th>
      </tr>
      ${users.map(
        (user) =>
          html`<tr>
            <td><code>${user.username}</code></td>
            <td><code>${user.password}</code></td>
          </tr>`,
      )}
    </table>`;

/** A request for another step of the sign-in than the one in progress: 400, and where to start again. */
export function wrongStep(res: Response, href: string, label: string): void {
  sendPage(
    res,
    'Error',
    html`<h1>Wrong sign-in step</h1>
      <p>Start again from <a href="${href}">${label}</a>.</p>`,
    400,
  );
}

function loginPage(config: ExampleConfig, uid: string, clientName: string, error?: string, username = ''): Html {
  return html`<h1>Sign in</h1>
    <p><strong>${clientName}</strong> asks you to sign in.</p>
    ${signInForm(`/interaction/${encodeURIComponent(uid)}/login`, error, username)}
    <form method="post" action="/interaction/${encodeURIComponent(uid)}/abort"><button type="submit">Cancel</button></form>
    ${demoCredentials(config.users)}`;
}

function consentPage(uid: string, clientName: string, user: string, details: ConsentDetails, policyAudiences: readonly string[]): Html {
  const oidc = details.missingOIDCScope ?? [];
  const resources = Object.entries(details.missingResourceScopes ?? {});
  return html`<h1>Allow access?</h1>
    <p>Signed in as <strong>${user}</strong>. <strong>${clientName}</strong> asks for:</p>
    <ul>
      ${oidc.length ? html`<li>your identity: <code>${oidc.join(' ')}</code>${details.missingOIDCClaims?.length ? html` (claims <code>${details.missingOIDCClaims.join(' ')}</code>)` : ''}</li>` : ''}
      ${resources.map(([api, scopes]) => html`<li><code>${api}</code>: <code>${scopes.join(' ')}</code></li>`)}
    </ul>
    ${
      policyAudiences.length
        ? html`<p class="muted">
            This first-party app has a Multi-Resource Refresh Token policy: with the refresh token it receives it may also obtain access tokens for
            ${policyAudiences.map((audience, i) => html`${i ? ', ' : ''}<code>${audience}</code>`)} without asking you again.
          </p>`
        : ''
    }
    <form class="inline" method="post" action="/interaction/${encodeURIComponent(uid)}/confirm"><button type="submit">Allow</button></form>
    <form class="inline" method="post" action="/interaction/${encodeURIComponent(uid)}/deny"><button type="submit">Deny</button></form>`;
}

/**
 * The example's own login and consent pages (instead of oidc-provider's devInteractions), served at
 * `/interaction/:uid` as configured in `interactions.url`.
 */
export function interactionRoutes(provider: Provider, config: ExampleConfig, store: PolicyStore, logger: Logger): Router {
  const router = express.Router();
  const form = express.urlencoded({ extended: false, limit: '8kb', parameterLimit: 10 });

  const clientName = async (clientId: unknown): Promise<string> => {
    const client = typeof clientId === 'string' ? await provider.Client.find(clientId) : undefined;
    return String(client?.metadata().client_name ?? client?.clientId ?? 'An application');
  };
  const policyAudiences = async (clientId: unknown): Promise<string[]> => {
    if (typeof clientId !== 'string') return [];
    try {
      return (await store.get(clientId))?.policies.map((entry) => entry.audience) ?? [];
    } catch {
      return [];
    }
  };

  router.get('/:uid', async (req: Request, res: Response) => {
    const { uid, prompt, params, session } = await provider.interactionDetails(req, res);
    if (uid !== req.params.uid) {
      wrongStep(res, '/', 'the home page');
      return;
    }
    const name = await clientName(params.client_id);
    if (prompt.name === 'login') {
      sendPage(res, 'Sign in', loginPage(config, uid, name));
      return;
    }
    const user = config.users.find((candidate) => candidate.id === session?.accountId);
    sendPage(
      res,
      'Allow access',
      consentPage(uid, name, user?.name ?? session?.accountId ?? '', prompt.details as ConsentDetails, await policyAudiences(params.client_id)),
    );
  });

  router.post('/:uid/login', form, async (req: Request, res: Response) => {
    const { uid, prompt, params } = await provider.interactionDetails(req, res);
    if (uid !== req.params.uid || prompt.name !== 'login') {
      wrongStep(res, '/', 'the home page');
      return;
    }
    const body = (req.body ?? {}) as Record<string, unknown>;
    const user = authenticate(config.users, body.username, body.password);
    if (!user) {
      logger.warn({ event: 'login.failed', client_id: params.client_id });
      sendPage(
        res,
        'Sign in',
        loginPage(
          config,
          uid,
          await clientName(params.client_id),
          'Unknown username or wrong password.',
          typeof body.username === 'string' ? body.username : '',
        ),
        401,
      );
      return;
    }
    logger.info({ event: 'login.succeeded', subject: user.id, client_id: params.client_id });
    await provider.interactionFinished(req, res, { login: { accountId: user.id } }, { mergeWithLastSubmission: false });
  });

  router.post('/:uid/confirm', async (req: Request, res: Response) => {
    const { uid, prompt, params, session, grantId } = await provider.interactionDetails(req, res);
    if (uid !== req.params.uid || prompt.name !== 'consent' || !session) {
      wrongStep(res, '/', 'the home page');
      return;
    }
    const existing = grantId ? await provider.Grant.find(grantId) : undefined;
    const grant = existing ?? new provider.Grant({ accountId: session.accountId, clientId: String(params.client_id) });
    const details = prompt.details as ConsentDetails;
    if (details.missingOIDCScope?.length) grant.addOIDCScope(details.missingOIDCScope.join(' '));
    if (details.missingOIDCClaims?.length) grant.addOIDCClaims(details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) grant.addResourceScope(indicator, scopes.join(' '));
    const saved = await grant.save();
    logger.info({ event: 'consent.granted', subject: session.accountId, client_id: params.client_id });
    await provider.interactionFinished(req, res, { consent: { grantId: saved } }, { mergeWithLastSubmission: true });
  });

  router.post('/:uid/abort', async (req: Request, res: Response) => {
    await provider.interactionDetails(req, res);
    await provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'the user cancelled the sign-in' },
      { mergeWithLastSubmission: false },
    );
  });

  router.post('/:uid/deny', async (req: Request, res: Response) => {
    const { session, params } = await provider.interactionDetails(req, res);
    logger.info({ event: 'consent.denied', subject: session?.accountId, client_id: params.client_id });
    await provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'the user denied the app access' },
      { mergeWithLastSubmission: false },
    );
  });

  return router;
}
