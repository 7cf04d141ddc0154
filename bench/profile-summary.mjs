// Summarises the V8 CPU profiles that `npm run bench -- --cpu-prof` writes (one per measured window,
// with bench/profiles/windows.json naming each window's variant, scenario and request count).
//
//   node bench/profile-summary.mjs bench/profiles [--top 25] [--base A]
//     per variant and regime (throughput windows, interleaved CPU rounds): CPU µs per request by area (package) for every scenario, then the functions whose
//     self time per request differs most from the base scenario (default A, plain oidc-provider)
//   node bench/profile-summary.mjs file.cpuprofile... [--top 25]
//     any profiles: self time by area and the busiest functions, in % of samples
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { top: { type: 'string', default: '25' }, base: { type: 'string', default: 'A' } },
});
if (positionals.length === 0) {
  process.stderr.write('usage: node bench/profile-summary.mjs <bench/profiles directory | file.cpuprofile...> [--top N] [--base A]\n');
  process.exit(2);
}
const top = Number(values.top);
const IDLE = new Set(['(idle)']);

function area(name, url) {
  if (name === '(idle)' || name === '(program)' || name === '(garbage collector)') return name;
  if (!url) return '(native)';
  if (url.startsWith('node:')) return 'node internals';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1];
  if (url.includes('/dist/')) return 'oidc-provider-mrrt (dist)';
  if (url.includes('/bench/')) return 'bench server';
  return url;
}

/** Self time (µs) by area and by function of one profile. */
function selfTimes(file) {
  const profile = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const self = new Map();
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < profile.samples.length; i += 1) self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + (deltas[i] ?? 0));
  const areas = new Map();
  const functions = new Map();
  for (const [id, us] of self) {
    const { callFrame } = byId.get(id);
    const name = callFrame.functionName || '(anonymous)';
    const where = callFrame.url
      ? ` ${callFrame.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(dist|bench)\//, '$1/')}:${callFrame.lineNumber + 1}`
      : '';
    const a = area(name, callFrame.url);
    areas.set(a, (areas.get(a) ?? 0) + us);
    functions.set(`${name}${where}`, (functions.get(`${name}${where}`) ?? 0) + us);
  }
  return { areas, functions };
}

const add = (into, from) => {
  for (const [k, v] of from) into.set(k, (into.get(k) ?? 0) + v);
};
const out = (line = '') => process.stdout.write(`${line}\n`);

function summariseFiles(files) {
  for (const file of files) {
    const { areas, functions } = selfTimes(file);
    const total = [...areas.values()].reduce((a, b) => a + b, 0);
    const pct = (us) => `${((100 * us) / total).toFixed(1).padStart(5)} %`;
    out(`\n${file}: ${(total / 1e6).toFixed(1)} s sampled\n\nself time by area:`);
    for (const [a, us] of [...areas].sort((x, y) => y[1] - x[1]).slice(0, 20)) out(`  ${pct(us)}  ${a}`);
    out('\nbusiest functions (self time):');
    for (const [f, us] of [...functions].sort((x, y) => y[1] - x[1]).slice(0, top)) out(`  ${pct(us)}  ${f}`);
  }
}

function summariseWindows(dir) {
  const { revision, windows } = JSON.parse(readFileSync(path.join(dir, 'windows.json'), 'utf8'));
  const groups = new Map(); // variant -> scenario -> { areas, functions, requests, windows }
  for (const w of windows) {
    // saturated throughput windows and one-request-at-a-time CPU rounds are summarised apart
    const group = w.regime ? `${w.variant}, ${w.regime === 'interleaved' ? 'interleaved CPU rounds' : 'throughput windows'}` : w.variant;
    if (!groups.has(group)) groups.set(group, new Map());
    const byScenario = groups.get(group);
    if (!byScenario.has(w.scenario)) byScenario.set(w.scenario, { areas: new Map(), functions: new Map(), requests: 0, windows: 0 });
    const g = byScenario.get(w.scenario);
    const { areas, functions } = selfTimes(path.join(dir, w.file));
    add(g.areas, areas);
    add(g.functions, functions);
    g.requests += w.requests;
    g.windows += 1;
  }
  out(
    `CPU profiles of measured windows (revision ${revision}); figures are self time in µs per request (per token for E: a silent authorization request and a code exchange), idle excluded.`,
  );
  for (const [variant, byScenario] of groups) {
    const names = [...byScenario.keys()].sort();
    const perReq = (g, map, key) => (map.get(key) ?? 0) / g.requests;
    const cell = (n) => n.toFixed(1).padStart(8);
    out(`\n## ${variant}: ${names.map((s) => `${s} ${byScenario.get(s).requests} requests in ${byScenario.get(s).windows} windows`).join(', ')}\n`);
    const allAreas = new Set(names.flatMap((s) => [...byScenario.get(s).areas.keys()]));
    for (const idle of IDLE) allAreas.delete(idle);
    const totals = Object.fromEntries(
      names.map((s) => {
        const g = byScenario.get(s);
        return [s, [...g.areas].filter(([a]) => !IDLE.has(a)).reduce((sum, [, us]) => sum + us, 0) / g.requests];
      }),
    );
    out(`${'area'.padEnd(32)}${names.map((s) => s.padStart(8)).join('')}`);
    out(`${'total (CPU on the main thread)'.padEnd(32)}${names.map((s) => cell(totals[s])).join('')}`);
    const rows = [...allAreas].map((a) => [a, names.map((s) => perReq(byScenario.get(s), byScenario.get(s).areas, a))]);
    for (const [a, nums] of rows.sort((x, y) => Math.max(...y[1]) - Math.max(...x[1])).slice(0, 15))
      out(`${a.slice(0, 31).padEnd(32)}${nums.map(cell).join('')}`);

    const base = byScenario.get(values.base);
    if (!base) continue;
    for (const s of names.filter((n) => n !== values.base)) {
      const g = byScenario.get(s);
      const keys = new Set([...g.functions.keys(), ...base.functions.keys()]);
      const diffs = [...keys].filter((k) => !k.startsWith('(idle)')).map((k) => [k, perReq(g, g.functions, k) - perReq(base, base.functions, k)]);
      out(`\n${s} − ${values.base}: ${(totals[s] - totals[values.base]).toFixed(1)} µs/req in all; functions that differ most:`);
      for (const [k, d] of diffs.sort((x, y) => Math.abs(y[1]) - Math.abs(x[1])).slice(0, top))
        out(`  ${(d >= 0 ? '+' : '') + d.toFixed(1)}`.padEnd(10) + ` ${k}`);
    }
  }
}

const [first] = positionals;
if (positionals.length === 1 && statSync(first).isDirectory()) summariseWindows(first);
else summariseFiles(positionals);
