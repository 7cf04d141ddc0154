// The module upstream's test files get in place of upstream's lib/index.js during the withMrrt run
// (see the resolve hook in upstream-preload.mjs): everything lib/index.js exports, except that the
// Provider class, default and named, is upstream's own Provider passed through withMrrt.

// The preload's hook resolves 'oidc-provider' here, and in dist/, to upstream's lib/index.js, so
// the extension subclasses the very class (and throws the very errors) the suite tests.
import * as upstream from 'oidc-provider';

import { MemoryPolicyStore, withMrrt } from '../../dist/index.js';
import { POLICY_API, POLICY_CLIENT, POLICY_SCOPE, countConstructions } from './shared.mjs';

export * from 'oidc-provider';

const store = new MemoryPolicyStore();
await store.set(POLICY_CLIENT, [{ audience: POLICY_API, scope: POLICY_SCOPE }]);

// counted, so that the runner can show that the suite's providers really were built through here
const MrrtProvider = countConstructions(withMrrt(upstream.default, { store, allowSkippingConsent: [POLICY_API] }));

export default MrrtProvider;
export { MrrtProvider as Provider };
