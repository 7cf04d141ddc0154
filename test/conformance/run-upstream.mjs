// npm run test:upstream: oidc-provider's own test suite (release v9.11.4, from
// ../shared/upstream beside the checkout) run twice on Node 22, once as released and once with every Provider the
// suite builds made through withMrrt (see upstream-preload.mjs and mrrt-provider.mjs). Exits 0 only
// when both runs pass, stay pending and fail on exactly the same tests.
//
//   node test/conformance/run-upstream.mjs [--keep] [--verbose]
//     --keep     keep the temporary folder (upstream's tree, its node_modules, the logs and results)
//     --verbose  stream npm's and the suites' output as well (it always goes to log files)
//
// Upstream's tree is extracted into a fresh folder under the OS temp dir at every run and removed
// at the end: nothing of it is ever copied or cached in this repository.

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clearTimeout } from 'node:timers';
import { fileURLToPath } from 'node:url';

import { ENV } from './shared.mjs';

const repo = fileURLToPath(new URL('../../', import.meta.url));
// shared/ lies beside the checkout (the developers' and CI's layout alike)
const TARBALL = process.env.UPSTREAM_TARBALL ?? join(repo, '..', 'shared', 'upstream', 'node-oidc-provider-v9.11.4.tar.gz');
// upstream's devDependency undici 8 needs this; the machine's own node may be older (20)
const MIN_NODE = [22, 19];
// generous against the measured ~10 s for npm ci and ~20 s per suite, yet bounding a hung step
const INSTALL_TIMEOUT = 5 * 60_000;
const SUITE_TIMEOUT = 5 * 60_000;

const preload = new URL('./upstream-preload.mjs', import.meta.url).href;
const args = new Set(process.argv.slice(2));
const keep = args.has('--keep');
const verbose = args.has('--verbose');

/** A reason to stop, reported as one line (no stack) after cleaning up. */
class Abort extends Error {}
function fail(message) {
  throw new Abort(message);
}

// npm run puts our package's identity into the environment; upstream's npm ci and suite must
// see upstream's package only.
const baseEnv = Object.fromEntries(
  Object.entries(process.env).filter(
    ([key]) => !(key.startsWith('npm_package_') || key.startsWith('npm_lifecycle_') || key === 'npm_config_local_prefix' || key === 'INIT_CWD'),
  ),
);

const children = new Set();
let interrupted = false;

/**
 * Runs a command in its own process group, its output appended to `log` (and streamed with
 * --verbose). Resolves with { code, signal, timedOut, stdout } and never rejects on exit status.
 */
function run(command, argv, { cwd, env = baseEnv, log, timeout, capture = false }) {
  return new Promise((resolve, reject) => {
    if (interrupted) throw new Abort('interrupted');
    const child = spawn(command, argv, { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    const out = log ? createWriteStream(log, { flags: 'a' }) : undefined;
    let stdout = '';
    const forward = (stream, target) =>
      stream.on('data', (chunk) => {
        out?.write(chunk);
        if (capture && target === process.stdout) stdout += chunk;
        else if (verbose) target.write(chunk);
      });
    forward(child.stdout, process.stdout);
    forward(child.stderr, process.stderr);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      kill(child);
    }, timeout);
    child.on('error', (error) => {
      clearTimeout(timer);
      children.delete(child);
      reject(error);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      out?.end();
      resolve({ code, signal, timedOut, stdout });
    });
  });
}

