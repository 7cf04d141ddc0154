// Statistics of the bench: percentiles, the median's bootstrap interval, verdicts on targets, and
// the per-variant summary (medians over rounds, ratios per round against A, the Redis targets).

export function percentile(sorted, q) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

export const median = (values) =>
  percentile(
    [...values].sort((a, b) => a - b),
    0.5,
  );

/** A deterministic pseudo-random source in [0, 1) (mulberry32): the same seed, the same sequence. */
export function seededRandom(seed) {
  let state = seed;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const mean = (values) => values.reduce((sum, value) => sum + value, 0) / values.length;

/** The mean without the lowest and highest `share` of the values (a garbage collection on one request does not move it). */
export function trimmedMean(values, share) {
  const sorted = [...values].sort((a, b) => a - b);
  const cut = Math.floor(sorted.length * share);
  return mean(sorted.slice(cut, sorted.length - cut));
}

export function round(value, digits) {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/**
 * A 95 % interval for the median of per-round values (percentile bootstrap, 4 000 resamples, fixed
 * seed: the same rounds always give the same interval). With `replicas` > 1, round i ran on each
 * scenario's process i mod replicas, and each resample first draws processes, then rounds within each
 * drawn process: the interval then also holds what one process differs from another, not only what
 * one round differs from the next.
 */
export function medianInterval(values, replicas = 1) {
  const random = seededRandom(0x9e3779b9);
  const pick = (list) => list[Math.floor(random() * list.length)];
  const groups = Array.from({ length: Math.min(replicas, values.length) }, (_, g) => values.filter((_, i) => i % replicas === g));
  const medians = [];
  for (let i = 0; i < 4000; i += 1) {
    const sample = groups.length > 1 ? groups.flatMap(() => pick(groups).map((_, __, group) => pick(group))) : values.map(() => pick(values));
    medians.push(median(sample));
  }
  medians.sort((a, b) => a - b);
  return [round(percentile(medians, 0.025), 3), round(percentile(medians, 0.975), 3)];
}

export const spread = (values, replicas = 1) => ({
  median: round(median(values), 3),
  min: round(Math.min(...values), 3),
  max: round(Math.max(...values), 3),
  ci95: medianInterval(values, replicas),
});

/**
 * The orders in which `n` scenarios take turns, one per round (a Williams design): every scenario
 * is at every place of a round equally often, and follows every other scenario equally often, so that
 * neither a drift within a round nor what the window before leaves behind weighs on one scenario more
 * than another. `n` rows when `n` is even; for an odd `n`, the rows and their mirror images (2`n`).
 */
export function balancedOrders(n) {
  // 0, 1, n − 1, 2, n − 2, …, then each row shifted by one
  const first = Array.from({ length: n }, (_, i) => (i % 2 === 1 ? (i + 1) / 2 : (n - i / 2) % n));
  const rows = Array.from({ length: n }, (_, r) => first.map((s) => (s + r) % n));
  return n % 2 === 0 ? rows : [...rows, ...rows.map((row) => [...row].reverse())];
}

/** A target on a median ratio: met or missed only when the whole 95 % interval says so. */
export function verdict(ratio, bound, atLeast) {
  const [low, high] = ratio.ci95;
  if (atLeast ? low >= bound : high <= bound) return 'met';
  if (atLeast ? high < bound : low > bound) return 'not met';
  return 'within noise';
}

/** The stolen share of a scenario's kept windows (those it was read for) and its rounds measured again; nothing where it was never read. */
function stolenOf(rounds) {
  const stolen = rounds.filter((r) => r.stolen !== undefined).map((r) => r.stolen);
  if (stolen.length === 0) return {};
  return {
    stolen_pct: round(100 * median(stolen), 2),
    stolen_max_pct: round(100 * Math.max(...stolen), 2),
    repeated_rounds: rounds.reduce((sum, r) => sum + (r.rounds_measured ?? 1) - 1, 0),
  };
}

/**
 * Medians over rounds per scenario, ratios per round against A (A and the other scenario measured
 * within the same round), C against E per token, and the Redis adapter's targets. `results` maps
 * "<variant>/<scenario>" to the scenario's per-round throughput measurements (each scenario alone, in turn),
 * `cpuResults` to its server CPU µs per token, per interleaved round; round i of either ran on
 * process i mod `replicas` of each scenario. E (two requests per token) is
 * compared with C, the MRRT exchange it is the alternative to, not with A.
 */
export function summarise(results, cpuResults, variants, scenarioNames, replicas = 1) {
  const spread_ = (values) => spread(values, replicas);
  const scenarios = [];
  const ratios = {};
  const cVsE = {};
  const targets = [];
  for (const variant of variants) {
    const [adapter, rotation] = variant.split('/');
    const byScenario = Object.fromEntries(scenarioNames.map((s) => [s, results.get(`${variant}/${s}`)]));
    const cpuOf = Object.fromEntries(scenarioNames.map((s) => [s, cpuResults.get(`${variant}/${s}`)]));
    for (const s of scenarioNames) {
      const rounds = byScenario[s];
      scenarios.push({
        name: s,
        adapter,
        rotation,
        rps: round(median(rounds.map((r) => r.rps)), 1),
        p50_ms: round(median(rounds.map((r) => r.p50_ms)), 3),
        p99_ms: round(median(rounds.map((r) => r.p99_ms)), 3),
        cpu_us_per_req: round(median(cpuOf[s]), 1),
        // the server's CPU per request in the saturated windows (ten in flight), where req/s is measured
        window_cpu_us_per_req: round(median(rounds.map((r) => r.window_cpu_us)), 1),
        failed: rounds.reduce((sum, r) => sum + r.failed, 0),
        // what a hypervisor took of the machine's CPUs in the kept windows, and the rounds measured again for it
        ...stolenOf(rounds),
      });
    }
    if (byScenario.C && byScenario.E) {
      const perRound = (f) => byScenario.E.map((e, i) => f(byScenario.C[i], e));
      const ratio = spread_(cpuOf.E.map((e, i) => e / cpuOf.C[i]));
      cVsE[variant] = {
        e_c_cpu: ratio,
        e_c_p50: spread_(perRound((c, e) => e.p50_ms / c.p50_ms)),
        e_c_p99: spread_(perRound((c, e) => e.p99_ms / c.p99_ms)),
        c_e_rps: spread_(perRound((c, e) => c.rps / e.rps)),
        verdict: verdict(ratio, 3, true),
      };
    }
    if (!byScenario.A) continue; // ratios are against A
    const others = scenarioNames.filter((n) => n !== 'A' && n !== 'E');
    const per = (s, field) => byScenario[s].map((r, i) => r[field] / byScenario.A[i][field]);
    // throughput ratio implied by server CPU per request (A's CPU ÷ the scenario's)
    const perCpu = (s) => cpuOf[s].map((cpu, i) => cpuOf.A[i] / cpu);
    const r = {};
    for (const n of others) {
      const x = n.toLowerCase();
      r[`${x}_a_rps`] = spread_(per(n, 'rps'));
      r[`${x}_a_p99`] = spread_(per(n, 'p99_ms'));
      r[`${x}_a_cpu`] = spread_(perCpu(n));
      // the same at saturation: A's window CPU per request ÷ the scenario's, per round (is a req/s gap the server's CPU?)
      r[`${x}_a_window_cpu`] = spread_(byScenario[n].map((w, i) => byScenario.A[i].window_cpu_us / w.window_cpu_us));
      // the same in µs per token: the overhead itself, whatever the baseline's size
      r[`${x}_a_cpu_us`] = spread_(cpuOf[n].map((cpu, i) => cpu - cpuOf.A[i]));
    }
    ratios[variant] = r;
    if (adapter === 'redis') {
      const target = (name, ratio, bound, atLeast) => {
        if (ratio) targets.push({ rotation, target: name, measured: ratio.median, ci95: ratio.ci95, verdict: verdict(ratio, bound, atLeast) });
      };
      target('C/A req/s ≥ 0.95', r.c_a_rps, 0.95, true);
      target('B/A req/s ≥ 0.98', r.b_a_rps, 0.98, true);
      target('C/A p99 ≤ 1.10', r.c_a_p99, 1.1, false);
      target('C/A from CPU per request ≥ 0.95', r.c_a_cpu, 0.95, true);
      target('B/A from CPU per request ≥ 0.98', r.b_a_cpu, 0.98, true);
      target('D/A req/s ≥ 0.95 (cache: false)', r.d_a_rps, 0.95, true);
      // the control: A′ runs A's code, so these read whether this run resolves B's 2 % margin; where
      // they read "within noise", a scenario costing what A costs would most likely have read so too
      target('A′/A req/s ≥ 0.98 (control: the same code)', r.f_a_rps, 0.98, true);
      target('A′/A from CPU per request ≥ 0.98 (control: the same code)', r.f_a_cpu, 0.98, true);
      const e = cVsE[variant]?.e_c_cpu;
      if (e) targets.push({ rotation, target: 'E/C server CPU per token ≥ 3', measured: e.median, ci95: e.ci95, verdict: verdict(e, 3, true) });
    }
  }
  return { scenarios, ratios, c_vs_e: cVsE, targets };
}
