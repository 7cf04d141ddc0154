// Load against the bench servers: scenarios for a fixed time with autocannon (closed loop), alone or
// side by side, one token at a time (the Redis command count), and the sanity check that every
// server answers as its scenario says before anything is timed. A–D get a token with one refresh request; E with two (a
// silent authorization request and its code exchange): every figure is per token.
import { readFileSync } from 'node:fs';

import autocannon from 'autocannon';

import { API, SCENARIOS, codeExchangeBody, codeFromRedirect, refreshBody, rotating, silentAuthorizationQuery, targetName } from './shared.mjs';
import { balancedOrders, percentile } from './stats.mjs';
import { log, sleep } from './util.mjs';

/**
 * Runs one window of `seconds` for each job, each on its own server process and all at the same
 * time (the warm-up runs a variant's scenarios together; a measured round gives each its own window
 * in turn); returns, per job, requests/s and latency percentiles computed from every response
 * (autocannon's own histogram rounds to whole milliseconds) and the server's CPU per request over
 * the window. A job is `{ server,
 * targets, variant, scenario, poolRps, profileFile }`: rotating variants get a pool of
 * `poolRps × seconds` fresh refresh tokens, purged afterwards; `profileFile` profiles the server
 * during the window.
 */
export async function measureWindows(jobs, { seconds, connections }) {
  const windows = await Promise.all(jobs.map((job) => openWindow(job, { seconds, connections })));
  await Promise.all(jobs.map(({ server }) => server.call('gc')));
  await sleep(50);
  await Promise.all(jobs.map(({ server, profileFile }) => profileFile && server.call('profileStart')));
  const cpuBefore = await Promise.all(jobs.map(({ server }) => server.call('cpu')));
  const machineBefore = machineTicks();
  const started = performance.now();
  const ran = await Promise.all(windows.map((window) => window.run(started)));
  const stolen = stolenShare(machineBefore, machineTicks());
  await sleep(200); // let requests still in flight drain before anything else runs
  const cpuAfter = await Promise.all(jobs.map(({ server }) => server.call('cpu')));
  await Promise.all(jobs.map(({ server, profileFile }) => profileFile && server.call('profileStop', { file: profileFile })));
  await Promise.all(
    jobs.map(
      ({ server, targets, variant, scenario }, i) => windows[i].purge && server.call('purge', { name: targets.get(targetName(variant, scenario)).name }),
    ),
  );
  return ran.map((r, i) => ({ ...summariseWindow(jobs[i], r, cpuAfter[i] - cpuBefore[i]), ...(stolen === undefined ? {} : { stolen }) }));
}

/**
 * The machine's CPU time so far, in ticks, and the part of it a hypervisor ran something else on
 * this machine's CPUs ("steal", Linux `/proc/stat`); undefined where there is no such file.
 */
export function machineTicks() {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1, 9).map(Number);
    return { total: fields.reduce((sum, n) => sum + n, 0), steal: fields[7] };
  } catch {
    return undefined;
  }
}

/** The share of the machine's CPU time stolen between two readings of {@link machineTicks}. */
export function stolenShare(before, after) {
  if (!before || !after || after.total <= before.total) return undefined;
  return (after.steal - before.steal) / (after.total - before.total);
}

function summariseWindow({ variant, scenario }, { latencies, status, errors, last, started, exhausted, poolSize, httpRequests }, cpuUs) {
  latencies.sort((a, b) => a - b);
  const ok = latencies.length;
  const failed = status.failed + errors;
  if (failed) log(`WARNING ${variant} ${scenario}: ${failed} failed requests ${JSON.stringify(status.codes)} errors=${errors}`);
  if (exhausted) log(`note: ${variant} ${scenario} used its whole token pool (${poolSize}); the window was shorter`);
  return {
    rps: ok / ((last - started) / 1000),
    p50_ms: percentile(latencies, 0.5),
    p99_ms: percentile(latencies, 0.99),
    // the server's CPU time per request (per token for E): far less disturbed by other work on the machine than req/s
    window_cpu_us: cpuUs / (ok + failed),
    requests: ok,
    ...(httpRequests === undefined ? {} : { http_requests: httpRequests }),
    failed,
  };
}

