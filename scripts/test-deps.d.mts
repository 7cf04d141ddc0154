/** Where each program the tests run was found; `undefined` when it is missing. */
export interface TestDependencies {
  'redis-server': string | undefined;
  'redis-cli': string | undefined;
  chromium: string | undefined;
}

export function findTestDependencies(env?: NodeJS.ProcessEnv): TestDependencies;

export function ensureTestDependencies(options?: { env?: NodeJS.ProcessEnv; log?: (line: string) => void; root?: boolean }): TestDependencies;