function kill(child) {
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

const tail = (file, lines = 40) => (existsSync(file) ? readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n') : '(no output)');

const atLeast = (version, [major, minor]) => {
  const [a, b] = version.replace(/^v/, '').split('.').map(Number);
  return a > major || (a === major && b >= minor);
};

/** The Node 22 binary to run upstream with: this one if recent enough, else node@22 through npx. */
async function node22(dir) {
  if (atLeast(process.version, MIN_NODE)) return { node: process.execPath, npm: ['npm'] };
  const npx = ['-y', '-p', 'node@22', '--'];
  const probe = await run('npx', [...npx, 'node', '-p', 'process.execPath + " " + process.version'], {
    cwd: dir,
    log: join(dir, 'npm-ci.log'),
    timeout: INSTALL_TIMEOUT,
    capture: true,
  });
  const [node, version] = probe.stdout.trim().split('\n').at(-1)?.split(' ') ?? [];
  if (probe.code !== 0 || !node || !version) fail(`could not get Node 22 through \`npx -p node@22\`:\n${tail(join(dir, 'npm-ci.log'))}`);
  if (!atLeast(version, MIN_NODE)) fail(`node@22 from npx is ${version}; upstream's suite needs >= ${MIN_NODE.join('.')}`);
  return { node, npm: ['npx', ...npx, 'npm'] };
}

async function suite(dir, node, mode) {
  const log = join(dir, `${mode}.log`);
  const resultsFile = join(dir, `${mode}.json`);
  const started = Date.now();
  const { code, signal, timedOut } = await run(node, ['--import', preload, 'test/run.js'], {
    cwd: dir,
    log,
    timeout: SUITE_TIMEOUT,
    // CI: upstream's own CI settings (the terse "min" reporter, .only forbidden)
    env: { ...baseEnv, CI: 'true', [ENV.upstream]: dir, [ENV.mode]: mode, [ENV.results]: resultsFile },
  });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const report = existsSync(resultsFile) ? JSON.parse(readFileSync(resultsFile, 'utf8')) : undefined;
  const problems = [];
  if (timedOut) problems.push(`killed after ${SUITE_TIMEOUT / 1000} s`);
  if (!report) problems.push(`no results (exit ${code ?? signal})`);
  else if (!report.complete) problems.push(`mocha never finished (exit ${code ?? signal})`);
  if (problems.length !== 0) {
    console.error(`\n${mode} run: ${problems.join('; ')}; last lines of ${log}:\n${tail(log)}\n`);
  }
  return { mode, seconds, report, complete: problems.length === 0 };
}

// One upstream test names itself after a key it generates at load time; masking long base64url
// runs makes its title the same in both runs.
const normalize = (title) => title.replace(/[A-Za-z0-9_-]{40,}/g, '…');

/** normalized title → { statuses: sorted list (a title may occur more than once), errors, files } */
function index(report) {
  const byTitle = new Map();
  for (const { title: raw, status, error, file } of report?.results ?? []) {
    const title = normalize(raw);
    const entry = byTitle.get(title) ?? { statuses: [], errors: [], files: new Set() };
    entry.statuses.push(status);
    if (error) entry.errors.push(error);
    if (file) entry.files.add(file);
    byTitle.set(title, entry);
  }
  for (const entry of byTitle.values()) entry.statuses.sort();
  return byTitle;
}

const counts = (report) => {
  const count = (status) => (report?.results ?? []).filter((result) => result.status === status).length;
  return { passing: count('passed'), pending: count('pending'), failing: count('failed') };
};

function compare(plain, mrrt) {
  const a = index(plain.report);
  const b = index(mrrt.report);
  const groups = new Map();
  const add = (group, line) => groups.set(group, [...(groups.get(group) ?? []), line]);
  for (const title of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    const p = a.get(title);
    const m = b.get(title);
    const ps = p?.statuses.join('+') ?? 'absent';
    const ms = m?.statuses.join('+') ?? 'absent';
    if (ps === ms) continue;
    const where = [...(m?.files ?? p?.files ?? [])].join(', ');
    if (m?.statuses.includes('failed') && !p?.statuses.includes('failed')) {
      add('fail only with withMrrt', `${title}  [${where}]\n      ${m.errors.join('\n      ')}`);
    } else if (p?.statuses.includes('failed') && !m?.statuses.includes('failed')) {
      add('fail only without withMrrt', `${title}  [${where}]\n      ${p.errors.join('\n      ')}`);
    } else if (!m) {
      add('ran plain, not with withMrrt (a hook before it failed, or its file did not load)', `${title}  [${where}] (plain: ${ps})`);
    } else if (!p) {
      add('ran with withMrrt only', `${title}  [${where}] (withMrrt: ${ms})`);
    } else {
      add('other outcome changes', `${title}  [${where}] (plain: ${ps}; withMrrt: ${ms})`);
    }
  }
  return groups;
}

let dir;
const started = Date.now();

async function cleanup() {
  for (const child of children) kill(child);
  if (!dir) return;
  if (keep) console.log(`test:upstream: kept ${dir}`);
  else await rm(dir, { recursive: true, force: true });
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    // the step under way sees its child die and returns; `interrupted` keeps the next from starting
    interrupted = true;
    console.error(`test:upstream: ${signal}, stopping`);
    cleanup().finally(() => process.exit(130));
  });
}

