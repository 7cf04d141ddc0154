// `npm run bench`: what an MRRT exchange costs next to plain oidc-provider, in one run.
//
// The servers run in child processes (bench/server.mjs, driven through bench/server-process.mjs),
// one provider each, the variants one after another (see Fleet); this process is the load generator
// (bench/load.mjs), counts Redis commands (bench/redis-commands.mjs) and runs the policy-store scale test (bench/scale.mjs); the statistics
// are in bench/stats.mjs and the report in bench/report.mjs. Everything talks to 127.0.0.1 only and
// every loop is bounded. Progress goes to stderr; the results go to stdout (a Markdown report, or
// with --json one JSON document and nothing else).
//
//   node bench/run.mjs [--quick] [--json] [--alg ES256|RS256|EdDSA] [--rounds N] [--duration S]
//                      [--warmup S] [--connections N] [--scale N] [--only memory/off,redis/on]
//                      [--scenarios ABCDEF] [--replicas N] [--cpu-only] [--cpu-rounds N] [--cpu-prof] [--pin]
//                      [--steal-limit P]
// --only / --scenarios run a subset (ratios need A, C against E needs both); --replicas runs each
// variant's server for each scenario in N processes, the rounds taking them in turn (intervals then
// include how much one process differs from another); --cpu-only measures the interleaved server CPU only (after the
// warm-up) and prints its rounds and ratios as JSON, a quick way to compare two builds; --cpu-prof profiles the server process during
// each measured window (not the warm-up, minting or purging) and writes one V8 CPU profile per
// window to bench/profiles/, with bench/profiles/windows.json giving each window's scenario and
// request count: `node bench/profile-summary.mjs bench/profiles` compares scenarios in CPU µs per
// request, the throughput windows apart from the interleaved CPU rounds (one request at a time).
// --steal-limit: a throughput round with a window during which a hypervisor stole more than P % of the
// machine's CPU time is measured again, at most four times in all (default 5; 100 never repeats one;
// --quick and --cpu-prof never repeat a round).
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { Redis } from 'ioredis';

import { measureInterleaved, measureWindows, sanityCheck } from './load.mjs';
import { countCommands } from './redis-commands.mjs';
import { fmt, fmtInt, machine, markdown, revision } from './report.mjs';
import { scaleRun } from './scale.mjs';
import { ServerProcess } from './server-process.mjs';
import { SCENARIOS, deleteByPrefix, lazyFreed, parseInfo, parseVariants } from './shared.mjs';
import { balancedOrders, median, round, spread, summarise } from './stats.mjs';
import { log } from './util.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    alg: { type: 'string', default: 'ES256' },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    connections: { type: 'string' },
    scale: { type: 'string' },
    only: { type: 'string' },
    scenarios: { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
    pin: { type: 'boolean', default: false },
    replicas: { type: 'string' },
    'cpu-only': { type: 'boolean', default: false },
    'cpu-rounds': { type: 'string' },
    'steal-limit': { type: 'string' },
  },
});

const PRESET = args.quick
  ? { rounds: 2, duration: 0.5, warmup: 0.3, scale: 10_000, sample: 2_000, count: 30, cpuRounds: 4, cpuTokens: 40, replicas: 1, stealAttempts: 1 }
  : { rounds: 24, duration: 1, warmup: 12, scale: 100_000, sample: 10_000, count: 500, cpuRounds: 64, cpuTokens: 100, replicas: 8, stealAttempts: 4 };
