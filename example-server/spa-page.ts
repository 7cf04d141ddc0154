/**
 * The SPA page's HTML and its script. The script is browser JavaScript kept as a string (it is served
 * as `/spa/app.js`, beside the SDK's own bundle, under a CSP that allows scripts from this origin
 * only). It uses nothing but the SDK's public API: `createAuth0Client` with `domain` and `clientId`,
 * `loginWithRedirect`, `handleRedirectCallback`, `getTokenSilently`, `getUser` and `logout`.
 */
import { html, type Html } from './html.js';

/** What the page script reads from `<main data-…>`. */
export interface SpaPageSettings {
  /** The SDK's `domain`: the tenant's origin (`http://127.0.0.1:3000`; the SDK adds `https://` only when no scheme is given). */
  readonly domain: string;
  readonly clientId: string;
  readonly path: string;
  readonly loginAudience: string;
  readonly loginScope: string;
  readonly mrrtAudience: string;
  readonly mrrtScope: string;
  readonly sdkVersion: string;
}

/** The page's Content-Security-Policy: scripts from this origin only; the SDK runs its token worker from a blob URL. */
export const SPA_CSP =
  "default-src 'none'; script-src 'self'; connect-src 'self'; worker-src blob:; style-src 'unsafe-inline'; " +
  "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

export function spaPage(settings: SpaPageSettings): Html {
  const { domain, clientId, path, loginAudience, loginScope, mrrtAudience, mrrtScope, sdkVersion } = settings;
  return html`<main
      id="spa"
      data-domain="${domain}"
      data-client-id="${clientId}"
      data-path="${path}"
      data-login-audience="${loginAudience}"
      data-login-scope="${loginScope}"
      data-mrrt-audience="${mrrtAudience}"
      data-mrrt-scope="${mrrtScope}"
    >
      <h1>MRRT with Auth0's own SPA SDK</h1>
      <p>
        This page is a single-page app built on <code>@auth0/auth0-spa-js</code> ${sdkVersion}, unmodified, served from <code>node_modules</code>. It is
        configured exactly as for an Auth0 tenant, with only <code>domain</code> and <code>clientId</code> changed:
        <code>createAuth0Client({ domain: '${domain}', clientId: '${clientId}', useRefreshTokens: true, useMrrt: true })</code>. The tenant it talks to is
        oidc-provider with <code>withMrrt</code> (<code>profile: 'auth0'</code>) and <code>auth0Configuration</code>, at the root of this origin.
        <a href="/">Back to the demo</a>
      </p>
      <p id="status" class="muted">Loading the SDK…</p>
      <p id="dpop-mode" class="muted"></p>

      <div class="step">
        <h2>1. Sign in</h2>
        <p>
          <code>loginWithRedirect({ authorizationParams: { scope: '${loginScope}' } })</code> for the messages API (the client's
          <code>audience: '${loginAudience}'</code>; the SDK adds <code>openid profile email offline_access</code>).
        </p>
        <button type="button" id="login">Sign in</button> <button type="button" id="logout">Sign out</button>
        <pre id="user" hidden></pre>
      </div>

      <div class="step">
        <h2>2. Call the messages API</h2>
        <p><code>getTokenSilently()</code>: the token from sign-in, refreshed with the refresh token when it is close to expiry.</p>
        <button type="button" id="messages">Call the messages API</button>
        <pre id="messages-token" hidden></pre>
        <pre id="messages-answer" hidden></pre>
      </div>

      <div class="step">
        <h2>3. A token for the billing API through MRRT</h2>
        <p>
          <code>getTokenSilently({ authorizationParams: { audience: '${mrrtAudience}', scope: '${mrrtScope}' } })</code>: the SDK sends the refresh token from
          step 1 to <code>/oauth/token</code> with the new audience (never asked for at sign-in); the app's MRRT policy allows it.
        </p>
        <button type="button" id="billing">Get a billing token and call the billing API</button>
        <pre id="billing-token" hidden></pre>
        <pre id="billing-answer" hidden></pre>
      </div>

      <p id="error" class="error" role="alert" hidden></p>
    </main>
    <script src="${path}/auth0-spa-js.production.js"></script>
    <script src="${path}/app.js"></script>`;
}

