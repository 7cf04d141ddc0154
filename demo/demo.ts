/**
 * `npm run demo`: the MRRT story from the command line, against a RUNNING example server
 * (`npm start`), with a standard OAuth client library (openid-client 6) instead of the home page.
 *
 * 1. discovery of the issuer `<DEMO_URL>/oidc`;
 * 2. authorization code + PKCE as the first-party client `demo-app`, signing in through the example's
 *    real login and consent forms (plain HTTP requests with a cookie jar, redirects followed by hand);
 * 3. the messages API with the messages access token;
 * 4. MRRT: the same refresh token exchanged for a billing API token (`audience=https://billing.example.com`);
 * 5. the billing API with that token;
 * 6. refused: the same refresh token for the admin API (`invalid_target`), and the messages token
 *    sent to the billing API (`401 invalid_token`).
 *
 * The script plays both the user's browser and the client. It uses `demo-app`'s registered redirect
 * URI (`<DEMO_URL>/callback`) and stops at the redirect there: the code goes to this script, never to
 * the server's own demo app. Every step is checked; exit code 0 when the story went as expected.
 *
 * DEMO_URL: the example server's base URL, default http://127.0.0.1:3000.
 */
import { createHash } from 'node:crypto';

import * as oidc from 'openid-client';

import { ADMIN_API, BILLING_API, MESSAGES_API, config } from '../example-server/config.js';
import { SignInFailure, signInThroughTheForms } from './sign-in.js';

const DEFAULT_URL = 'http://127.0.0.1:3000';
const TIMEOUT_MS = 10_000;

class DemoFailure extends Error {}

const out = (line = ''): void => {
  process.stdout.write(`${line}\n`);
};
const indent = (text: string, by = '     '): string =>
  text
    .split('\n')
    .map((line) => by + line)
    .join('\n');
const fingerprint = (token: string): string => `sha256:${createHash('sha256').update(token).digest('base64url').slice(0, 12)}`;

// ---------------------------------------------------------------------------------------------------
// printing

function decodeJwt(token: string): { header: Record<string, unknown>; payload: Record<string, unknown> } {
  const [header, payload] = token.split('.');
  if (!header || !payload) throw new DemoFailure('the access token is not a JWT');
  const part = (value: string): Record<string, unknown> => JSON.parse(Buffer.from(value, 'base64url').toString('utf8')) as Record<string, unknown>;
  return { header: part(header), payload: part(payload) };
}

function printToken(label: string, token: string): Record<string, unknown> {
  const { header, payload } = decodeJwt(token);
  const exp = typeof payload.exp === 'number' ? payload.exp : undefined;
  out(`     ${label} (JWT, ${fingerprint(token)})`);
  out(`       header     alg ${String(header.alg)}, typ ${String(header.typ)}`);
  out(`       aud        ${JSON.stringify(payload.aud)}`);
  out(`       scope      ${String(payload.scope ?? '(none)')}`);
  out(`       client_id  ${String(payload.client_id)}`);
  out(`       sub        ${String(payload.sub)}`);
  out(`       exp        ${exp ? `${new Date(exp * 1000).toISOString()} (in ${exp - Math.floor(Date.now() / 1000)} s)` : '(none)'}`);
  return payload;
}

function expect(condition: boolean, message: string): void {
  if (!condition) throw new DemoFailure(message);
}

async function callApi(configuration: oidc.Configuration, url: URL, token: string): Promise<{ status: number; body: unknown; challenge?: string }> {
  try {
    const response = await oidc.fetchProtectedResource(configuration, token, url, 'GET');
    return { status: response.status, body: (await response.json()) as unknown };
  } catch (err) {
    // openid-client turns a response with a WWW-Authenticate challenge into this error
    if (err instanceof oidc.WWWAuthenticateChallengeError) {
      return { status: err.status, body: (await err.response.json()) as unknown, challenge: err.response.headers.get('www-authenticate') ?? undefined };
    }
    throw err;
  }
}

function printApiAnswer(answer: { status: number; body: unknown; challenge?: string }): void {
  out(`     → ${answer.status}${answer.challenge ? `  WWW-Authenticate: ${answer.challenge}` : ''}`);
  const { body } = answer;
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    out(indent(JSON.stringify(body), '       '));
    return;
  }
  // one line per member: compact, and the arrays of messages / invoices stay readable
  for (const [key, value] of Object.entries(body)) out(`       ${`${key}:`.padEnd(18)} ${JSON.stringify(value)}`);
}