/** One scenario's window, ready to run: a refresh request per token (A–D), or E's two requests. */
async function openWindow(job, { seconds, connections }) {
  const { server, targets, variant, scenario, poolRps } = job;
  const target = targets.get(targetName(variant, scenario));
  const { resource } = SCENARIOS[scenario];
  if (SCENARIOS[scenario].silent) return silentWindow(target, resource, { seconds, connections });
  let tokens;
  if (rotating(variant)) {
    const count = Math.ceil(poolRps * seconds) + 4 * connections + 100;
    tokens = await server.call('mint', { name: target.name, count });
  }
  const latencies = [];
  const codes = {};
  let next = 0;
  let last = 0;
  const options = {
    url: `${target.url}/token`,
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    connections,
    duration: seconds,
    sampleInt: 100,
    timeout: 30,
  };
  if (tokens) {
    // one fresh refresh token per request; never more requests than tokens
    options.requests = [{ setupRequest: (req) => ({ ...req, body: refreshBody(tokens[Math.min(next++, tokens.length - 1)], resource) }) }];
    options.maxOverallRequests = tokens.length - 2 * connections;
  } else {
    options.body = refreshBody(target.refreshToken, resource);
  }
  return {
    purge: Boolean(tokens),
    async run(started) {
      const instance = autocannon(options);
      instance.on('response', (_client, statusCode, _bytes, responseTime) => {
        codes[statusCode] = (codes[statusCode] ?? 0) + 1;
        if (statusCode === 200) {
          latencies.push(responseTime);
          last = performance.now();
        }
      });
      const result = await instance;
      const failed = Object.entries(codes)
        .filter(([code]) => code !== '200')
        .reduce((sum, [, n]) => sum + n, 0);
      const exhausted = tokens ? next >= tokens.length - 2 * connections : false;
      return { latencies, status: { codes, failed }, errors: result.errors, last, started, exhausted, poolSize: tokens?.length };
    },
  };
}

const silentScope = 'c:read c:write';

/**
 * Scenario E's window: every connection loops over a silent authorization request (the next
 * session of the provider's pool, round robin) and the code exchange for the code it returned.
 * Tokens per second, latency per token (the two requests one after the other on one connection),
 * server CPU per token. The codes and refresh tokens written are purged afterwards.
 */
function silentWindow(target, resource, { seconds, connections }) {
  const authorizePath = `/auth?${silentAuthorizationQuery(resource, silentScope)}`;
  const latencies = [];
  const codes = {};
  const pending = new Map(); // connection -> latency of its authorization request
  let failed = 0;
  let next = 0;
  let last = 0;
  return {
    purge: true,
    async run(started) {
      const instance = autocannon({
        url: target.url,
        connections,
        duration: seconds,
        sampleInt: 100,
        timeout: 30,
        requests: [
          {
            method: 'GET',
            setupRequest: (req) => ({ ...req, path: authorizePath, headers: { cookie: target.sessions[next++ % target.sessions.length] } }),
            onResponse: (_status, _body, context, headers) => {
              const location = Object.entries(headers).find(([name]) => name.toLowerCase() === 'location')?.[1];
              context.code = codeFromRedirect(location);
            },
          },
          {
            method: 'POST',
            setupRequest: (req, context) => ({
              ...req,
              path: '/token',
              headers: { 'content-type': 'application/x-www-form-urlencoded' },
              body: codeExchangeBody(context.code, resource),
            }),
          },
        ],
      });
      instance.on('response', (client, statusCode, _bytes, responseTime) => {
        codes[statusCode] = (codes[statusCode] ?? 0) + 1;
        if (statusCode === 303) {
          pending.set(client, responseTime);
        } else if (statusCode === 200 && pending.has(client)) {
          latencies.push(pending.get(client) + responseTime);
          pending.delete(client);
          last = performance.now();
        } else {
          failed += 1;
          pending.delete(client);
        }
      });
      const result = await instance;
      const httpRequests = (codes[303] ?? 0) + (codes[200] ?? 0) + failed + result.errors;
      return { latencies, status: { codes, failed }, errors: result.errors, last, started, exhausted: false, httpRequests };
    },
  };
}

/**
 * A function that gets one token for the scenario and returns the token response (`i`: the
 * request's place in a sequence). `refreshToken` is the refresh token to use for A–D.
 */
