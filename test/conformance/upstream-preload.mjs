// Loaded with --import into upstream's own test process (node test/run.js, unchanged), in both
// runs. It
// - installs a resolve hook that hands upstream's test files, in place of upstream's lib/index.js,
//   plain-provider.mjs (upstream's Provider, its constructions counted) in the plain run and
//   mrrt-provider.mjs (upstream's Provider through withMrrt, counted) in the withMrrt run, and
//   that hands the extension upstream's own lib/index.js as 'oidc-provider';
// - records every test's outcome from mocha's runner events and writes them, as JSON, to the file
//   named by MRRT_CONFORMANCE_RESULTS: upstream's test/run.js offers no reporter option, so the
//   runner's prototype is the one place to listen without touching upstream's files;
// - keeps the suite on loopback: upstream's run.js listens on '::' (every interface), and any
//   connection attempt to a non-loopback address is recorded so that the runner can fail on it.

import * as diagnostics from 'node:diagnostics_channel';
import { writeFileSync } from 'node:fs';
import * as module from 'node:module';
import * as net from 'node:net';
import { join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { ENV, STATS_KEY } from './shared.mjs';

const upstreamRoot = process.env[ENV.upstream];
const mode = process.env[ENV.mode];
const resultsFile = process.env[ENV.results];
if (!upstreamRoot || !resultsFile || (mode !== 'plain' && mode !== 'mrrt')) {
  throw new Error(`upstream-preload.mjs is started by test/conformance/run-upstream.mjs (${ENV.upstream}, ${ENV.mode}, ${ENV.results} unset)`);
}

const stats = {
  constructions: { attempted: 0, built: 0 },
  // upstream test modules whose import of lib/index.js (or 'oidc-provider') got our module
  redirected: new Set(),
  // modules of dist/ whose 'oidc-provider' import got upstream's lib/index.js
  extensionImports: new Set(),
  // connection attempts to anything but loopback, as "address:port"
  nonLoopback: new Set(),
};
globalThis[STATS_KEY] = stats;

// --- module wiring -------------------------------------------------------------------------------

if (typeof module.registerHooks !== 'function') {
  throw new Error(`node:module registerHooks is missing in Node ${process.version}; run upstream's suite on Node >= 22.19`);
}
const upstreamURL = pathToFileURL(join(upstreamRoot, '/')).href;
const upstreamTests = new URL('test/', upstreamURL).href;
const upstreamIndex = new URL('lib/index.js', upstreamURL).href;
const ownRoot = fileURLToPath(new URL('../../', import.meta.url));
const ownDist = new URL('../../dist/', import.meta.url).href;
const ownConformance = new URL('./', import.meta.url).href;
const substitute = new URL(`./${mode}-provider.mjs`, import.meta.url).href;
const isPackage = (specifier) => specifier === 'oidc-provider' || specifier.startsWith('oidc-provider/');

module.registerHooks({
  resolve(specifier, context, nextResolve) {
    const parent = context.parentURL ?? '';
    if (parent.startsWith(upstreamTests)) {
      // Upstream's tests reach the Provider through a relative path today ('../lib/index.js',
      // '../../lib/index.js'); comparing the resolved URL covers every spelling of it, and the
      // package name is covered too in case a test ever imports it that way (upstream's
      // package.json has no "exports", so the name would not resolve by itself).
      if (specifier === 'oidc-provider') {
        stats.redirected.add(relative(upstreamRoot, fileURLToPath(parent)));
        return { url: substitute, format: 'module', shortCircuit: true };
      }
      const resolved = nextResolve(specifier, context);
      if (resolved.url !== upstreamIndex) return resolved;
      stats.redirected.add(relative(upstreamRoot, fileURLToPath(parent)));
      return { ...resolved, url: substitute, format: 'module' };
    }
    // Only our own modules are re-pointed: our node_modules has an oidc-provider of its own, whose
    // Provider class the suite never sees; upstream's lib/ resolves as it always does.
    if ((parent.startsWith(ownDist) || parent.startsWith(ownConformance)) && isPackage(specifier)) {
      const url = specifier === 'oidc-provider' ? upstreamIndex : new URL(specifier.slice('oidc-provider/'.length), upstreamURL).href;
      if (parent.startsWith(ownDist)) stats.extensionImports.add(relative(ownRoot, fileURLToPath(parent)));
      return { url, format: 'module', shortCircuit: true };
    }
    return nextResolve(specifier, context);
  },
});

// --- loopback only ------------------------------------------------------------------------------

const isLoopback = (address) => /^127\./.test(address) || address === '::1' || /^::ffff:127\./i.test(address);

const { listen } = net.Server.prototype;
net.Server.prototype.listen = function (...args) {
  // upstream's run.js: createServer().listen(0, '::'); the tests reach it as 127.0.0.1
  if (typeof args[0] === 'number' && (args[1] === '::' || args[1] === '0.0.0.0')) {
    args[1] = '127.0.0.1';
  }
  return listen.apply(this, args);
};

diagnostics.subscribe('net.client.socket', ({ socket }) => {
  socket.on('connectionAttempt', (address, port) => {
    if (!isLoopback(address)) stats.nonLoopback.add(`${address}:${port}`);
  });
});

// --- per-test results ---------------------------------------------------------------------------

// The same mocha module test/run.js imports (CommonJS, so one shared instance).
const Mocha = module.createRequire(join(upstreamRoot, 'package.json'))('mocha');
const { constants } = Mocha.Runner;

const results = [];
let complete = false;

const firstLine = (error) => {
  const message = error instanceof Error ? error.message : String(error);
  return (message.split('\n').find((line) => line.trim() !== '') ?? (error?.name || 'Error')).trim();
};

const record = (status) => (runnable, error) => {
  results.push({
    title: runnable.fullTitle(),
    file: runnable.file ? relative(upstreamRoot, runnable.file) : undefined,
    type: runnable.type,
    status,
    ...(status === 'failed' ? { error: firstLine(error) } : {}),
  });
};

const { run } = Mocha.Runner.prototype;
Mocha.Runner.prototype.run = function (...args) {
  this.on(constants.EVENT_TEST_PASS, record('passed'));
  this.on(constants.EVENT_TEST_PENDING, record('pending'));
  // also fires for failing hooks ("before all" hook …), whose tests then never run
  this.on(constants.EVENT_TEST_FAIL, record('failed'));
  this.on(constants.EVENT_RUN_END, () => {
    complete = true;
    write();
  });
  return run.apply(this, args);
};

function write() {
  writeFileSync(
    resultsFile,
    JSON.stringify({
      mode,
      node: process.version,
      complete,
      results,
      constructions: stats.constructions,
      redirected: [...stats.redirected].sort(),
      extensionImports: [...stats.extensionImports].sort(),
      nonLoopback: [...stats.nonLoopback].sort(),
    }),
  );
}

// a run that crashes before mocha's end still leaves what it saw, marked incomplete
process.on('exit', write);