export const SPA_SCRIPT = `'use strict';
(function () {
  var root = document.getElementById('spa');
  var settings = root.dataset;
  var origin = window.location.origin;
  var redirectUri = origin + settings.path;
  var search = new URLSearchParams(window.location.search);
  // ?dpop=1 / ?dpop=0 switch DPoP on and off for this tab (kept across the sign-in redirect)
  if (search.has('dpop')) sessionStorage.setItem('spa-demo-dpop', search.get('dpop') === '1' ? '1' : '0');
  var useDpop = sessionStorage.getItem('spa-demo-dpop') === '1';

  function show(id, value) {
    var element = document.getElementById(id);
    element.textContent = typeof value === 'string' ? value : JSON.stringify(value, null, 2);
    element.hidden = false;
  }
  function showError(err) {
    // the SDK's errors carry an OAuth-style code in err.error (missing_scopes, login_required, …)
    var code = err && err.error ? err.error : (err && err.name) || 'error';
    show('error', code + ': ' + (err && err.message ? err.message : String(err)));
  }
  function clearError() { document.getElementById('error').hidden = true; }
  function decode(jwt) {
    var parts = jwt.split('.');
    var json = function (part) { return JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/'))); };
    var payload = json(parts[1]);
    return { header: json(parts[0]), payload: payload };
  }
  function describeToken(jwt) {
    var token = decode(jwt);
    var p = token.payload;
    var out = { alg: token.header.alg, typ: token.header.typ, aud: p.aud, scope: p.scope, client_id: p.client_id, sub: p.sub, iss: p.iss, exp: new Date(p.exp * 1000).toISOString() };
    if (p.cnf) out.cnf = p.cnf;
    return out;
  }
  async function callApi(path, accessToken) {
    if (useDpop) return 'not called: the demo APIs accept Bearer tokens only, and this token is DPoP-bound';
    var res = await fetch(path, { headers: { authorization: 'Bearer ' + accessToken } });
    return { status: res.status, body: await res.json() };
  }

  async function main() {
    var client = await auth0.createAuth0Client({
      domain: settings.domain,
      clientId: settings.clientId,
      useRefreshTokens: true,
      useMrrt: true,
      useDpop: useDpop,
      // no client-level scope: the SDK's default (openid profile email) plus offline_access go with every request,
      // and each call names its API's scopes (a client-level API scope would be sent to every API)
      authorizationParams: { redirect_uri: redirectUri, audience: settings.loginAudience },
    });
    window.spaDemo = { client: client, decode: decode, useDpop: useDpop };
    document.getElementById('dpop-mode').textContent = useDpop
      ? 'DPoP is on (useDpop: true): tokens are bound to a key this tab holds. ?dpop=0 switches it off.'
      : 'DPoP is off. ?dpop=1 switches it on (useDpop: true).';

    if (search.has('code') && search.has('state')) {
      await client.handleRedirectCallback();
      window.history.replaceState({}, document.title, settings.path);
    }
    var user = await client.getUser();
    document.getElementById('status').textContent = user ? 'Signed in as ' + user.name + ' (' + user.sub + ')' : 'Not signed in.';
    if (user) show('user', user);

    document.getElementById('login').addEventListener('click', function () {
      clearError();
      client.loginWithRedirect({ authorizationParams: { scope: settings.loginScope } }).catch(showError);
    });
    document.getElementById('logout').addEventListener('click', function () {
      clearError();
      client.logout({ logoutParams: { returnTo: redirectUri } }).catch(showError);
    });
    document.getElementById('messages').addEventListener('click', async function () {
      clearError();
      try {
        var token = await client.getTokenSilently();
        show('messages-token', describeToken(token));
        show('messages-answer', await callApi('/spa/api/messages', token));
      } catch (err) { showError(err); }
    });
    document.getElementById('billing').addEventListener('click', async function () {
      clearError();
      try {
        var token = await client.getTokenSilently({ authorizationParams: { audience: settings.mrrtAudience, scope: settings.mrrtScope } });
        show('billing-token', describeToken(token));
        show('billing-answer', await callApi('/spa/api/billing', token));
      } catch (err) { showError(err); }
    });
    document.body.dataset.ready = 'true';
  }

  main().catch(function (err) {
    showError(err);
    document.body.dataset.ready = 'true';
  });
})();
`;
