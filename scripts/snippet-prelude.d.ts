// What the TypeScript snippets of README.md and docs/*.md take as given: the reader's own values
// (yourConfiguration, audit, log, ...) and what an earlier snippet on the same page defined or
// imported (store, provider, withMrrt, ...). scripts/check-readme-snippets.mjs puts this file beside
// every snippet; a snippet is a module, so its own imports and declarations win over these.
import type { Express } from 'express';
import type { Redis } from 'ioredis';
import type { JSONWebKeySet, JWK } from 'jose';
import type { Configuration } from 'oidc-provider';
import type { MrrtEvents, MrrtExchangeEvent, PolicyAuditEvent, RedisPolicyStore } from 'oidc-provider-mrrt';

type ResourceIndicators = NonNullable<NonNullable<Configuration['features']>['resourceIndicators']>;

declare global {
  // The reader's own things.
  /** The deployment's existing oidc-provider configuration. */
  const yourConfiguration: Configuration;
  /** The same, where a snippet calls it `configuration`. */
  const configuration: Configuration;
  /** The deployment's audit log and logger. */
  const audit: { log(event: MrrtExchangeEvent): void };
  const log: { info(event: PolicyAuditEvent): void };
  /** The provider's public signing keys (what its jwks_uri serves). */
  const publicJwks: JSONWebKeySet;
  /** An RSA private key for ID tokens, as a JWK. */
  const yourRsaPrivateJwk: JWK;
  /** The deployment's getResourceServerInfo. */
  const yourResourceServers: NonNullable<ResourceIndicators['getResourceServerInfo']>;

  // Defined or imported by an earlier snippet on the same page (or an export of the package used without its import line).
  const Provider: typeof import('oidc-provider').default;
  const withMrrt: typeof import('oidc-provider-mrrt').withMrrt;
  const parsePolicies: typeof import('oidc-provider-mrrt').parsePolicies;
  const redis: Redis;
  const store: RedisPolicyStore;
  const denyList: string[];
  /** An instance of the class withMrrt returns. */
  const provider: MrrtEvents & import('oidc-provider').default;
  const app: Express;
}
