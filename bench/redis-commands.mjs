// Redis commands per token: sequential tokens from each Redis-backed scenario (one refresh request
// each for A–D, a silent authorization request and its code exchange for E), counted by
// the `INFO commandstats` delta (which includes the commands Lua scripts run) and checked against
// `MONITOR` restricted to the run's keys (which also tells the commands the server sent itself,
// its round trips, and the policy store's reads).
import net from 'node:net';

import { tokenRequester } from './load.mjs';
import { SCENARIOS, parseInfo, rotating, targetName } from './shared.mjs';
import { round } from './stats.mjs';
import { log, sleep } from './util.mjs';

async function commandCalls(redis) {
  const info = parseInfo(await redis.info('commandstats'));
  const calls = {};
  for (const [key, value] of Object.entries(info)) {
    if (!key.startsWith('cmdstat_')) continue;
    calls[key.slice('cmdstat_'.length)] = Number(/calls=(\d+)/.exec(value)?.[1] ?? 0);
  }
  return calls;
}

/**
 * A MONITOR connection on a plain socket: `onCommand(args, source)` for every command Redis runs,
 * `source` "lua" for commands run by scripts. (ioredis's own monitor mode loses track of its replies
 * when a busy Redis streams lines while it connects.)
 */
async function monitor(redisUrl, onCommand) {
  const url = new URL(redisUrl);
  const socket = net.connect(Number(url.port || 6379), url.hostname || '127.0.0.1');
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.on('error', () => {});
  const password = decodeURIComponent(url.password);
  if (password) socket.write(`AUTH ${url.username ? `${decodeURIComponent(url.username)} ` : ''}${password}\r\n`);
  socket.write('MONITOR\r\n');
  let buffer = '';
  let started;
  let refused;
  const ready = new Promise((resolve, reject) => {
    started = resolve;
    refused = reject;
  });
  socket.setEncoding('utf8');
  socket.on('data', (chunk) => {
    buffer += chunk;
    let end;
    while ((end = buffer.indexOf('\r\n')) !== -1) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (line === '+OK') {
        started();
        continue;
      }
      if (line.startsWith('-')) {
        refused(new Error(`MONITOR: ${line.slice(1)}`));
        continue;
      }
      const match = /^\+[\d.]+ \[\d+ ([^\]]+)\] (.*)$/.exec(line);
      if (!match) continue;
      const args = [...match[2].matchAll(/"((?:[^"\\]|\\.)*)"/g)].map(([, quoted]) =>
        quoted.replace(/\\(x[0-9a-f]{2}|.)/g, (_, c) =>
          c.length === 3 ? String.fromCharCode(parseInt(c.slice(1), 16)) : ({ n: '\n', r: '\r', t: '\t', a: '\x07', b: '\b' }[c] ?? c),
        ),
      );
      onCommand(args, match[1]);
    }
  });
  await ready;
  return { close: () => socket.destroy() };
}

/** The Redis key a command (as MONITOR shows it) works on. */
const keyOf = (cmd) => String(/^eval(sha)?$/i.test(String(cmd[0])) ? cmd[3] : cmd[1]);

/**
 * One row per Redis variant and scenario. `requests` sequential tokens each; `runPrefix` is the
 * prefix of every key this run's servers write. When other clients of the same Redis were busy, the
 * count is taken again, `attempts` times in all, and MONITOR's figures are used after the last.
 */
export async function countCommands(placeOf, redis, { redisUrl, variants, scenarioNames, requests, runPrefix, attempts = 3 }) {
  const rows = [];
  for (const variant of variants.filter((v) => v.startsWith('redis/'))) {
    for (const scenario of scenarioNames) {
      // INFO commandstats counts every client of this Redis: when another client was busy meanwhile
      // (its commands show up in commandstats but not among this run's keys in MONITOR), count again
      let pass;
      for (let attempt = 1; attempt <= attempts; attempt += 1) {
        const { server, targets } = placeOf(scenario);
        pass = await countPass(server, targets, redis, { redisUrl, variant, scenario, requests, runPrefix });
        if (pass.consistent || attempt === attempts) break;
        log(`command count ${variant} ${scenario}: other Redis clients were active, counting again (${attempt}/${attempts - 1})`);
      }
      const n = requests;
      const source = pass.consistent ? pass.commandstats : pass.monitored;
      const perCommand = Object.fromEntries(
        Object.entries(source)
          .filter(([, calls]) => calls > 0)
          .map(([cmd, calls]) => [cmd, round(calls / n, 2)]),
      );
      rows.push({
        name: scenario,
        adapter: 'redis',
        rotation: variant.split('/')[1],
        http_requests_per_token: SCENARIOS[scenario].silent ? 2 : 1,
        commands_per_exchange: round(Object.values(source).reduce((a, b) => a + b, 0) / n, 2),
        round_trips_per_exchange: round(pass.sent / n, 2),
        policy_hmget_per_exchange: round(pass.policyReads / n, 2),
        by_command: perCommand,
        source: pass.consistent ? 'INFO commandstats' : "MONITOR (commandstats had other clients' commands)",
      });
    }
  }
  return rows;
}

async function countPass(server, targets, redis, { redisUrl, variant, scenario, requests: n, runPrefix }) {
  const target = targets.get(targetName(variant, scenario));
  const { silent } = SCENARIOS[scenario];
  const tokens = rotating(variant) && !silent ? await server.call('mint', { name: target.name, count: n }) : undefined;
  const getToken = tokenRequester(target, scenario);
  await sleep(100);

  const monitored = {};
  let sent = 0;
  let policyReads = 0;
  let counting = false;
  const monitoring = await monitor(redisUrl, (cmd, source) => {
    const name = String(cmd[0]).toLowerCase();
    if (!counting || !keyOf(cmd).startsWith(runPrefix)) return;
    monitored[name] = (monitored[name] ?? 0) + 1;
    if (source !== 'lua') sent += 1;
    if (name === 'hmget' && keyOf(cmd).includes('{policies}:policy:')) policyReads += 1;
  });
  await sleep(100);
  counting = true;
  const before = await commandCalls(redis);
  for (let i = 0; i < n; i += 1) await getToken(tokens ? tokens[i] : target.refreshToken, i);
  await sleep(300);
  const after = await commandCalls(redis);
  counting = false;
  monitoring.close();
  if (tokens || silent) await server.call('purge', { name: target.name });

  const commandstats = {};
  for (const [cmd, calls] of Object.entries(after)) {
    const delta = calls - (before[cmd] ?? 0);
    if (delta > 0 && cmd !== 'info' && cmd !== 'monitor') commandstats[cmd] = delta;
  }
  const names = new Set([...Object.keys(commandstats), ...Object.keys(monitored)]);
  const consistent = [...names].every((cmd) => (commandstats[cmd] ?? 0) === (monitored[cmd] ?? 0));
  return { commandstats, monitored, sent, policyReads, consistent };
}