const positive = (value, fallback, name) => {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number`);
  return n;
};
const settings = {
  mode: args.quick ? 'quick' : 'full',
  alg: args.alg,
  rounds: Math.round(positive(args.rounds, PRESET.rounds, 'rounds')),
  duration_s: positive(args.duration, PRESET.duration, 'duration'),
  warmup_s: positive(args.warmup, PRESET.warmup, 'warmup'),
  connections: Math.round(positive(args.connections, 10, 'connections')),
  scale_clients: Math.round(positive(args.scale, PRESET.scale, 'scale')),
  scale_sample: PRESET.sample,
  count_requests: PRESET.count,
  cpu_rounds: Math.round(positive(args['cpu-rounds'], PRESET.cpuRounds, 'cpu-rounds')),
  cpu_tokens: PRESET.cpuTokens,
  replicas: Math.round(positive(args.replicas, PRESET.replicas, 'replicas')),
  // a throughput round with a window during which a hypervisor ran something else on this machine's
  // CPUs for more than this share of their time is measured again (docs/benchmark.md, "Stolen CPU time")
  steal_limit_pct: positive(args['steal-limit'], 5, 'steal-limit'),
  // a profiled round is never measured again: each window writes its profile to one file
  steal_attempts: args['cpu-prof'] ? 1 : PRESET.stealAttempts,
};
if (args.quick && args['steal-limit'] !== undefined) log('note: --quick measures stolen time but repeats no round; --steal-limit has no effect');
if (!['ES256', 'RS256', 'EdDSA'].includes(settings.alg)) throw new Error('--alg must be ES256, RS256 or EdDSA');
if (settings.rounds > 50 || settings.duration_s > 120 || settings.scale_clients > 1_000_000 || settings.replicas > 8)
  throw new Error('rounds ≤ 50, duration ≤ 120 s, scale ≤ 1 000 000, replicas ≤ 8');

const variants = parseVariants(args.only);
const SCENARIO_NAMES = args.scenarios
  ? args.scenarios
      .toUpperCase()
      .split('')
      .filter((s) => s.trim())
  : Object.keys(SCENARIOS);
for (const s of SCENARIO_NAMES) if (!SCENARIOS[s]) throw new Error(`--scenarios: unknown scenario "${s}" (letters of ${Object.keys(SCENARIOS).join('')})`);
const STORAGE_COUNTS = [1, 3, 10];
// the refreshes a process of A–D and F should serve before its first measured window: after about
// 240, its first window was still slow; after about 1,200, no slower than the later ones
const WARM_TOKENS = 1_000;
// the order of the scenarios in each throughput round
const ORDERS = balancedOrders(SCENARIO_NAMES.length);
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const RUN_PREFIX = `mrrt-bench:${process.pid}-${randomBytes(4).toString('hex')}:`;
const PROFILE_DIR = path.join(here, 'profiles');

/**
 * One throughput round: every job's window, one after another in the round's order, measured again
 * as a whole, in the same order, while a hypervisor stole more than the steal limit of the
 * machine's CPU time during any of its windows, at most `attempts` rounds in all; the round whose
 * most stolen window was stolen least is kept. Stolen time is other tenants' work on this machine's
 * CPUs: on a shared machine it decides most of how req/s varies from window to window. Repeating
 * the whole round keeps its place in the balanced design and gives every scenario's process the
 * same extra windows.
 */
async function unstolenRound(jobs, redis, attempts) {
  let kept;
  let measured = 0;
  while (measured < attempts) {
    measured += 1;
    const windows = [];
    for (const job of jobs) {
      windows.push(...(await measureWindows([job], { seconds: settings.duration_s, connections: settings.connections })));
      // the window's tokens are unlinked: Redis frees them in the background, before the next window starts
      await lazyFreed(redis);
    }
    const worst = Math.max(...windows.map((window) => window.stolen ?? 0));
    if (kept === undefined || worst < kept.worst) kept = { windows, worst, attempt: measured };
    if (100 * worst <= settings.steal_limit_pct) break;
  }
  return { windows: kept.windows.map((window) => ({ ...window, rounds_measured: measured })), kept: kept.attempt, measured };
}

/**
 * The server processes of one variant: `replicas` per scenario, each hosting that scenario's kind of
 * provider for this variant only, under a Redis prefix of its own. No process runs two providers,
 * as no deployment does: plain oidc-provider's code and the extension's never share a process, and
 * neither do two adapters' or rotation modes' (serving the other variants' providers made A's CPU
 * per request 19 % dearer, and their saturated rounds lowered C/A by 1–3 points, docs/benchmark.md).
 * Rounds take a scenario's processes in turn: what one process makes of the same code differs from
 * another's.
 */
class Fleet {
  #servers;
  #targets = [];

  constructor(variant, serverFor) {
    this.variant = variant;
    this.placements = SCENARIO_NAMES.flatMap((scenario) => Array.from({ length: settings.replicas }, (_, replica) => ({ scenario, replica })));
    this.#servers = this.placements.map(() => serverFor());
  }

  get servers() {
    return this.#servers;
  }

  /** `sessions`: how many signed-in sessions scenario E's provider keeps (the other scenarios need none). */
  async start(prefix, sessions) {
    await Promise.all(this.#servers.map((each) => each.start()));
    this.#targets = await Promise.all(
      this.#servers.map(async (each, i) => {
        const kinds = [SCENARIOS[this.placements[i].scenario].provider];
        const created = await each.call('init', {
          redisUrl: REDIS_URL,
          prefix: `${prefix}p${i}:`,
          alg: settings.alg,
          sessions: SCENARIOS[this.placements[i].scenario].silent ? sessions : 0,
          kinds,
          variants: [this.variant],
        });
        return new Map(created.map((t) => [t.name, t]));
      }),
    );
    for (const [i, each] of this.#servers.entries())
      await sanityCheck(each, this.#targets[i], { variants: [this.variant], scenarioNames: [this.placements[i].scenario] });
  }

  /** Round r of any measurement runs on each scenario's process r mod replicas. */
  placeOf = (scenario, replica = 0) => {
    const i = SCENARIO_NAMES.indexOf(scenario) * settings.replicas + (replica % settings.replicas);
    return { server: this.#servers[i], targets: this.#targets[i] };
  };
}

async function main() {
  const started = performance.now();
  const loadBefore = os.loadavg()[0];
  // read when the run starts, just after `npm run bench` built dist/: others may commit meanwhile
  const measured = revision();
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, connectTimeout: 5000, retryStrategy: () => null, lazyConnect: true });
  try {
    await redis.connect();
  } catch (err) {
    throw new Error(`no Redis at ${REDIS_URL} (set REDIS_URL): ${err.message}`);
  }
  // every server process started, for the clean-up (a stopped one stops again at once)
  const live = new Set();
  const serverFor = () => {
    const server = new ServerProcess({ pin: args.pin });
    live.add(server);
    return server;
  };
  const stopAll = (servers) => Promise.all([...servers].map((each) => each.stop().catch((err) => log(`stopping a bench server: ${err.message}`))));
  let cleaning;
  const cleanup = () => {
    // once, whoever asks first (the end of the run, a signal or a crash)
    cleaning ??= (async () => {
      await stopAll(live);
      const removed = await deleteByPrefix(redis, RUN_PREFIX).catch((err) => {
        log(`cleanup failed: ${err.message}`);
        return 0;
      });
      log(`removed ${removed} Redis keys under ${RUN_PREFIX}`);
      redis.disconnect();
    })();
    return cleaning;
  };
  const onSignal = () => {
    cleanup().finally(() => process.exit(130));
  };
  const onCrash = (err) => {
    log(`failed: ${err?.stack ?? err}`);
    // a crash may leave a connection that never answers: the clean-up gets 15 s
    setTimeout(() => process.exit(1), 15_000).unref();
    cleanup().finally(() => process.exit(1));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('uncaughtException', onCrash);

  try {
    const redisInfo = parseInfo(await redis.info('server'));
    if (args['cpu-prof']) {
      // this run's profiles only
      mkdirSync(PROFILE_DIR, { recursive: true });
      for (const file of readdirSync(PROFILE_DIR)) if (file.endsWith('.cpuprofile') || file === 'windows.json') rmSync(path.join(PROFILE_DIR, file));
    }
    // scenario E's sessions: a few more than connections, taken round robin, so that two requests
    // in flight rarely share one (when they do, the session's last save wins; nothing fails)
    const sessions = SCENARIO_NAMES.some((s) => SCENARIOS[s].silent) ? settings.connections + 4 : 0;
    const { connections, replicas } = settings;
    const GUESS_RPS = 600; // tokens/s of all scenarios side by side, a guess that sizes the first warm-up's pools
    const results = new Map(); // "<variant>/<scenario>" -> per-round results
    const cpuResults = new Map(); // "<variant>/<scenario>" -> µs per token, per round
    const redisCommands = [];
    const profileWindows = [];
    const warmupTokens = {}; // per variant and scenario, the fewest tokens a process served in the warm-up

    // the variants one after another, each in processes of its own, stopped before the next starts
    for (const [v, variant] of variants.entries()) {
      const fleet = new Fleet(variant, serverFor);
      const { placeOf } = fleet;
      await fleet.start(`${RUN_PREFIX}v${v}:`, sessions);
      log(
        `${variant}: ${fleet.placements.length} servers up (${replicas} per scenario, one provider each, one real login each, ${sessions} more sessions for E), sanity-checked`,
      );

      // per scenario, the highest rate seen alone so far (at first, a guess from the warm-up) and side by
      // side in the warm-up: rotating scenarios get twice that many tokens per second
      const peakRps = new Map();
      const warmRps = new Map();
      const jobsOf = (replica, profileOf = () => undefined) =>
        SCENARIO_NAMES.map((scenario) => ({
          ...placeOf(scenario, replica),
          variant,
          scenario,
          poolRps: 2 * Math.max(peakRps.get(scenario) ?? warmRps.get(scenario) ?? GUESS_RPS / SCENARIO_NAMES.length, 100),
          profileFile: profileOf(scenario),
        }));
      // the warm-up, one replica at a time, its scenarios at once: long enough that V8 has optimised
      // each process's hot paths before its first measured window (after 2 s, about 240 requests a
      // process, the first saturated window of each process read C about 35 % below A, the later
      // ones C as fast as A; docs/benchmark.md)
      const warmTokens = new Map(); // per scenario, the fewest tokens any of its processes served
      for (let replica = 0; replica < replicas; replica += 1) {
        const warm = await measureWindows(jobsOf(replica), { seconds: settings.warmup_s, connections });
        for (const [i, scenario] of SCENARIO_NAMES.entries()) {
          warmRps.set(scenario, Math.max(warmRps.get(scenario) ?? 0, warm[i].rps));
          warmTokens.set(scenario, Math.min(warmTokens.get(scenario) ?? Infinity, warm[i].requests));
        }
      }
      warmupTokens[variant] = Object.fromEntries(warmTokens);
      const fewest = Math.min(...SCENARIO_NAMES.filter((s) => !SCENARIOS[s].silent).map((s) => warmTokens.get(s)));
      // an exhausted pool or a slow machine shortens the warm-up: the first rounds then measure a process still being optimised
      if (!args.quick && fewest < WARM_TOKENS)
        log(`WARNING ${variant}: a process served only ${fmtInt(fewest)} tokens in the warm-up (${fmtInt(WARM_TOKENS)} wanted); try a longer --warmup`);
      log(
        `warm-up ${variant}: ${SCENARIO_NAMES.map((s) => `${s} ${fmtInt(warmRps.get(s))} req/s, at least ${fmtInt(warmTokens.get(s))} tokens a process`).join('; ')}`,
      );
      // alone, a scenario got 5–7 times its rate side by side in runs on 2 cores; pools hold twice this
      // guess (it only sizes them: an exhausted pool shortens a window, it does not bias its rate)
      for (const scenario of SCENARIO_NAMES) peakRps.set(scenario, warmRps.get(scenario) * SCENARIO_NAMES.length);

      for (let round_ = 0; round_ < (args['cpu-only'] ? 0 : settings.rounds); round_ += 1) {
        const profileOf = (scenario) =>
          args['cpu-prof'] ? path.join(PROFILE_DIR, `${variant.replace('/', '-')}-${scenario}-round${round_ + 1}.cpuprofile`) : undefined;
        // one scenario at a time (no other server busy), in the round's place of a balanced design
        const all = jobsOf(round_, profileOf);
        const jobs = ORDERS[round_ % ORDERS.length].map((i) => all[i]);
        const kept = await unstolenRound(jobs, redis, settings.steal_attempts);
        const measured_ = kept.windows;
        for (const [i, r] of measured_.entries()) {
          const { scenario, profileFile } = jobs[i];
          const key = `${variant}/${scenario}`;
          if (profileFile)
            profileWindows.push({
              file: path.basename(profileFile),
              variant,
              regime: 'throughput',
              scenario,
              round: round_ + 1,
              requests: r.requests + r.failed,
            });
          peakRps.set(scenario, Math.max(peakRps.get(scenario), r.rps));
          if (!results.has(key)) results.set(key, []);
          results.get(key).push(r);
        }
        log(
          `round ${round_ + 1}/${settings.rounds} ${variant}${kept.measured > 1 ? ` (measured ${kept.measured} times, kept measurement ${kept.kept})` : ''}: ${measured_.map((r, i) => `${jobs[i].scenario} ${fmtInt(r.rps)} req/s p99 ${fmt(r.p99_ms)} ms${r.stolen === undefined ? '' : ` stolen ${fmt(100 * r.stolen)} %`}`).join(' | ')}`,
        );
      }

      // server CPU per token: short interleaved rounds, each from collected heaps
      for (let round_ = 0; round_ < settings.cpu_rounds; round_ += 1) {
        const profileOf = (scenario) =>
          args['cpu-prof'] ? path.join(PROFILE_DIR, `${variant.replace('/', '-')}-${scenario}-cpu-round${round_ + 1}.cpuprofile`) : undefined;
        const cpu = await measureInterleaved((scenario) => placeOf(scenario, round_), {
          variant,
          scenarioNames: SCENARIO_NAMES,
          perScenario: settings.cpu_tokens,
          profileOf,
        });
        if (args['cpu-prof']) {
          for (const scenario of SCENARIO_NAMES)
            profileWindows.push({
              file: path.basename(profileOf(scenario)),
              variant,
              regime: 'interleaved',
              scenario,
              round: round_ + 1,
              requests: settings.cpu_tokens,
            });
        }
        for (const scenario of SCENARIO_NAMES) {
          const key = `${variant}/${scenario}`;
          if (!cpuResults.has(key)) cpuResults.set(key, []);
          cpuResults.get(key).push(cpu[scenario]);
        }
      }
      log(
        `CPU per token ${variant} (${settings.cpu_rounds} interleaved rounds): ${SCENARIO_NAMES.map((s) => `${s} ${fmtInt(median(cpuResults.get(`${variant}/${s}`)))} µs`).join(', ')}`,
      );

      if (!args['cpu-only'] && variant.startsWith('redis/')) {
        log(`counting Redis commands per token, ${variant}`);
        const rows = await countCommands(placeOf, redis, {
          redisUrl: REDIS_URL,
          variants: [variant],
          scenarioNames: SCENARIO_NAMES,
          requests: settings.count_requests,
          runPrefix: RUN_PREFIX,
          attempts: args.quick ? 1 : 3,
        });
        redisCommands.push(...rows);
      }
      await stopAll(fleet.servers);
    }

    if (args['cpu-prof']) {
      writeFileSync(path.join(PROFILE_DIR, 'windows.json'), `${JSON.stringify({ revision: measured, windows: profileWindows }, null, 2)}\n`);
      log(
        `CPU profiles of ${profileWindows.length} measured windows in ${PROFILE_DIR}; compare with: node bench/profile-summary.mjs ${path.relative(process.cwd(), PROFILE_DIR) || '.'}`,
      );
    }

    if (args['cpu-only']) {
      // per round, and A's CPU ÷ each scenario's with its interval: enough to compare two builds quickly
      const ratios = {};
      for (const variant of variants) {
        const cpuOfA = cpuResults.get(`${variant}/A`);
        if (!cpuOfA) continue;
        ratios[variant] = Object.fromEntries(
          SCENARIO_NAMES.filter((s) => s !== 'A').map((s) => [
            `${s.toLowerCase()}_a_cpu`,
            spread(
              cpuResults.get(`${variant}/${s}`).map((cpu, i) => cpuOfA[i] / cpu),
              replicas,
            ),
          ]),
        );
      }
      const report = {
        revision: measured,
        settings,
        warmup_tokens_per_process: warmupTokens,
        cpu_us_per_token: Object.fromEntries(cpuResults),
        ratios,
      };
      process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      return;
    }
    const { scenarios, ratios, c_vs_e: cVsE, targets: targetsMet } = summarise(results, cpuResults, variants, SCENARIO_NAMES, replicas);

    log(`storage per user for N = ${STORAGE_COUNTS.join(', ')} APIs`);
    const storageServer = serverFor();
    await storageServer.start();
    await storageServer.call('init', { alg: settings.alg });
    const storage = await storageServer.call('storage', { redisUrl: REDIS_URL, prefix: RUN_PREFIX, counts: STORAGE_COUNTS });
    await storageServer.stop();

    log(`policy-store scale run: ${fmtInt(settings.scale_clients)} clients`);
    const policyStore = await scaleRun(redis, {
      redisUrl: REDIS_URL,
      prefix: RUN_PREFIX,
      clients: settings.scale_clients,
      sample: settings.scale_sample,
    });

    const report = {
      scenarios,
      ratios,
      c_vs_e: cVsE,
      targets: targetsMet,
      redis_commands: redisCommands,
      storage,
      policy_store: policyStore,
      machine: machine(redisInfo, loadBefore),
      settings: { ...settings, revision: measured },
      warmup_tokens_per_process: warmupTokens,
      elapsed_s: 0,
    };
    report.elapsed_s = round((performance.now() - started) / 1000, 1);
    log(`done in ${report.elapsed_s} s`);
    process.stdout.write(args.json ? `${JSON.stringify(report, null, 2)}\n` : markdown(report));
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('uncaughtException', onCrash);
    await cleanup();
  }
}

main().catch((err) => {
  log(`failed: ${err?.stack ?? err}`);
  process.exitCode = 1;
});
