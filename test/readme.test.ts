// The README's tables stay true to the package: every reason an exchange can end with has its row.
import { readFileSync } from 'node:fs';

import { describe, expect, test } from '@jest/globals';

import { MRRT_REASONS } from '../lib/index.js';

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

describe('README', () => {
  test('the token endpoint error table names every refusal reason, and no other', () => {
    const section = readme.slice(readme.indexOf('## Errors'), readme.indexOf('\n## ', readme.indexOf('## Errors') + 1));
    const rows = section.split('\n').filter((line) => line.startsWith('| ') && !line.startsWith('| ---') && !line.startsWith('| request | status'));
    const documented = new Set(rows.flatMap((row) => [...(row.split('|').at(-2) ?? '').matchAll(/`([a-z_]+)`/g)].map((match) => match[1]!)));
    const refusals = MRRT_REASONS.filter((reason) => reason !== 'policy');
    expect([...documented].sort()).toEqual([...refusals].sort());
  });
});