// ---------------------------------------------------------------------------------------------------
// the story

async function reachable(base: string): Promise<boolean> {
  try {
    await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(3000) });
    return true;
  } catch {
    return false;
  }
}

async function run(base: string): Promise<void> {
  const client = config.clients.find((candidate) => candidate.client_id === config.demoApp.clientId);
  const user = config.users[0];
  if (!client || !user) throw new DemoFailure('example-server/config.ts has no demo app client or no user');
  const issuer = new URL(`${base}/oidc`);
  const redirectUri = new URL(client.redirect_paths[0] ?? '/callback', base).href;
  const messagesUrl = new URL('/api/messages', base);
  const billingUrl = new URL('/api/billing', base);

  out(`MRRT demo against ${base} with openid-client (client ${client.client_id}, user ${user.username})`);
  out();

  out(`1. Discovery of ${issuer.href}`);
  const configuration = await oidc.discovery(
    issuer,
    client.client_id,
    undefined,
    client.token_endpoint_auth_method === 'client_secret_post' ? oidc.ClientSecretPost(client.client_secret) : oidc.ClientSecretBasic(client.client_secret),
    // the example's issuer is plain HTTP on loopback
    { execute: [oidc.allowInsecureRequests], timeout: TIMEOUT_MS / 1000 },
  );
  const server = configuration.serverMetadata();
  out(`     issuer                  ${server.issuer}`);
  out(`     authorization_endpoint  ${server.authorization_endpoint}`);
  out(`     token_endpoint          ${server.token_endpoint}`);
  out();

  out(`2. Sign in as ${user.username} for the messages API: authorization code + PKCE (S256), through the real login and consent forms`);
  const codeVerifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const nonce = oidc.randomNonce();
  const authorizationUrl = oidc.buildAuthorizationUrl(configuration, {
    redirect_uri: redirectUri,
    scope: config.demoApp.loginScope,
    resource: MESSAGES_API,
    code_challenge: await oidc.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    // oidc-provider issues a refresh token (offline_access) only when consent is prompted for
    prompt: 'consent',
  });
  const callback = await signInThroughTheForms(authorizationUrl, redirectUri, user.username, user.password, out);
  const signIn = await oidc.authorizationCodeGrant(
    configuration,
    callback,
    {
      pkceCodeVerifier: codeVerifier,
      expectedState: state,
      expectedNonce: nonce,
      idTokenExpected: true,
    },
    { resource: MESSAGES_API },
  );
  const refreshToken = signIn.refresh_token;
  expect(typeof refreshToken === 'string', 'the code exchange returned no refresh token');
  const idClaims = signIn.claims();
  out(`     code exchanged at the token endpoint (state, iss, nonce and the ID token checked by openid-client)`);
  out(`     granted scope   ${signIn.scope ?? ''}`);
  out(`     ID token        sub ${String(idClaims?.sub)}, name ${String(idClaims?.name)}, aud ${JSON.stringify(idClaims?.aud)}`);
  out(`     refresh token   ${fingerprint(refreshToken!)} (opaque; only its fingerprint is shown)`);
  const messagesClaims = printToken('access token for the messages API', signIn.access_token);
  expect(messagesClaims.aud === MESSAGES_API, `the sign-in access token is for ${JSON.stringify(messagesClaims.aud)}, not ${MESSAGES_API}`);
  out();

  out(`3. GET ${messagesUrl.href} with the messages token`);
  const messages = await callApi(configuration, messagesUrl, signIn.access_token);
  printApiAnswer(messages);
  expect(messages.status === 200, `the messages API answered ${messages.status}`);
  out();

  out(`4. MRRT: the same refresh token for the billing API (never asked for at sign-in; allowed by ${client.client_id}'s MRRT policy)`);
  out(`     refreshTokenGrant(config, <refresh token ${fingerprint(refreshToken!)}>, { audience: '${BILLING_API}' })`);
  const exchange = await oidc.refreshTokenGrant(configuration, refreshToken!, { audience: BILLING_API });
  out(
    `     → 200  scope ${exchange.scope ?? ''}, expires_in ${String(exchange.expires_in)}, ${
      exchange.refresh_token && exchange.refresh_token !== refreshToken
        ? `refresh token rotated to ${fingerprint(exchange.refresh_token)}`
        : 'the refresh token stays the same'
    }`,
  );
  const billingClaims = printToken('access token for the billing API', exchange.access_token);
  expect(billingClaims.aud === BILLING_API, `the MRRT access token is for ${JSON.stringify(billingClaims.aud)}, not ${BILLING_API}`);
  const currentRefreshToken = exchange.refresh_token ?? refreshToken!;
  out();

  out(`5. GET ${billingUrl.href} with the billing token`);
  const billing = await callApi(configuration, billingUrl, exchange.access_token);
  printApiAnswer(billing);
  expect(billing.status === 200, `the billing API answered ${billing.status}`);
  out();

  out(`6. Refused: the same refresh token for the admin API (${ADMIN_API}, deny-listed for MRRT)`);
  out(`     refreshTokenGrant(config, <refresh token ${fingerprint(currentRefreshToken)}>, { audience: '${ADMIN_API}' })`);
  let refusal: oidc.ResponseBodyError | undefined;
  try {
    await oidc.refreshTokenGrant(configuration, currentRefreshToken, { audience: ADMIN_API });
  } catch (err) {
    if (!(err instanceof oidc.ResponseBodyError)) throw err;
    refusal = err;
  }
  expect(refusal !== undefined, 'the token endpoint issued a token for the admin API');
  out(`     → ${refusal!.status} ${refusal!.error}: ${refusal!.error_description ?? ''}`);
  expect(refusal!.error === 'invalid_target', `expected invalid_target, got ${refusal!.error}`);
  out();

  out(`7. Refused: the messages token sent to the billing API (each token is for exactly one API)`);
  const mixup = await callApi(configuration, billingUrl, signIn.access_token);
  printApiAnswer(mixup);
  expect(mixup.status === 401, `the billing API answered ${mixup.status} to the messages token`);
  out();

  const again = await oidc.refreshTokenGrant(configuration, currentRefreshToken, { audience: BILLING_API });
  expect(decodeJwt(again.access_token).payload.aud === BILLING_API, 'the refresh token no longer works after the refusal');
  const width = Math.max(MESSAGES_API.length, BILLING_API.length, ADMIN_API.length);
  out(`Summary: one sign-in, one refresh token (${fingerprint(refreshToken!)}), access tokens per API:`);
  const how = (text: string): string => text.padEnd('issued by the MRRT exchange'.length);
  out(`  ${MESSAGES_API.padEnd(width)}  ${how('issued at sign-in')} → messages API 200`);
  out(`  ${BILLING_API.padEnd(width)}  ${how('issued by the MRRT exchange')} → billing API 200`);
  out(`  ${ADMIN_API.padEnd(width)}  refused: ${refusal!.error} (the refresh token still works afterwards)`);
  out(`  the messages token at the billing API → ${mixup.status} ${(mixup.body as { error?: string } | null)?.error ?? ''}`);
  out('demo: OK');
}

async function main(): Promise<number> {
  const raw = process.env.DEMO_URL || DEFAULT_URL;
  let base: string;
  try {
    base = new URL(raw).origin;
  } catch {
    process.stderr.write(`demo: DEMO_URL must be a URL like ${DEFAULT_URL}, got "${raw}"\n`);
    return 1;
  }
  if (!(await reachable(base))) {
    process.stderr.write(
      `demo: nothing answers at ${base}.\n` +
        'Start the example server first, in another terminal:  npm start\n' +
        `then run  npm run demo  again (set DEMO_URL when the server runs elsewhere than ${DEFAULT_URL}).\n`,
    );
    return 1;
  }
  try {
    await run(base);
    return 0;
  } catch (err) {
    const error = err as Error & { error?: string; error_description?: string; status?: number };
    const detail = error.error ? ` (${error.status ?? ''} ${error.error}: ${error.error_description ?? ''})` : '';
    process.stderr.write(`\ndemo failed: ${error.message}${detail}\n`);
    if (!(err instanceof DemoFailure) && !(err instanceof SignInFailure) && error.stack) process.stderr.write(`${error.stack}\n`);
    return 1;
  }
}

process.exitCode = await main();
