import type { IncomingMessage, ServerResponse } from 'node:http';

import type Provider from 'oidc-provider';
import type { Adapter, AdapterFactory, ClientMetadata, Configuration, JWKS, ResourceServer } from 'oidc-provider';

export declare const API: {
  readonly A: 'https://api-a.example.com';
  readonly B: 'https://api-b.example.com';
  readonly C: 'https://api-c.example.com';
  readonly ADMIN: 'https://admin.example.com';
  readonly CONSENT: 'https://consent.example.com';
  readonly GONE: 'https://gone.example.com';
};
export declare const RESOURCE_SERVERS: Readonly<Record<string, ResourceServer>>;
export declare const SKIP_CONSENT: readonly string[];
export declare const CLIENTS: {
  readonly app: {
    readonly client_id: 'app';
    readonly client_secret: string;
    readonly first_party: true;
    readonly redirect_uris: readonly string[];
    readonly token_endpoint_auth_method: 'client_secret_post';
  };
  readonly spa: {
    readonly client_id: 'spa';
    readonly first_party: true;
    readonly redirect_uris: readonly string[];
    readonly token_endpoint_auth_method: 'none';
  };
  readonly partner: {
    readonly client_id: 'partner';
    readonly client_secret: string;
    readonly redirect_uris: readonly string[];
    readonly token_endpoint_auth_method: 'client_secret_post';
  };
  readonly other: {
    readonly client_id: 'other';
    readonly client_secret: string;
    readonly first_party: true;
    readonly redirect_uris: readonly string[];
    readonly token_endpoint_auth_method: 'client_secret_post';
  };
};
export declare const TTL: NonNullable<Configuration['ttl']>;

export interface ProviderConfigurationOptions {
  adapter?: Configuration['adapter'] | AdapterFactory | (new (name: string) => Adapter);
  jwks: JWKS;
  clients?: ReadonlyArray<ClientMetadata | Record<string, unknown>>;
  resourceServers?: Readonly<Record<string, ResourceServer>>;
  cookieKeys?: string[];
  rotate?: boolean;
  ttl?: Configuration['ttl'];
  dpop?: boolean;
  introspection?: boolean;
}
export declare function providerConfiguration(options: ProviderConfigurationOptions): Configuration;
export declare function interactionHandler(provider: Provider): (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => Promise<void>;
