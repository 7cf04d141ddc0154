/**
 * The Express surface (`oidc-provider-mrrt/express`): the policy admin API as an Express router and
 * a JWT access-token authorizer for it. Kept apart from the main entry so that a Koa-only
 * deployment never loads Express.
 */
export { createPolicyRouter } from './admin-router.js';
export type { PolicyRouterOptions, AdminAuthorize, AdminDenial, AdminGrant, PolicyAuditEvent } from './admin-router.js';
export { jwtAuthorizer } from './admin-auth.js';
export type { JwtAuthorizerOptions } from './admin-auth.js';
