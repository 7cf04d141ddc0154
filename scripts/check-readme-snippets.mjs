#!/usr/bin/env node
// Checks the package as a consumer gets it, from the tarball `npm pack` makes:
//
// 1. Every ```ts block of README.md and docs/*.md compiles under `strict`, once with
//    `moduleResolution: NodeNext` and once with `bundler`. Each block is its own module (a file of
//    its own, `export {}` appended so that it never shares a scope with another), next to
//    scripts/snippet-prelude.d.ts, which declares what the text takes as given (`yourConfiguration`,
//    `audit`, the `provider` of an earlier snippet, ...). The block's text is never changed. Errors
//    are reported at their line in the Markdown file.
// 2. scripts/consumer-smoke.mjs runs in the same consumer project: a withMrrt provider over HTTP on
//    127.0.0.1 answers an MRRT exchange, and a stack trace through the package maps to lib/*.ts.
//
// The consumer project lives in a temporary folder; its dependencies are the tarball and the exact
// versions of this repository's lock file, installed from npm's cache (`--offline`) when they are
// all there, else with the registry. `--keep` leaves the folder; `--no-smoke` skips step 2.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DOCUMENTS = [
  'README.md',
  ...readdirSync(path.join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
];
/** What a consumer installs beside the package: the peers the snippets use, their types, the compiler. */
const DEPENDENCIES = ['oidc-provider', 'express', 'ioredis', 'jose', 'prom-client', '@opentelemetry/api'];
const DEV_DEPENDENCIES = ['typescript', '@types/node', '@types/oidc-provider', '@types/express'];
const RESOLUTIONS = {
  nodenext: { module: 'NodeNext', moduleResolution: 'NodeNext' },
  bundler: { module: 'preserve', moduleResolution: 'bundler' },
};

const args = new Set(process.argv.slice(2));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const started = Date.now();
const step = (message) => process.stdout.write(`check:readme: ${message} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`);

/** Every ```ts block: where it starts (the line after the fence, 1-based) and its text. */
function snippets(document) {
  const lines = readFileSync(path.join(ROOT, document), 'utf8').split('\n');
  const found = [];
  for (let i = 0; i < lines.length; i += 1) {
    if (!/^```(ts|typescript)\s*$/.test(lines[i])) continue;
    const end = lines.findIndex((line, j) => j > i && /^```\s*$/.test(line));
    if (end === -1) throw new Error(`${document}:${i + 1}: unterminated code block`);
    found.push({ document, line: i + 2, text: lines.slice(i + 1, end).join('\n') });
    i = end;
  }
  return found;
}

function lockedVersion(lock, name) {
  const version = lock.packages[`node_modules/${name}`]?.version;
  if (!version) throw new Error(`${name} is not in package-lock.json: run npm install`);
  return version;
}

function run(command, commandArgs, options) {
  const result = spawnSync(command, commandArgs, { encoding: 'utf8', ...options });
  return { ok: result.status === 0, output: `${result.stdout ?? ''}${result.stderr ?? ''}`.trim(), error: result.error };
}

const all = DOCUMENTS.flatMap(snippets);
if (all.length === 0) throw new Error('no ```ts block found');