export function tokenRequester(target, scenario, headers = {}) {
  const { resource } = SCENARIOS[scenario];
  const form = { 'content-type': 'application/x-www-form-urlencoded', ...headers };
  const expect200 = async (res, what) => {
    const body = await res.json();
    if (res.status !== 200) throw new Error(`${what}: status ${res.status} ${JSON.stringify(body)}`);
    return body;
  };
  if (!SCENARIOS[scenario].silent) {
    return async (refreshToken) =>
      expect200(await fetch(`${target.url}/token`, { method: 'POST', headers: form, body: refreshBody(refreshToken, resource) }), `${scenario} refresh`);
  }
  return async (_refreshToken, i = 0) => {
    const auth = await fetch(`${target.url}/auth?${silentAuthorizationQuery(resource, silentScope)}`, {
      headers: { ...headers, cookie: target.sessions[i % target.sessions.length] },
      redirect: 'manual',
    });
    await auth.arrayBuffer();
    const code = codeFromRedirect(auth.headers.get('location'));
    if (auth.status !== 303 || !code) throw new Error(`${scenario} silent authorization: status ${auth.status}, location ${auth.headers.get('location')}`);
    return expect200(
      await fetch(`${target.url}/token`, { method: 'POST', headers: form, body: codeExchangeBody(code, resource) }),
      `${scenario} code exchange`,
    );
  };
}

/**
 * Server CPU per token of each scenario, interleaved: `perScenario` tokens each, one request at a
 * time, the scenarios taking turns in the orders of a balanced design (each at every place of a turn
 * and, within turns, after every other equally often), so that whatever else the machine does, and
 * whatever the request before leaves in the caches, weighs on every scenario alike. Each has its server
 * (`placeOf(scenario)` gives `{ server, targets }`), which counts the CPU time of each request from
 * its arrival to its response (bench/server.mjs) by the scenario the request names. Returns µs per
 * token by scenario (E: its two requests). `profileOf(scenario)`, when it names a file, profiles
 * that scenario's server during the round into it.
 */
export async function measureInterleaved(placeOf, { variant, scenarioNames, perScenario, profileOf = () => undefined }) {
  const steps = scenarioNames.map((scenario) => {
    const { server, targets } = placeOf(scenario);
    const target = targets.get(targetName(variant, scenario));
    return { scenario, server, target, profileFile: profileOf(scenario), request: tokenRequester(target, scenario, { 'x-bench-scenario': scenario }) };
  });
  const pools = new Map();
  for (const { scenario, server, target } of steps) {
    if (rotating(variant) && !SCENARIOS[scenario].silent) pools.set(scenario, await server.call('mint', { name: target.name, count: perScenario }));
  }
  for (const { server } of steps) {
    await server.call('gc');
    await server.call('requestCpu'); // counts from here
  }
  // a profiled round profiles each server from its first request to its last (profiling costs the same for every scenario)
  for (const { server, profileFile } of steps) if (profileFile) await server.call('profileStart');
  const orders = balancedOrders(steps.length);
  for (let i = 0; i < perScenario; i += 1) {
    for (const j of orders[i % orders.length]) {
      const { scenario, target, request } = steps[j];
      await request(pools.get(scenario)?.[i] ?? target.refreshToken, i);
    }
  }
  for (const { server, profileFile } of steps) if (profileFile) await server.call('profileStop', { file: profileFile });
  const perToken = {};
  for (const { scenario, server, target } of steps) {
    const counted = await server.call('requestCpu');
    perToken[scenario] = counted[scenario].us / perScenario;
    await server.call('purge', { name: target.name });
  }
  return perToken;
}

/** One request per scenario: the servers answer as the scenario says before anything is timed. */
export async function sanityCheck(server, targets, { variants, scenarioNames }) {
  for (const variant of variants) {
    for (const scenario of scenarioNames) {
      const target = targets.get(targetName(variant, scenario));
      const { resource } = SCENARIOS[scenario];
      const silent = Boolean(SCENARIOS[scenario].silent);
      const [token] = rotating(variant) && !silent ? await server.call('mint', { name: target.name, count: 1 }) : [target.refreshToken];
      const problems = [];
      let body = {};
      try {
        body = await tokenRequester(target, scenario)(token);
      } catch (err) {
        problems.push(err.message);
      }
      const aud = body.access_token ? JSON.parse(Buffer.from(body.access_token.split('.')[1], 'base64url')).aud : undefined;
      if (aud !== resource) problems.push(`access token audience ${aud}`);
      if (!body.id_token) problems.push('no id_token');
      if (resource === API.C && !silent ? body.resource !== API.C : body.resource !== undefined) problems.push(`resource ${body.resource}`);
      if (silent) {
        if (!body.refresh_token || body.refresh_token === token) problems.push('the code exchange gave no second refresh token');
      } else if (rotating(variant) === (body.refresh_token === token)) {
        problems.push('refresh token rotation is not as configured');
      }
      if (problems.length) throw new Error(`sanity check ${variant} ${scenario}: ${problems.join('; ')}`);
      if (rotating(variant) || silent) await server.call('purge', { name: target.name });
    }
  }
}