try {
  for (const arg of args) {
    if (arg !== '--keep' && arg !== '--verbose') fail(`unknown argument ${arg} (use --keep, --verbose)`);
  }
  if (!existsSync(join(repo, 'dist/index.js'))) fail('dist/index.js is missing: run `npm run build` first (`npm run test:upstream` does)');
  if (!existsSync(TARBALL)) fail(`${TARBALL} is missing (oidc-provider's release tree; see shared/upstream/README.md beside the checkout)`);

  dir = await mkdtemp(join(tmpdir(), 'oidc-provider-upstream-'));
  const untar = await run('tar', ['-xzf', TARBALL, '-C', dir, '--strip-components=1'], { cwd: dir, timeout: 60_000 });
  if (untar.code !== 0) fail(`could not extract ${TARBALL}`);

  const { node, npm } = await node22(dir);
  console.log(`test:upstream: oidc-provider ${JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version} in ${dir}; npm ci on Node 22`);
  const install = await run(npm[0], [...npm.slice(1), 'ci', '--ignore-scripts', '--no-audit', '--no-fund'], {
    cwd: dir,
    log: join(dir, 'npm-ci.log'),
    timeout: INSTALL_TIMEOUT,
  });
  if (install.code !== 0) fail(`npm ci failed in ${dir}${install.timedOut ? ' (timed out)' : ''}:\n${tail(join(dir, 'npm-ci.log'))}`);

  // one after the other: the suites have timing-sensitive tests and the machine may have 2 cores
  const plain = await suite(dir, node, 'plain');
  const mrrt = await suite(dir, node, 'mrrt');
  for (const { mode, seconds, report } of [plain, mrrt]) {
    const { passing, pending, failing } = counts(report);
    console.log(`test:upstream: ${mode} run (${report?.node ?? 'node ?'}): ${passing} passing, ${pending} pending, ${failing} failing in ${seconds} s`);
  }

  const problems = [];
  if (!plain.complete || !mrrt.complete) problems.push('a run did not complete (see above)');

  // Proof that each run is the one it claims to be: in both, upstream's tests got our substitute
  // for lib/index.js and built their providers through it; only the withMrrt run loaded the
  // extension, and there the extension imported upstream's own lib/index.js.
  for (const { mode, report } of [plain, mrrt]) {
    if (!report) continue;
    const { attempted, built } = report.constructions;
    console.log(
      `test:upstream: ${mode} run: ${attempted} Provider constructions through ${mode}-provider.mjs (${built} built, ${attempted - built} threw), ` +
        `${report.redirected.length} upstream test modules given it for lib/index.js, ` +
        `${report.extensionImports.length} dist/ modules importing upstream's lib/index.js as 'oidc-provider'`,
    );
    if (attempted === 0 || report.redirected.length === 0)
      problems.push(`the ${mode} run's tests did not get ${mode}-provider.mjs (the resolve hook did not take effect)`);
  }
  if (mrrt.report && mrrt.report.extensionImports.length === 0) problems.push("the withMrrt run did not load the extension against upstream's lib/index.js");
  if (plain.report && plain.report.extensionImports.length !== 0) problems.push('the plain run loaded the extension');
  if (plain.report && mrrt.report && plain.report.redirected.join() !== mrrt.report.redirected.join()) {
    problems.push('the two runs substituted lib/index.js in different upstream test modules');
  }
  const nonLoopback = [...new Set([...(plain.report?.nonLoopback ?? []), ...(mrrt.report?.nonLoopback ?? [])])];
  if (nonLoopback.length !== 0) problems.push(`connection attempts beyond loopback: ${nonLoopback.join(', ')}`);

  const groups = compare(plain, mrrt);
  const differing = [...groups.values()].reduce((sum, lines) => sum + lines.length, 0);
  for (const [group, lines] of groups) {
    console.log(`\n${group} (${lines.length}):`);
    for (const line of lines) console.log(`  - ${line}`);
  }
  if (differing !== 0) problems.push(`${differing} tests differ`);

  const verdict = !plain.complete || !mrrt.complete ? 'incomplete' : differing === 0 ? 'identical' : `${differing} tests differ`;
  const p = counts(plain.report);
  const m = counts(mrrt.report);
  console.log(
    `\n${problems.length === 0 ? '' : `test:upstream: ${problems.join('; ')}\n`}` +
      `upstream conformance: plain ${p.passing} passing / ${p.pending} pending / ${p.failing} failing; ` +
      `mrrt ${m.passing} / ${m.pending} / ${m.failing}; ${verdict} ` +
      `(${((Date.now() - started) / 1000).toFixed(0)} s)`,
  );
  process.exitCode = problems.length === 0 ? 0 : 1;
  if (problems.length !== 0 && !keep) console.log("test:upstream: run again with -- --keep to keep both suites' logs and results");
} catch (error) {
  console.error('test:upstream:', error instanceof Abort ? error.message : error);
  process.exitCode = 1;
} finally {
  await cleanup();
}
