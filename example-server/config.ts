/**
 * Seed data of the example server: users, clients, APIs and MRRT policies, in one place.
 *
 * Everything here is demo data. The passwords and client secrets are public (they are shown on the
 * login page and in the README); change them before you expose the server to anyone.
 */

/** A person who can sign in on the example's login page. */
export interface DemoUser {
  /** The `sub` claim. */
  readonly id: string;
  readonly username: string;
  readonly password: string;
  readonly name: string;
  readonly email: string;
}

/** An API (resource server) the provider issues JWT access tokens for. */
export interface DemoApi {
  /** The resource indicator, also the access token's `aud`. */
  readonly audience: string;
  readonly name: string;
  /** Every scope the API defines. */
  readonly scopes: readonly string[];
  /** Access token lifetime in seconds. */
  readonly accessTokenTTL: number;
  /** The API allows skipping user consent, so an MRRT policy may name it. */
  readonly skipConsent: boolean;
  /** Never reachable through MRRT (the policy administration API is, always). */
  readonly denyListed: boolean;
  /** The clients that may obtain tokens for this API at all (checked in getResourceServerInfo); absent = every client. */
  readonly clients?: readonly string[];
}

/** An OAuth client registered with the provider (oidc-provider client metadata, redirect paths relative to the server). */
export interface DemoClient {
  readonly client_id: string;
  readonly client_secret: string;
  readonly client_name: string;
  readonly first_party: boolean;
  readonly grant_types: readonly string[];
  readonly response_types: readonly string[];
  /** Paths on the example server; made absolute with its public URL. */
  readonly redirect_paths: readonly string[];
  readonly token_endpoint_auth_method: 'client_secret_basic' | 'client_secret_post';
}

export interface DemoPolicy {
  readonly clientId: string;
  readonly policies: readonly { readonly audience: string; readonly scope: readonly string[] }[];
}

export interface ExampleConfig {
  readonly users: readonly DemoUser[];
  readonly apis: readonly DemoApi[];
  readonly clients: readonly DemoClient[];
  /** Stored at start-up when the client has no policy yet (an existing policy in Redis is kept). */
  readonly policies: readonly DemoPolicy[];
  /** The demo app (the home page's backend-for-frontend): which client it is and what it signs in for. */
  readonly demoApp: {
    readonly clientId: string;
    /** The API asked for at sign-in. */
    readonly loginAudience: string;
    readonly loginScope: string;
    /** The API the refresh token is exchanged for (MRRT). */
    readonly mrrtAudience: string;
  };
  /** The admin API (createPolicyRouter), mounted at /admin. */
  readonly admin: {
    readonly audience: string;
    readonly scope: string;
    readonly clientId: string;
  };
  /** What the demo APIs answer, per user id. */
  readonly data: {
    readonly messages: Readonly<Record<string, readonly { readonly from: string; readonly text: string }[]>>;
    readonly invoices: Readonly<Record<string, readonly { readonly id: string; readonly amount: string; readonly status: string }[]>>;
  };
}

export const MESSAGES_API = 'https://messages.example.com';
export const BILLING_API = 'https://billing.example.com';
export const ADMIN_API = 'https://admin.mrrt.example';

export const config: ExampleConfig = {
  users: [
    { id: 'alice', username: 'alice', password: 'wonderland', name: 'Alice Liddell', email: 'alice@example.com' },
    { id: 'bob', username: 'bob', password: 'builder', name: 'Bob Builder', email: 'bob@example.com' },
  ],

  apis: [
    {
      audience: MESSAGES_API,
      name: 'Messages API',
      scopes: ['messages:read', 'messages:write'],
      accessTokenTTL: 600,
      skipConsent: true,
      denyListed: false,
      clients: ['demo-app'],
    },
    {
      audience: BILLING_API,
      name: 'Billing API',
      scopes: ['billing:read'],
      accessTokenTTL: 300,
      skipConsent: true,
      denyListed: false,
      clients: ['demo-app'],
    },
    {
      audience: ADMIN_API,
      name: 'MRRT admin API',
      scopes: ['mrrt:admin'],
      accessTokenTTL: 300,
      skipConsent: false,
      denyListed: true,
      clients: ['admin-cli'],
    },
  ],

  clients: [
    {
      // the home page's server-side app: authorization code + PKCE, refresh tokens, first-party
      client_id: 'demo-app',
      client_secret: 'demo-app-secret-change-me-0123456789',
      client_name: 'MRRT demo app',
      first_party: true,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_paths: ['/callback'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // machine client for the admin API: client credentials only
      client_id: 'admin-cli',
      client_secret: 'admin-cli-secret-change-me-0123456789',
      client_name: 'MRRT admin CLI',
      first_party: false,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_paths: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],

  policies: [
    // demo-app signs in for the messages API and may exchange its refresh token for billing
    { clientId: 'demo-app', policies: [{ audience: BILLING_API, scope: ['billing:read'] }] },
  ],

  demoApp: {
    clientId: 'demo-app',
    loginAudience: MESSAGES_API,
    loginScope: 'openid profile email offline_access messages:read messages:write',
    mrrtAudience: BILLING_API,
  },

  admin: { audience: ADMIN_API, scope: 'mrrt:admin', clientId: 'admin-cli' },

  data: {
    messages: {
      alice: [
        { from: 'bob', text: 'Tea at four?' },
        { from: 'cheshire-cat', text: 'We are all mad here.' },
      ],
      bob: [{ from: 'alice', text: 'Can you fix the garden wall?' }],
    },
    invoices: {
      alice: [
        { id: 'INV-1001', amount: '12.50 EUR', status: 'paid' },
        { id: 'INV-1002', amount: '40.00 EUR', status: 'open' },
      ],
      bob: [{ id: 'INV-2001', amount: '99.00 EUR', status: 'open' }],
    },
  },
};

/**
 * The SPA page (`/spa`, example-server/spa.ts): a single-page app built on Auth0's own browser SDK
 * (`@auth0/auth0-spa-js`), signing in against an Auth0-style tenant that the example serves at the
 * root of the same origin (issuer `<PUBLIC_URL>/`, `/authorize`, `/oauth/token`, `/v2/logout`).
 */
export const spaApp = {
  /** A public, first-party client (code + PKCE, rotated refresh tokens). */
  clientId: 'spa-app',
  clientName: 'MRRT SPA (auth0-spa-js)',
  /** The page itself: redirect URI and logout `returnTo`. */
  path: '/spa',
  /** The API asked for at sign-in, and its scope (the SDK adds `openid profile email offline_access`). */
  loginAudience: MESSAGES_API,
  loginScope: 'messages:read',
  /** The API reached through MRRT with the same refresh token. */
  mrrtAudience: BILLING_API,
  mrrtScope: 'billing:read',
  /** The client's MRRT policy in the tenant. */
  policies: [{ audience: BILLING_API, scope: ['billing:read'] }],
} as const;
