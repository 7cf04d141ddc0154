// What a request allocates, by scenario: V8's sampling heap profiler (every 256 bytes, objects that a
// collection has freed included) over refresh requests sent one at a time to a provider on
// 127.0.0.1, memory adapter. Each scenario runs in a child process of its own (the scenarios of
// bench/run.mjs: A plain oidc-provider, B and C withMrrt); the report gives bytes per request for
// each, then the allocating functions whose bytes per request differ most from the first scenario's.
// A measuring device, not part of the package (docs/benchmark.md).
//
//   node bench/probes/allocations.mjs [--warmup N] [--requests N] [--rotation on|off] [--top N] A B C
import { fork } from 'node:child_process';
import http from 'node:http';
import { Session } from 'node:inspector/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { configuration, handler, login, providerParts, signingKey } from '../provider-setup.mjs';
import { SCENARIOS, refreshBody } from '../shared.mjs';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    warmup: { type: 'string', default: '3000' },
    requests: { type: 'string', default: '400' },
    rotation: { type: 'string', default: 'off' },
    top: { type: 'string', default: '25' },
    child: { type: 'string' }, // internal: the scenario this process measures
  },
});

/** Bytes allocated per request by allocating function. */
async function child(name) {
  const { adapter, ProviderClass } = await providerParts({ kind: SCENARIOS[name].provider });
  const server = http.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  const rotate = args.rotation === 'on';
  server.on('request', handler(new ProviderClass(url, configuration({ adapter, rotate, jwk: signingKey('ES256') }))));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  let { refreshToken } = await login(url);
  const refresh = () =>
    new Promise((resolve, reject) => {
      const body = refreshBody(refreshToken, SCENARIOS[name].resource);
      const headers = { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) };
      const req = http.request(`${url}/token`, { method: 'POST', agent, headers }, (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => {
          const answer = JSON.parse(Buffer.concat(chunks).toString());
          if (res.statusCode !== 200) reject(new Error(`scenario ${name}: ${res.statusCode} ${JSON.stringify(answer)}`));
          if (answer.refresh_token) refreshToken = answer.refresh_token;
          resolve();
        });
      });
      req.on('error', reject);
      req.end(body);
    });
  for (let i = 0; i < Number(args.warmup); i += 1) await refresh();
  const session = new Session();
  session.connect();
  await session.post('HeapProfiler.enable');
  await session.post('HeapProfiler.startSampling', {
    samplingInterval: 256,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  });
  const requests = Number(args.requests);
  for (let i = 0; i < requests; i += 1) await refresh();
  const { profile } = await session.post('HeapProfiler.stopSampling');
  session.disconnect();
  agent.destroy();
  server.close();
  const sites = {};
  const walk = (node) => {
    const { functionName, url: file, lineNumber } = node.callFrame;
    // the extension's own functions as dist/…, a package's as <package>/…
    const where = file.includes('/node_modules/') ? file.replace(/^.*\/node_modules\//, '') : file.replace(/^.*\/dist\//, 'dist/');
    const site = `${functionName || '(anonymous)'} ${where}${file ? `:${lineNumber + 1}` : ''}`;
    if (node.selfSize) sites[site] = (sites[site] ?? 0) + node.selfSize / requests;
    for (const next of node.children) walk(next);
  };
  walk(profile.head);
  return sites;
}

function runChild(name) {
  return new Promise((resolve, reject) => {
    const proc = fork(fileURLToPath(import.meta.url), [...process.argv.slice(2).filter((arg) => !SCENARIOS[arg]), '--child', name], {
      stdio: ['ignore', 2, 2, 'ipc'],
    });
    let result;
    proc.once('message', (message) => {
      result = message;
    });
    proc.once('error', reject);
    proc.once('close', (code) => (code === 0 && result?.ok ? resolve(result.value) : reject(new Error(`${name}: ${result?.error ?? `exited (${code})`}`))));
  });
}

const total = (sites) => Object.values(sites).reduce((sum, bytes) => sum + bytes, 0);

if (args.child) {
  child(args.child).then(
    (value) => process.send({ ok: true, value }, () => process.exit(0)),
    (err) => process.send({ ok: false, error: err?.stack ?? String(err) }, () => process.exit(1)),
  );
} else {
  const names = positionals.length ? positionals : ['A', 'B', 'C'];
  for (const name of names) if (!SCENARIOS[name] || SCENARIOS[name].silent) throw new Error(`unknown refresh scenario "${name}"`);
  const measured = [];
  for (const name of names) measured.push(await runChild(name));
  const lines = [`Bytes allocated per request (${args.warmup} requests of warm-up, ${args.requests} sampled, rotation ${args.rotation}):`];
  for (const [i, name] of names.entries())
    lines.push(
      `  ${name}: ${Math.round(total(measured[i]))}${i ? ` (${Math.round(total(measured[i]) - total(measured[0])) >= 0 ? '+' : ''}${Math.round(total(measured[i]) - total(measured[0]))})` : ''}`,
    );
  for (const [i, name] of names.entries()) {
    if (i === 0) continue;
    const keys = new Set([...Object.keys(measured[0]), ...Object.keys(measured[i])]);
    const rows = [...keys]
      .map((key) => [(measured[i][key] ?? 0) - (measured[0][key] ?? 0), key])
      .sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]))
      .slice(0, Number(args.top));
    lines.push('', `${name} − ${names[0]}, bytes per request, by allocating function:`);
    for (const [bytes, key] of rows) lines.push(`  ${String(Math.round(bytes)).padStart(6)}  ${key}`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}
