// CommonJS consumers: require('oidc-provider-mrrt') and '/express' resolve to the ESM build (require(esm), Node 22+).
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { describe, expect, test } from '@jest/globals';

const run = promisify(execFile);
const entry = fileURLToPath(new URL('./support/require-entry.cjs', import.meta.url));

describe('require()', () => {
  test('loads the package from a .cjs file and builds a withMrrt provider', async () => {
    const { stdout } = await run(process.execPath, ['--no-warnings', entry], { cwd: fileURLToPath(new URL('..', import.meta.url)) });
    const result = JSON.parse(stdout) as { exports: string[]; express: string[]; isProvider: boolean };
    expect(result.isProvider).toBe(true);
    expect(result.exports).toEqual(expect.arrayContaining(['withMrrt', 'MemoryPolicyStore', 'RedisPolicyStore']));
    expect(result.express).toEqual(['createPolicyRouter', 'jwtAuthorizer']);
  });
});
