// What `npm pack` puts in the tarball: exactly the build, the TypeScript sources its source maps
// point to, and the four documents; every source map and every entry point resolves inside it; and
// publint finds nothing to report. Reads the dist/ of the last build (npm test builds first).
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

import { beforeAll, expect, test } from '@jest/globals';

const ROOT = path.resolve(import.meta.dirname, '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

let packed: Set<string>;
const read = (file: string): string => readFileSync(path.join(ROOT, file), 'utf8');

/** Every file under `dir` (relative to the repository, `/`-separated). */
function walk(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((entry) => {
    const rel = `${dir}/${entry.name}`;
    return entry.isDirectory() ? walk(rel) : [rel];
  });
}

beforeAll(() => {
  const [report] = JSON.parse(execFileSync(npm, ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' })) as [
    { files: { path: string }[] },
  ];
  packed = new Set(report.files.map((file) => file.path));
}, 60_000);

test('the tarball holds exactly the build of lib/, the sources it maps to, and the documents', () => {
  const sources = walk('lib').filter((file) => file.endsWith('.ts'));
  expect(sources.length).toBeGreaterThan(10);
  const expected = new Set(['package.json', 'README.md', 'LICENSE', 'CHANGELOG.md']);
  for (const source of sources) {
    const out = source.replace(/^lib\//, 'dist/').replace(/\.ts$/, '');
    for (const file of [source, `${out}.js`, `${out}.js.map`, `${out}.d.ts`, `${out}.d.ts.map`]) expected.add(file);
  }
  expect([...packed].sort()).toEqual([...expected].sort());
});

test('every source map in the tarball, and every file pointing to one, resolves to a packed file', () => {
  const maps = [...packed].filter((file) => file.endsWith('.map'));
  expect(maps.length).toBeGreaterThan(0);
  for (const map of maps) {
    const generated = map.slice(0, -'.map'.length);
    expect(read(generated)).toContain(`//# sourceMappingURL=${path.posix.basename(map)}`);
    const { sources, sourceRoot = '', file } = JSON.parse(read(map)) as { sources: string[]; sourceRoot?: string; file: string };
    expect(file).toBe(path.posix.basename(generated));
    expect(sources).toHaveLength(1);
    const target = path.posix.normalize(path.posix.join(path.posix.dirname(map), sourceRoot, sources[0]!));
    expect({ map, target, packed: packed.has(target) }).toEqual({ map, target, packed: true });
  }
});

test('main, types and every exports target are packed', () => {
  const manifest = JSON.parse(read('package.json')) as { main: string; types: string; exports: Record<string, string | Record<string, string>> };
  const targets = [
    manifest.main,
    manifest.types,
    ...Object.values(manifest.exports).flatMap((entry) => (typeof entry === 'string' ? [entry] : Object.values(entry))),
  ];
  for (const target of targets) expect({ target, packed: packed.has(path.posix.normalize(target)) }).toEqual({ target, packed: true });
});

test('publint --strict reports nothing', () => {
  const output = execFileSync(process.execPath, [path.join(ROOT, 'node_modules/publint/src/cli.js'), '--strict'], { cwd: ROOT, encoding: 'utf8' });
  expect(output).toMatch(/All good!/);
}, 60_000);
