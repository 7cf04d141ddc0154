// `npm run bench:warm`: the extension's own server CPU per request, with warm caches. Each child
// process hosts a plain oidc-provider and a withMrrt provider with the same configuration (one
// adapter and rotation mode) and sends them refresh requests one at a time: A, B and C (the
// scenarios of bench/run.mjs) and F (A′: A again, on a refresh token of its own, the calibration),
// the two providers taking turns. Each request's server CPU is counted from its arrival to its
// response's end (process.cpuUsage()): the client's own work falls outside (a garbage collection
// its allocations cause may still land in a server's window, for every scenario alike).
//
// Why it is built this way (docs/benchmark.md, "Warm CPU in one process"):
// - a request costs several per cent less right after one that ran the same code (measured: A after
//   A or A′, B after B, C after C), so the providers take turns: every request follows one on the
//   other provider, A and A′ alike (after B or C, drawn at random), B and C alike (after A or A′);
// - what one process's JIT and heap make of the code moves its figures by about a per cent, so each
//   variant runs in `--replicas` processes (one after another, never two at once), and the bootstrap
//   interval resamples processes, then blocks within them (bench/stats.mjs `medianInterval`);
// - per block of 100 requests per scenario, A ÷ X is taken on trimmed means (10 % off each end, so
//   that a garbage collection landing on one request does not decide the block) and on plain means
//   (collections included).
// It cannot show what a process running only plain oidc-provider saves by never loading the
// extension: both providers share the child's JIT.
// After the measurement, each child also counts what a request runs of the extension (entries into
// its functions, by V8's precise coverage): a measure of the code a request touches, which is what
// the full run's one-request-at-a-time rounds make expensive (docs/benchmark.md).
//
//   node bench/warm.mjs [--requests N] [--warmup N] [--replicas N] [--evict MB] [--only memory/off,redis/on] [--json]
// --evict: MB of memory read before every request (default 0), so that each finds much of its code and
// data out of the CPU caches, as in the full run's rounds of one request at a time (48 does)
// --warmup: requests per scenario before anything counts (default 300). V8 compiles a function with
// its top tier after about 3 000 calls (`node --v8-options`, --invocation-count-for-turbofan), so a
// function that runs once per request, as most of the extension's do, gets there only with a longer
// warm-up: 6 000 measures every function of a request after that point.
import { fork } from 'node:child_process';
import http from 'node:http';
import { Session } from 'node:inspector/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { Redis } from 'ioredis';

import { configuration, handler, login, providerParts, signingKey } from './provider-setup.mjs';
import { fmt, fmtInt, revision } from './report.mjs';
import { SCENARIOS, deleteByPrefix, parseVariants, refreshBody } from './shared.mjs';
import { mean, median, round, seededRandom, spread, trimmedMean, verdict } from './stats.mjs';
import { log } from './util.mjs';

const NAMES = ['A', 'B', 'C', 'F'];
const BLOCK = 100; // requests per scenario in one block
const TRIM = 0.1;
const MIN_BLOCKS = 10;
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const CALL_SAMPLE = 50; // requests per scenario whose calls into the extension are counted, after the measurement
const EXTENSION = new URL('../dist/', import.meta.url).href;
const ADAPTERS = new URL('../dist/adapters/', import.meta.url).href;

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '2000' },
    warmup: { type: 'string', default: '300' },
    replicas: { type: 'string', default: '3' },
    evict: { type: 'string', default: '0' },
    only: { type: 'string' },
    json: { type: 'boolean', default: false },
    child: { type: 'string' }, // internal: "<variant>:<replica>"
  },
});

// ---- the child: one variant, one process ----

// --evict: memory read before every request (outside its server's CPU count), so that the request
// finds much of its code and data out of the CPU caches, as in the full run's rounds of one request
// at a time among 24 or more server processes. Read, not written: written lines would be written
// back during the next request's count. The client's own work between the read and the request's
// arrival warms again what it shares with the server (Node's HTTP code), so caches are partly cold.
/** Reads `buffer` one cache line (64 bytes) at a time; the sum keeps the reads. */
function evict(buffer) {
  let sum = 0;
  for (let i = 0; i < buffer.length; i += 16) sum += buffer[i];
  return sum;
}

