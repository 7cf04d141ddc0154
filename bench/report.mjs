// The report: the machine and revision measured, and the Markdown rendering of the results (the
// JSON document is the report object itself).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { SCENARIOS } from './shared.mjs';
import { median, round } from './stats.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The commit measured, and whether lib/ had uncommitted changes when dist/ was built. */
export function revision() {
  try {
    const git = (...gitArgs) => execFileSync('git', gitArgs, { cwd: path.join(here, '..'), encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = git('status', '--porcelain', '--', 'lib') !== '';
    return `${git('rev-parse', '--short', 'HEAD')}${dirty ? ' + uncommitted lib/ changes' : ''}`;
  } catch {
    return 'unknown';
  }
}

export function machine(redisInfo, loadBefore) {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? cpu;
  } catch {
    /* not Linux */
  }
  const pkg = (name) => JSON.parse(readFileSync(path.join(here, '..', 'node_modules', name, 'package.json'), 'utf8')).version;
  return {
    nproc: os.availableParallelism(),
    cpu,
    memory_gib: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    redis: redisInfo.redis_version,
    oidc_provider: pkg('oidc-provider'),
    autocannon: pkg('autocannon'),
    // other work on the machine skews everything: the 1-minute load average before and after
    load_avg: [round(loadBefore, 2), round(os.loadavg()[0], 2)],
  };
}

export const fmt = (value, digits = 2) => (Number.isFinite(value) ? value.toFixed(digits) : 'n/a');
export const fmtInt = (value) => (Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : 'n/a');
const fmtSpread = (s) => (s ? `${fmt(s.median)} (${fmt(s.min)}–${fmt(s.max)})` : 'n/a');
// µs, which may be negative: "80 (−148 to 260)"
const signed = (value) => (value < 0 ? `−${fmtInt(-value)}` : fmtInt(value));
const fmtSpreadUs = (s) => (s ? `${signed(s.median)} (${signed(s.min)} to ${signed(s.max)})` : 'n/a');

/** ", at least N tokens a process (E: M)" from a run's warm-up, the fewest over its variants; empty for runs before it was recorded. */
function warmed(report) {
  const counts = Object.values(report.warmup_tokens_per_process ?? {});
  if (counts.length === 0) return '';
  const fewest = (pick) =>
    Math.min(
      ...counts.flatMap((byScenario) =>
        Object.entries(byScenario)
          .filter(([s]) => pick(s))
          .map(([, n]) => n),
      ),
    );
  const refreshes = fewest((s) => !SCENARIOS[s]?.silent);
  const silent = fewest((s) => SCENARIOS[s]?.silent);
  return `, at least ${fmtInt(refreshes)} tokens a process${Number.isFinite(silent) ? ` (E: ${fmtInt(silent)})` : ''}`;
}

export function markdown(report) {
  const lines = [];
  const m = report.machine;
  lines.push(
    `Machine: ${m.nproc} cores (nproc), ${m.cpu}, ${m.memory_gib} GiB; Node ${m.node}; Redis ${m.redis}; oidc-provider ${m.oidc_provider}; autocannon ${m.autocannon}; load average ${m.load_avg[0]} before, ${m.load_avg[1]} after; ${report.elapsed_s} s.`,
  );
  const s = report.settings;
  lines.push(
    `Settings: revision ${s.revision}; ${s.mode}; throughput: ${s.rounds} rounds of every scenario alone for ${s.duration_s} s each, in the orders of a balanced design (${s.replicas ?? 1} server process${(s.replicas ?? 1) === 1 ? '' : 'es'} per scenario and variant, one provider each, taken in turn by the rounds, ${s.connections} connections each, the variants one after another, after a ${s.warmup_s} s warm-up of each process with the variant's scenarios side by side${warmed(report)}); server CPU: ${s.cpu_rounds} interleaved rounds of ${s.cpu_tokens} tokens per scenario, one request at a time; ${s.alg} signatures (access token JWT + ID token per request).`,
  );
  const stolen = report.scenarios.filter((row) => row.stolen_pct !== undefined);
  if (stolen.length !== 0 && s.steal_limit_pct !== undefined) {
    // every scenario of a variant is measured again with its round: count each variant's rounds once
    const variants = new Map(stolen.map((row) => [`${row.adapter}/${row.rotation}`, row.repeated_rounds]));
    const repeated = [...variants.values()].reduce((sum, n) => sum + n, 0);
    const kept = s.rounds * variants.size;
    lines.push(
      `Stolen CPU time (what a hypervisor ran on this machine's CPUs for others, from /proc/stat): ${
        s.steal_attempts > 1 && s.steal_limit_pct < 100
          ? `a throughput round with a window above ${s.steal_limit_pct} % was measured again, up to ${s.steal_attempts} times in all, keeping the one whose most stolen window was stolen least; ${repeated} rounds measured again for ${kept} kept`
          : `measured, no round measured again (${kept} rounds)`
      }; the kept windows' stolen share read ${fmt(median(stolen.map((row) => row.stolen_pct)))} % (median of the scenarios' medians), ${fmt(Math.max(...stolen.map((row) => row.stolen_max_pct)))} % at most.`,
    );
  }
  lines.push('');
  lines.push('| scenario | adapter | rotation | req/s | p50 ms | p99 ms | server CPU µs/req | saturated server CPU µs/req |');
  lines.push('| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |');
  for (const row of report.scenarios) {
    lines.push(
      `| ${row.name}: ${SCENARIOS[row.name].label} | ${row.adapter} | ${row.rotation} | ${fmtInt(row.rps)} | ${fmt(row.p50_ms)} | ${fmt(row.p99_ms)} | ${fmtInt(row.cpu_us_per_req)} | ${row.window_cpu_us_per_req === undefined ? 'n/a' : fmtInt(row.window_cpu_us_per_req)} |`,
    );
  }
  lines.push('');
  const ratioColumns = (fields) => {
    // F is A′, plain oidc-provider again in processes of its own: what the method reads where there is no difference
    const present = ['b', 'c', 'd', 'f'].filter((x) => Object.values(report.ratios).some((r) => r[`${x}_a_rps`]));
    return fields.flatMap(([suffix, title]) => present.map((x) => [`${x}_a_${suffix}`, `${x === 'f' ? 'A′' : x.toUpperCase()}/A ${title}`]));
  };
  const ratioTable = (columns, format = fmtSpread) => {
    lines.push(`| adapter | rotation | ${columns.map(([, title]) => title).join(' | ')} |`);
    lines.push(`| --- | --- | ${columns.map(() => '---').join(' | ')} |`);
    for (const [key, r] of Object.entries(report.ratios)) {
      const [adapter, rotation] = key.split('/');
      lines.push(`| ${adapter} | ${rotation} | ${columns.map(([k]) => format(r[k])).join(' | ')} |`);
    }
  };
  if (Object.keys(report.ratios).length) {
    lines.push('Ratios per round (median, min–max over rounds):');
    lines.push('');
    ratioTable(
      ratioColumns([
        ['rps', 'req/s'],
        ['p99', 'p99'],
      ]),
    );
    lines.push('');
    lines.push(
      "Throughput ratio implied by server CPU per request (A's CPU µs per token ÷ the scenario's, per interleaved round; robust to other load on the machine):",
    );
    lines.push('');
    ratioTable(ratioColumns([['cpu', '']]).map(([k, title]) => [k, title.trim()]));
    lines.push('');
    lines.push(
      "The same at saturation (A's server CPU per request ÷ the scenario's in each round's throughput windows, ten requests in flight; moves with other load on the machine):",
    );
    lines.push('');
    ratioTable(ratioColumns([['window_cpu', '']]).map(([k, title]) => [k, title.trim()]));
    lines.push('');
    lines.push("The same as server CPU µs per token beyond A (the scenario's minus A's, per interleaved round):");
    lines.push('');
    ratioTable(
      ratioColumns([['cpu_us', '']]).map(([k, title]) => [k, title.trim().replace('/A', ' − A µs')]),
      fmtSpreadUs,
    );
  }
  if (report.targets.length) {
    lines.push('');
    lines.push(
      'Targets (Redis adapter, medians over rounds with a 95 % bootstrap interval): "met" or "not met" only when the whole interval says so, otherwise "within noise".',
    );
    lines.push('');
    lines.push('| rotation | target | median | 95 % interval | verdict |');
    lines.push('| --- | --- | ---: | --- | --- |');
    // three decimals: with two, an interval ending at 0.946 would read as reaching a bound of 0.95
    for (const t of report.targets)
      lines.push(`| ${t.rotation} | ${t.target} | ${fmt(t.measured, 3)} | ${fmt(t.ci95[0], 3)}–${fmt(t.ci95[1], 3)} | ${t.verdict} |`);
  }
  const cVsE = Object.entries(report.c_vs_e ?? {});
  if (cVsE.length) {
    lines.push('');
    lines.push(
      'A token for a new API: C (one MRRT refresh-token exchange) against E (without MRRT: a silent authorization request with the session cookie, then the code exchange; it also leaves a second refresh token). Per token; ratios E/C per round, median (95 % interval); the target is C at least 3× cheaper than E in server CPU:',
    );
    lines.push('');
    lines.push(
      '| adapter | rotation | HTTP requests C / E | Redis commands C / E | Redis round trips C / E | CPU µs C / E | E/C CPU | verdict (≥ 3) | p50 ms C / E | p99 ms C / E | E/C p99 |',
    );
    lines.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
    const row = (adapter, rotation, name) => report.scenarios.find((x) => x.adapter === adapter && x.rotation === rotation && x.name === name);
    const commands = (rotation, name) => report.redis_commands.find((x) => x.rotation === rotation && x.name === name);
    const interval = (r) => `${fmt(r.median)} (${fmt(r.ci95[0])}–${fmt(r.ci95[1])})`;
    for (const [key, r] of cVsE) {
      const [adapter, rotation] = key.split('/');
      const c = row(adapter, rotation, 'C');
      const e = row(adapter, rotation, 'E');
      const cc = adapter === 'redis' ? commands(rotation, 'C') : undefined;
      const ec = adapter === 'redis' ? commands(rotation, 'E') : undefined;
      const pair = (a, b, f = fmt) => (a === undefined || b === undefined ? 'n/a' : `${f(a)} / ${f(b)}`);
      lines.push(
        `| ${adapter} | ${rotation} | 1 / 2 | ${pair(cc?.commands_per_exchange, ec?.commands_per_exchange, (v) => fmt(v, 1))} | ${pair(cc?.round_trips_per_exchange, ec?.round_trips_per_exchange, (v) => fmt(v, 1))} | ${pair(c.cpu_us_per_req, e.cpu_us_per_req, fmtInt)} | ${interval(r.e_c_cpu)} | ${r.verdict} | ${pair(c.p50_ms, e.p50_ms)} | ${pair(c.p99_ms, e.p99_ms)} | ${interval(r.e_c_p99)} |`,
      );
    }
  }
  if (report.redis_commands.length) {
    lines.push('');
    lines.push(
      `Redis commands per token (INFO commandstats delta ÷ ${s.count_requests} sequential tokens, checked against MONITOR; commands run inside Lua scripts count too; round trips = commands the server sent, from MONITOR; A–D one refresh request per token, E two requests):`,
    );
    lines.push('');
    lines.push('| scenario | rotation | commands | round trips | policy-store HMGET | by command |');
    lines.push('| --- | --- | ---: | ---: | ---: | --- |');
    for (const row of report.redis_commands) {
      const by = Object.entries(row.by_command)
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([cmd, v]) => `${cmd} ${v}`)
        .join(', ');
      const note = row.source === 'INFO commandstats' ? '' : ' (from MONITOR: other clients were busy)';
      lines.push(
        `| ${row.name} | ${row.rotation} | ${fmt(row.commands_per_exchange)} | ${fmt(row.round_trips_per_exchange)} | ${fmt(row.policy_hmget_per_exchange)} | ${by}${note} |`,
      );
    }
  }
  if (report.storage?.length) {
    lines.push('');
    lines.push(
      "Storage kept per user in Redis after a login and tokens for N APIs in all (the login's API, then N − 1 more: with MRRT one exchange each, without MRRT a silent authorization and code exchange each); refresh tokens live + consumed (a rotated token is kept, consumed, until it expires, to detect reuse); bytes from MEMORY USAGE of every key: kept = refresh tokens, Grants, sessions and their index keys; transient = authorization codes (60 s):",
    );
    lines.push('');
    lines.push(
      '| rotation | N APIs | refresh tokens with MRRT (live + consumed) | without MRRT | Grants with / without | sessions with / without | bytes kept with MRRT | without MRRT | transient bytes with / without |',
    );
    lines.push('| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |');
    for (const rotation of ['off', 'on']) {
      for (const apis of [...new Set(report.storage.map((x) => x.apis))]) {
        const w = report.storage.find((x) => x.rotation === rotation && x.apis === apis && x.way === 'mrrt');
        const o = report.storage.find((x) => x.rotation === rotation && x.apis === apis && x.way === 'without');
        if (!w || !o) continue;
        const rts = (x) => `${x.refresh_tokens_live} + ${x.refresh_tokens - x.refresh_tokens_live}`;
        lines.push(
          `| ${rotation} | ${apis} | ${rts(w)} | ${rts(o)} | ${w.grants} / ${o.grants} | ${w.sessions} / ${o.sessions} | ${fmtInt(w.kept_bytes)} | ${fmtInt(o.kept_bytes)} | ${fmtInt(w.transient_bytes)} / ${fmtInt(o.transient_bytes)} |`,
        );
      }
    }
  }
  if (report.policy_store) {
    const p = report.policy_store;
    lines.push('');
    lines.push(`Policy store at scale (RedisPolicyStore, ${fmtInt(p.clients)} clients, 3-entry policies of ${p.policy_json_bytes} bytes JSON):`);
    lines.push('');
    lines.push(
      '| clients | write (autopipelined, 1000 in flight) | get p50 (cold) | get p99 (cold) | get (cached, PolicyCache hit) | Redis memory per policy |',
    );
    lines.push('| ---: | --- | ---: | ---: | --- | ---: |');
    const cachedCell = `p50 ${fmt(p.cached_get_p50_ms, 4)} ms, p99 ${fmt(p.cached_get_p99_ms, 4)} ms`;
    lines.push(
      `| ${fmtInt(p.clients)} | ${fmt(p.write_s)} s (${fmtInt(p.writes_per_s)}/s) | ${fmt(p.get_p50_ms, 3)} ms | ${fmt(p.get_p99_ms, 3)} ms | ${cachedCell} | ${fmtInt(p.redis_bytes_per_policy)} B |`,
    );
  }
  return `${lines.join('\n')}\n`;
}
