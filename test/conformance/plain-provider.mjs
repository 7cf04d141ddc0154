// The module upstream's test files get in place of upstream's lib/index.js during the plain run:
// lib/index.js itself, its Provider class only counted (see countConstructions), so that the
// plain run's count of constructions is the baseline the withMrrt run's count is checked against.

// resolved by the preload's hook to upstream's lib/index.js
import * as upstream from 'oidc-provider';

import { countConstructions } from './shared.mjs';

export * from 'oidc-provider';

const CountedProvider = countConstructions(upstream.default);

export default CountedProvider;
export { CountedProvider as Provider };