/** A provider on 127.0.0.1 whose every request's server CPU goes to `onCpu(µs)`. */
async function startProvider({ kind, rotate, redis, prefix, jwk, servers, onCpu }) {
  const { adapter, ProviderClass } = await providerParts({ kind, redis, prefix });
  const server = http.createServer();
  servers.push(server);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  const handle = handler(new ProviderClass(url, configuration({ adapter, rotate, jwk })));
  server.keepAliveTimeout = 60_000;
  server.on('request', (req, res) => {
    const before = process.cpuUsage();
    res.once('finish', () => {
      const { user, system } = process.cpuUsage(before);
      onCpu(user + system);
    });
    return handle(req, res);
  });
  return url;
}

// node:http with one keep-alive socket: the fewest client-side moving parts between two requests
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function send(url, { method = 'GET', body } = {}) {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) };
    const req = http.request(url, { method, agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString() }));
    });
    req.setTimeout(10_000, () => req.destroy(new Error(`${method} ${url}: no answer within 10 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** A scenario's requests: each refreshes for the scenario's API, with the refresh token the previous one returned when rotating. */
async function scenarioRequests(name, url, rotate) {
  const { resource } = SCENARIOS[name];
  let { refreshToken } = await login(url);
  let checked = false;
  return async () => {
    const { status, text } = await send(`${url}/token`, { method: 'POST', body: refreshBody(refreshToken, resource) });
    if (status !== 200) throw new Error(`scenario ${name}: ${status} ${text}`);
    const body = JSON.parse(text);
    if (!checked) {
      // the first answer, as the scenario says: the API's token, MRRT's `resource` only on C, rotation as configured
      const aud = JSON.parse(Buffer.from(body.access_token.split('.')[1], 'base64url')).aud;
      const problems = [];
      if (aud !== resource) problems.push(`access token audience ${aud}`);
      if ((name === 'C') !== (body.resource === resource)) problems.push(`resource ${body.resource}`);
      if (rotate === (body.refresh_token === refreshToken)) problems.push('refresh token rotation is not as configured');
      if (problems.length) throw new Error(`scenario ${name}: ${problems.join('; ')}`);
      checked = true;
    }
    if (body.refresh_token) refreshToken = body.refresh_token;
  };
}

async function child(variant, replica, requests, warmUp, evictMb) {
  const [adapterKind, rotation] = variant.split('/');
  const rotate = rotation === 'on';
  const prefix = `mrrt-bench-warm:${process.pid}:`;
  const redis = adapterKind === 'redis' ? new Redis(REDIS_URL, { maxRetriesPerRequest: 1, lazyConnect: true, retryStrategy: () => null }) : undefined;
  const servers = [];
  let cleaning;
  const cleanup = () => {
    cleaning ??= (async () => {
      agent.destroy();
      for (const server of servers) server.close();
      if (redis) {
        await deleteByPrefix(redis, prefix).catch((err) => log(`removing ${prefix}* failed: ${err.message}`));
        redis.disconnect();
      }
    })();
    return cleaning;
  };
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ])
    // on, not once: a Ctrl-C reaches this process both from the terminal and from the parent
    process.on(signal, () => cleanup().finally(() => process.exit(code)));
  try {
    if (redis) {
      try {
        await redis.connect();
      } catch (err) {
        throw new Error(`no Redis at ${REDIS_URL} (set REDIS_URL, or --only memory/off,memory/on): ${err.message}`);
      }
    }
    let cpu;
    const onCpu = (us) => {
      cpu = us;
    };
    const jwk = signingKey('ES256');
    const urls = {};
    for (const kind of ['plain', 'mrrt']) urls[kind] = await startProvider({ kind, rotate, redis, prefix: `${prefix}${kind}:`, jwk, servers, onCpu });
    const scenarios = {};
    for (const name of NAMES) scenarios[name] = await scenarioRequests(name, urls[SCENARIOS[name].provider], rotate);
    const samples = Object.fromEntries(NAMES.map((name) => [name, []]));
    // written once, so that its pages are the process's own (a fresh allocation reads as one shared zero page)
    const evictBuffer = evictMb > 0 ? new Uint32Array((evictMb * 1024 * 1024) / 4).fill(1) : undefined;
    let evicted = 0;
    const random = seededRandom(0x5eed + replica);
    for (let i = 0; i < warmUp + requests; i += 1) {
      // the providers take turns, each scenario's place within its provider's turns drawn anew:
      // A and A′ both follow B or C, B and C both follow A or A′
      const [plain1, plain2] = shuffle(['A', 'F'], random);
      const [mrrt1, mrrt2] = shuffle(['B', 'C'], random);
      for (const name of [plain1, mrrt1, plain2, mrrt2]) {
        if (evictBuffer) evicted += evict(evictBuffer);
        cpu = undefined;
        await scenarios[name]();
        if (cpu === undefined) throw new Error(`scenario ${name}: the server's CPU was not counted`);
        if (i >= warmUp) samples[name].push(cpu);
      }
    }
    // every read counted: the buffer holds ones
    if (evictBuffer && evicted !== ((warmUp + requests) * NAMES.length * evictBuffer.length) / 16) throw new Error('--evict: the memory was not read');
    const calls = await extensionCalls(scenarios);
    const blocks = Math.floor(requests / BLOCK);
    const perBlock = (statistic) =>
      Object.fromEntries(NAMES.map((name) => [name, Array.from({ length: blocks }, (_, b) => statistic(samples[name].slice(b * BLOCK, (b + 1) * BLOCK)))]));
    return {
      us: Object.fromEntries(
        NAMES.map((name) => [name, { trimmed: trimmedMean(samples[name], TRIM), mean: mean(samples[name]), median: median(samples[name]) }]),
      ),
      trimmed: perBlock((values) => trimmedMean(values, TRIM)),
      all: perBlock(mean),
      calls,
    };
  } finally {
    await cleanup();
  }
}