const dir = mkdtempSync(path.join(os.tmpdir(), 'mrrt-consumer-'));
let failed = false;
try {
  const [packed] = JSON.parse(
    execFileSync(npm, ['pack', '--json', '--pack-destination', dir], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }),
  );
  step(`packed ${packed.filename} (${packed.entryCount} files)`);

  const lock = JSON.parse(readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8'));
  const project = path.join(dir, 'consumer');
  mkdirSync(path.join(project, 'snippets'), { recursive: true });
  writeFileSync(
    path.join(project, 'package.json'),
    `${JSON.stringify(
      {
        name: 'mrrt-consumer',
        private: true,
        type: 'module',
        dependencies: {
          'oidc-provider-mrrt': `file:../${packed.filename}`,
          ...Object.fromEntries(DEPENDENCIES.map((name) => [name, lockedVersion(lock, name)])),
        },
        devDependencies: Object.fromEntries(DEV_DEPENDENCIES.map((name) => [name, lockedVersion(lock, name)])),
      },
      null,
      2,
    )}\n`,
  );
  const install = ['install', '--no-audit', '--no-fund', '--ignore-scripts', '--loglevel=error'];
  let installed = run(npm, [...install, '--offline'], { cwd: project });
  let from = "npm's cache";
  if (!installed.ok) {
    // What the offline attempt left behind would steer the second one.
    rmSync(path.join(project, 'node_modules'), { recursive: true, force: true });
    rmSync(path.join(project, 'package-lock.json'), { force: true });
    installed = run(npm, [...install, '--prefer-offline'], { cwd: project });
    from = "npm's cache and the registry";
  }
  if (!installed.ok) throw new Error(`npm install in the consumer project failed:\n${installed.output}`);
  step(`consumer project installed from ${from}`);

  copyFileSync(path.join(ROOT, 'scripts/snippet-prelude.d.ts'), path.join(project, 'snippets/prelude.d.ts'));
  const files = new Map();
  for (const snippet of all) {
    const name = `${snippet.document.replace(/\W+/g, '-').replace(/-md$/, '')}-${snippet.line}.ts`;
    files.set(`snippets/${name}`, snippet);
    // Line 1 names the origin, so snippet line k is file line k + 1.
    writeFileSync(path.join(project, 'snippets', name), `// ${snippet.document}:${snippet.line}\n${snippet.text}\nexport {};\n`);
  }

  for (const [resolution, options] of Object.entries(RESOLUTIONS)) {
    const config = `tsconfig.${resolution}.json`;
    writeFileSync(
      path.join(project, config),
      `${JSON.stringify(
        {
          compilerOptions: { ...options, target: 'ES2022', lib: ['ES2023'], strict: true, noEmit: true, skipLibCheck: false, types: ['node'] },
          include: ['snippets'],
        },
        null,
        2,
      )}\n`,
    );
    const tsc = run(process.execPath, [path.join(project, 'node_modules/typescript/bin/tsc'), '-p', config, '--pretty', 'false'], { cwd: project });
    if (tsc.ok) {
      step(`${all.length} snippets compile with moduleResolution ${options.moduleResolution} (${resolution})`);
      continue;
    }
    // skipLibCheck is off so that the package's own declarations are checked; errors inside other
    // packages' declarations (their versions disagreeing with each other) are not this package's.
    const errors = tsc.output.split('\n').filter((line) => /^\S.*\(\d+,\d+\): error /.test(line));
    const theirs = errors.filter((line) => line.startsWith('node_modules/') && !line.startsWith('node_modules/oidc-provider-mrrt/'));
    const ours = errors
      .filter((line) => !theirs.includes(line))
      .map((line) => {
        const match = /^(snippets\/[^(]+)\((\d+),(\d+)\): (.*)$/.exec(line);
        const snippet = match && files.get(match[1]);
        return snippet ? `${snippet.document}:${snippet.line + Number(match[2]) - 2}:${match[3]}: ${match[4]}` : line;
      });
    if (theirs.length > 0) process.stdout.write(`check:readme: ignored, in other packages' declarations:\n  ${theirs.join('\n  ')}\n`);
    if (ours.length === 0 && errors.length > 0) {
      step(`${all.length} snippets compile with moduleResolution ${options.moduleResolution} (${resolution})`);
      continue;
    }
    failed = true;
    process.stdout.write(
      `check:readme: moduleResolution ${options.moduleResolution} (${resolution}): errors\n${(ours.length ? ours : [tsc.output]).join('\n')}\n`,
    );
  }

  if (!args.has('--no-smoke')) {
    copyFileSync(path.join(ROOT, 'scripts/consumer-smoke.mjs'), path.join(project, 'smoke.mjs'));
    const smoke = run(process.execPath, ['--enable-source-maps', 'smoke.mjs'], { cwd: project, timeout: 60_000 });
    process.stdout.write(`${smoke.output}\n`);
    if (!smoke.ok) {
      failed = true;
      process.stdout.write(`check:readme: the runtime check in the consumer project failed${smoke.error ? ` (${smoke.error.message})` : ''}\n`);
    } else {
      step('runtime check passed');
    }
  }
} finally {
  if (args.has('--keep')) process.stdout.write(`check:readme: kept ${dir}\n`);
  else rmSync(dir, { recursive: true, force: true });
}
if (failed) process.exitCode = 1;
else step(`${all.length} snippets from ${DOCUMENTS.filter((d) => all.some((s) => s.document === d)).join(', ')}: all good`);
