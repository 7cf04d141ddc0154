// oidc-provider ships no types for its modules; the extension reads one value of one of them
// (observers.ts: the default `rotateRefreshToken`, asked when the deployment configures none)
declare module 'oidc-provider/lib/helpers/defaults.js' {
  export const defaults: { readonly rotateRefreshToken?: unknown };
}