/**
 * What a request runs of the extension, counted rather than timed: entries per request into its
 * functions (calls, and resumptions of async ones) and how many distinct functions it enters, by
 * V8's precise coverage (which slows the code it counts, so it runs after the measurement). The
 * storage adapters are left out: A's and B's requests use them as much as C's.
 */
async function extensionCalls(scenarios) {
  const session = new Session();
  session.connect();
  try {
    await session.post('Profiler.enable');
    const counted = {};
    for (const name of NAMES) {
      await session.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
      for (let i = 0; i < CALL_SAMPLE; i += 1) await scenarios[name]();
      const { result } = await session.post('Profiler.takePreciseCoverage');
      await session.post('Profiler.stopPreciseCoverage');
      let entries = 0;
      let functions = 0;
      for (const script of result) {
        if (!script.url.startsWith(EXTENSION) || script.url.startsWith(ADAPTERS)) continue;
        // the first range of a function counts its entries; offset 0 is the module's own top level
        for (const { ranges } of script.functions) {
          if (ranges[0].startOffset === 0 || ranges[0].count === 0) continue;
          entries += ranges[0].count;
          functions += 1;
        }
      }
      counted[name] = { entries: entries / CALL_SAMPLE, functions };
    }
    return counted;
  } finally {
    session.disconnect();
  }
}

/** `list` in a random order (Fisher–Yates). */
function shuffle(list, random) {
  const copy = [...list];
  for (let i = copy.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [copy[i], copy[j]] = [copy[j], copy[i]];
  }
  return copy;
}

// ---- the parent: one child at a time, then the statistics ----

/** The child measuring now: a signal to this process reaches it, so that it removes its keys before the end. */
let running;

function runChild(variant, replica, requests, warmUp) {
  return new Promise((resolve, reject) => {
    const proc = fork(
      fileURLToPath(import.meta.url),
      ['--child', `${variant}:${replica}`, '--requests', String(requests), '--warmup', String(warmUp), '--evict', args.evict],
      {
        stdio: ['ignore', 2, 2, 'ipc'],
      },
    );
    let result;
    proc.once('message', (message) => {
      result = message;
    });
    proc.once('error', reject);
    // 'close', not 'exit': by then the child's last message has been read
    proc.once('close', (code) => {
      running = undefined;
      if (code === 0 && result?.ok) resolve(result.value);
      else reject(new Error(`${variant} process ${replica + 1}: ${result?.error ?? `exited (${code})`}`));
    });
    running = proc;
  });
}

/** A ÷ X per block, the blocks of process r at the positions r mod replicas (what `medianInterval` resamples by). */
function ratios(runs, statistic, name) {
  const values = [];
  const blocks = runs[0][statistic].A.length;
  for (let b = 0; b < blocks; b += 1) for (const run of runs) values.push(run[statistic].A[b] / run[statistic][name][b]);
  return values;
}

