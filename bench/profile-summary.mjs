// Summarises V8 CPU profiles (`npm run bench -- --cpu-prof` writes the server's to bench/profiles/):
// self time by package and the busiest functions, so that two runs (say scenario A and scenario C)
// can be compared side by side.
//
//   node bench/profile-summary.mjs bench/profiles/CPU.*.cpuprofile [--top 25]
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
if (positionals.length === 0) {
  process.stderr.write('usage: node bench/profile-summary.mjs <file.cpuprofile>... [--top N]\n');
  process.exit(2);
}

function area(url) {
  if (!url) return '(native / idle / gc)';
  if (url.startsWith('node:')) return 'node internals';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1];
  if (url.includes('/dist/')) return 'oidc-provider-mrrt (dist)';
  if (url.includes('/bench/')) return 'bench server';
  return url;
}

for (const file of positionals) {
  const profile = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const self = new Map();
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < profile.samples.length; i += 1) self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + (deltas[i] ?? 0));
  const total = [...self.values()].reduce((a, b) => a + b, 0);

  const areas = new Map();
  const functions = new Map();
  for (const [id, us] of self) {
    const { callFrame } = byId.get(id);
    const name = callFrame.functionName || '(anonymous)';
    const isIdle = name === '(idle)' || name === '(program)' || name === '(garbage collector)';
    const a = isIdle ? name : area(callFrame.url);
    areas.set(a, (areas.get(a) ?? 0) + us);
    const key = `${name} ${callFrame.url ? `${callFrame.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(dist|bench)\//, '$1/')}:${callFrame.lineNumber + 1}` : ''}`;
    functions.set(key, (functions.get(key) ?? 0) + us);
  }
  const pct = (us) => `${((100 * us) / total).toFixed(1).padStart(5)} %`;
  process.stdout.write(`\n${file}: ${(total / 1e6).toFixed(1)} s sampled\n\nself time by area:\n`);
  for (const [a, us] of [...areas].sort((x, y) => y[1] - x[1]).slice(0, 20)) process.stdout.write(`  ${pct(us)}  ${a}\n`);
  process.stdout.write(`\nbusiest functions (self time):\n`);
  for (const [f, us] of [...functions].sort((x, y) => y[1] - x[1]).slice(0, Number(values.top))) process.stdout.write(`  ${pct(us)}  ${f}\n`);
}