async function parent() {
  const requests = Number(args.requests);
  const replicas = Number(args.replicas);
  const warmUp = Number(args.warmup);
  if (!Number.isInteger(warmUp) || warmUp < 0 || warmUp > 100_000) throw new Error('--warmup must be an integer from 0 to 100 000');
  if (!Number.isInteger(requests) || requests < MIN_BLOCKS * BLOCK || requests > 100_000)
    throw new Error(`--requests must be an integer from ${MIN_BLOCKS * BLOCK} to 100 000`);
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > 8) throw new Error('--replicas must be an integer from 1 to 8');
  const evictMb = Number(args.evict);
  if (!/^\d+$/.test(args.evict) || evictMb > 1024) throw new Error('--evict must be an integer number of MB from 0 to 1024');
  const variants = parseVariants(args.only);
  const runs = new Map(variants.map((variant) => [variant, []]));
  // replica by replica across the variants: a drift of the machine meets every variant alike
  for (let replica = 0; replica < replicas; replica += 1) {
    for (const variant of variants) {
      log(`${variant}: process ${replica + 1}/${replicas}, ${warmUp} + ${requests} requests per scenario`);
      runs.get(variant).push(await runChild(variant, replica, requests, warmUp));
    }
  }
  const results = variants.map((variant) => {
    const each = runs.get(variant);
    const us = Object.fromEntries(
      NAMES.map((name) => [name, Object.fromEntries(['trimmed', 'mean', 'median'].map((k) => [k, round(mean(each.map((run) => run.us[name][k])), 1)]))]),
    );
    const ratiosOf = (statistic) => Object.fromEntries(['F', 'B', 'C'].map((name) => [name, spread(ratios(each, statistic, name), replicas)]));
    // the counts are the same in every process but for a stray request: their mean
    const calls = Object.fromEntries(
      NAMES.map((name) => [name, Object.fromEntries(['entries', 'functions'].map((k) => [k, round(mean(each.map((run) => run.calls[name][k])), 1)]))]),
    );
    return { variant, us, trimmed: ratiosOf('trimmed'), all: ratiosOf('all'), calls };
  });
  const report = { revision: revision(), node: process.version, warmUp, requests, replicas, evictMb, block: BLOCK, trim: TRIM, results };
  if (args.json) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return;
  }
  const ratio = (r) => `${fmt(r.median, 3)} (${fmt(r.ci95[0], 3)}–${fmt(r.ci95[1], 3)})`;
  // a verdict needs the variation between processes in its interval
  const judged = (r, bound) => (replicas > 1 ? verdict(r, bound, true) : 'n/a (one process)');
  const lines = [
    `Server CPU per request, ${evictMb === 0 ? 'warm' : `cold (${evictMb} MB read before each request)`} (${report.revision}, Node ${process.version}, ${replicas} process${replicas === 1 ? '' : 'es'} per variant, ${requests} requests per scenario each after ${report.warmUp} of warm-up).`,
    'µs: trimmed means over every process; ratios: A\'s CPU ÷ the scenario\'s, median of the blocks (95 % interval), on trimmed means and, as "all", on plain means.',
    '',
    '| variant | A µs | B − A µs | C − A µs | A′/A | B/A | verdict (≥ 0.98) | C/A | verdict (≥ 0.95) | A′/A all | B/A all | C/A all |',
    '| --- | ---: | ---: | ---: | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...results.map(
      (r) =>
        `| ${r.variant} | ${fmtInt(r.us.A.trimmed)} | ${fmtInt(r.us.B.trimmed - r.us.A.trimmed)} | ${fmtInt(r.us.C.trimmed - r.us.A.trimmed)} | ${ratio(r.trimmed.F)} | ${ratio(r.trimmed.B)} | ${judged(r.trimmed.B, 0.98)} | ${ratio(r.trimmed.C)} | ${judged(r.trimmed.C, 0.95)} | ${ratio(r.all.F)} | ${ratio(r.all.B)} | ${ratio(r.all.C)} |`,
    ),
    '',
    `Entries per request into the extension's functions (its storage adapters aside) and distinct functions entered, by V8's precise coverage over ${CALL_SAMPLE} requests per scenario after the measurement:`,
    '',
    '| variant | A | B | C |',
    '| --- | --- | --- | --- |',
    ...results.map(
      (r) => `| ${r.variant} | ${['A', 'B', 'C'].map((name) => `${fmt(r.calls[name].entries, 1)} (${fmtInt(r.calls[name].functions)})`).join(' | ')} |`,
    ),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

if (args.child) {
  const [variant, replica] = args.child.split(':');
  child(variant, Number(replica), Number(args.requests), Number(args.warmup), Number(args.evict)).then(
    (value) => process.send({ ok: true, value }, () => process.exit(0)),
    (err) => process.send({ ok: false, error: err?.stack ?? String(err) }, () => process.exit(1)),
  );
} else {
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ])
    process.once(signal, () => {
      if (running) running.once('close', () => process.exit(code)).kill(signal);
      else process.exit(code);
    });
  parent().then(
    () => process.exit(0),
    (err) => {
      log(`failed: ${err?.message ?? err}`);
      process.exit(1);
    },
  );
}
