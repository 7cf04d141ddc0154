// Throwaway redis-server processes for the tests that must own their Redis: stopping it, slowing it
// down, or running it as a Cluster. Never used on the shared Redis of MRRT_TEST_REDIS_URL.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const HOST = '127.0.0.1';
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Every redis-server started here and its directory, so that an aborted test process still takes them down. */
const running = new Set<ChildProcess>();
const directories = new Set<string>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
  for (const dir of directories) rmSync(dir, { recursive: true, force: true });
});

/** A free TCP port on the loopback interface (bound and released; the caller binds it next). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function encode(args: readonly string[]): string {
  return `*${args.length}\r\n${args.map((arg) => `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`).join('')}`;
}

/** Parses one complete RESP2 reply (simple string, error, integer, bulk string); `undefined` when incomplete. */
function parseReply(buffer: string): string | Error | undefined {
  const end = buffer.indexOf('\r\n');
  if (end === -1) return undefined;
  const head = buffer.slice(1, end);
  switch (buffer[0]) {
    case '+':
    case ':':
      return head;
    case '-':
      return new Error(head);
    case '$': {
      const length = Number(head);
      if (length < 0) return '';
      const body = Buffer.from(buffer.slice(end + 2), 'utf8');
      return body.length >= length + 2 ? body.subarray(0, length).toString('utf8') : undefined;
    }
    default:
      return new Error(`unexpected reply ${JSON.stringify(buffer.slice(0, 40))}`);
  }
}

/**
 * Sends one command to 127.0.0.1:`port` on a fresh connection and resolves its reply (a Redis error
 * reply rejects). With `expectClose`, a connection closed without a reply (SHUTDOWN) resolves `''`.
 */
export function rawCommand(port: number, args: readonly string[], { timeout = 2000, expectClose = false } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: HOST });
    let data = '';
    let settled = false;
    const finish = (value: string | Error): void => {
      if (settled) return;
      settled = true;
      socket.destroy();
      if (value instanceof Error) reject(value);
      else resolve(value);
    };
    socket.setTimeout(timeout, () => finish(new Error(`redis ${HOST}:${port} did not answer ${args[0]} within ${timeout}ms`)));
    socket.once('error', (err) => finish(expectClose && data === '' && /ECONNRESET/.test(err.message) ? '' : err));
    socket.once('close', () => finish(expectClose ? '' : new Error(`connection to ${HOST}:${port} closed`)));
    socket.once('connect', () => socket.write(encode(args)));
    socket.on('data', (chunk) => {
      data += chunk.toString('utf8');
      const reply = parseReply(data);
      if (reply !== undefined) finish(reply);
    });
  });
}

async function answers(port: number): Promise<boolean> {
  try {
    return (await rawCommand(port, ['PING'], { timeout: 500 })) === 'PONG';
  } catch {
    return false;
  }
}

/** A redis-server child process on a fixed loopback port, which can be stopped and started again. */
export class RedisServer {
  readonly port: number;
  readonly dir: string;
  readonly #args: readonly string[];
  readonly #configFile: string | undefined;
  #child: ChildProcess | undefined;
  #log = '';

  private constructor(port: number, dir: string, args: readonly string[], configFile: string | undefined) {
    this.port = port;
    this.dir = dir;
    this.#args = args;
    this.#configFile = configFile;
  }

  /**
   * Starts a redis-server on a free loopback port (or `port`), without persistence, in its own
   * temporary `--dir`, with `extraArgs` appended (e.g. `['--enable-debug-command', 'local']`).
   * With `config`, that text is written to `redis.conf` in the directory and given as the config
   * file (a Sentinel needs one it can rewrite).
   */
  static async start({ port, extraArgs = [], config }: { port?: number; extraArgs?: readonly string[]; config?: string } = {}): Promise<RedisServer> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mrrt-redis-'));
    directories.add(dir);
    let configFile: string | undefined;
    if (config !== undefined) {
      configFile = path.join(dir, 'redis.conf');
      await writeFile(configFile, config);
    }
    const server = new RedisServer(port ?? (await freePort()), dir, extraArgs, configFile);
    try {
      await server.start();
    } catch (err) {
      await server.destroy();
      throw err;
    }
    return server;
  }

  get url(): string {
    return `redis://${HOST}:${this.port}`;
  }

  get running(): boolean {
    return this.#child !== undefined && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** The tail of the server's log, for error messages. */
  get log(): string {
    return this.#log.slice(-4000);
  }

  /** Starts the server (again) on its port and resolves once it answers PING. */
  async start(): Promise<void> {
    if (this.running) throw new Error(`redis-server on port ${this.port} is already running`);
    const args = [
      ...(this.#configFile ? [this.#configFile] : []),
      '--port',
      String(this.port),
      '--bind',
      HOST,
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      this.dir,
      '--protected-mode',
      'yes',
      ...this.#args,
    ];
    const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    this.#child = child;
    const append = (chunk: Buffer): void => {
      this.#log = (this.#log + chunk.toString('utf8')).slice(-20_000);
    };
    child.stdout!.on('data', append);
    child.stderr!.on('data', append);
    let spawnError: Error | undefined;
    child.once('error', (err) => {
      spawnError = err;
    });
    child.once('exit', () => running.delete(child));

    for (let attempt = 0; attempt < 200; attempt += 1) {
      if (spawnError) throw new Error(`could not start redis-server: ${spawnError.message}`);
      if (!this.running && attempt > 0) throw new Error(`redis-server on port ${this.port} exited at start:\n${this.log}`);
      if (await answers(this.port)) return;
      await sleep(25);
    }
    child.kill('SIGKILL');
    throw new Error(`redis-server on port ${this.port} did not answer within 5s:\n${this.log}`);
  }

  /**
   * Stops the server: `SHUTDOWN NOSAVE` (default), or SIGKILL with `{ kill: true }` (works even while
   * the server is blocked, e.g. in DEBUG SLEEP). Resolves once the process has exited.
   */
  async stop({ kill = false }: { kill?: boolean } = {}): Promise<void> {
    const child = this.#child;
    if (!child || !this.running) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    if (kill) {
      child.kill('SIGKILL');
    } else {
      await rawCommand(this.port, ['SHUTDOWN', 'NOSAVE'], { expectClose: true }).catch(() => child.kill('SIGKILL'));
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }

  /** Stops the server (SIGKILL) and removes its directory. Safe to call more than once. */
  async destroy(): Promise<void> {
    await this.stop({ kill: true });
    await rm(this.dir, { recursive: true, force: true });
    directories.delete(this.dir);
  }

  /** Sends one command on a fresh connection (see {@link rawCommand}). */
  command(...args: string[]): Promise<string> {
    return rawCommand(this.port, args);
  }
}

/** A throwaway Redis Cluster of masters without replicas. */
export interface RedisCluster {
  readonly nodes: readonly RedisServer[];
  /** `{ host, port }` of every master, as ioredis `Cluster` startup nodes. */
  readonly startupNodes: readonly { host: string; port: number }[];
  /** Kills every node and removes its directory. Safe to call more than once. */
  destroy(): Promise<void>;
}

function run(file: string, args: readonly string[], timeout: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${err.message}\n${stdout}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/**
 * Starts `masters` (default 3) cluster-enabled redis-servers on free loopback ports (each with its
 * own cluster bus port and cluster config file in its temp dir), creates the cluster with
 * `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes` and waits until every node
 * reports `cluster_state:ok`. Everything started is killed again if any step fails.
 */
export async function startCluster({ masters = 3 }: { masters?: number } = {}): Promise<RedisCluster> {
  const nodes: RedisServer[] = [];
  const destroy = async (): Promise<void> => {
    await Promise.all(nodes.map((node) => node.destroy()));
  };
  try {
    for (let i = 0; i < masters; i += 1) {
      const busPort = await freePort();
      nodes.push(
        await RedisServer.start({
          extraArgs: [
            '--cluster-enabled',
            'yes',
            '--cluster-config-file',
            `nodes-${i}.conf`,
            '--cluster-port',
            String(busPort),
            '--cluster-node-timeout',
            '5000',
            '--cluster-require-full-coverage',
            'yes',
          ],
        }),
      );
    }
    await run('redis-cli', ['--cluster', 'create', ...nodes.map((node) => `${HOST}:${node.port}`), '--cluster-replicas', '0', '--cluster-yes'], 30_000);

    for (let attempt = 0; ; attempt += 1) {
      const infos = await Promise.all(nodes.map((node) => node.command('CLUSTER', 'INFO').catch(() => '')));
      if (
        infos.every(
          (info) => /cluster_state:ok/.test(info) && /cluster_slots_assigned:16384/.test(info) && new RegExp(`cluster_known_nodes:${masters}\\b`).test(info),
        )
      )
        break;
      if (attempt >= 300) throw new Error(`the cluster did not reach cluster_state:ok within 15s:\n${infos.join('\n---\n')}`);
      await sleep(50);
    }
  } catch (err) {
    await destroy();
    throw err;
  }
  return { nodes, startupNodes: nodes.map((node) => ({ host: HOST, port: node.port })), destroy };
}

/** A throwaway Sentinel deployment: one master, its replicas and the sentinels monitoring them. */
export interface RedisSentinel {
  /** The master group's name, for ioredis's `name` option. */
  readonly name: string;
  /** The data nodes, master first (as started; after a failover, ask {@link RedisSentinel.masterPort}). */
  readonly nodes: readonly RedisServer[];
  readonly sentinels: readonly RedisServer[];
  /** `{ host, port }` of every sentinel, as ioredis `sentinels`. */
  readonly sentinelNodes: readonly { host: string; port: number }[];
  /** The master's port according to a majority of the sentinels that answer (`SENTINEL get-master-addr-by-name`). */
  masterPort(): Promise<number | undefined>;
  /** The master's port according to each sentinel that answers. */
  masterPorts(): Promise<number[]>;
  /** Kills every process and removes its directory. Safe to call more than once. */
  destroy(): Promise<void>;
}

/**
 * Sends one command to 127.0.0.1:`port` and resolves its reply when it is a flat array of bulk
 * strings (what SENTINEL answers), `undefined` for a null array, an error or no answer within a second.
 */
function rawArray(port: number, args: readonly string[]): Promise<string[] | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: HOST });
    let data = '';
    const done = (items: string[] | undefined): void => {
      socket.destroy();
      resolve(items);
    };
    socket.setTimeout(1000, () => done(undefined));
    socket.once('error', () => done(undefined));
    socket.once('connect', () => socket.write(encode(args)));
    socket.on('data', (chunk) => {
      data += chunk.toString('utf8');
      if (data.startsWith('-') || data.startsWith('*-1')) return done(undefined);
      const head = /^\*(\d+)\r\n/.exec(data);
      if (!head) return undefined;
      const items: string[] = [];
      let rest = data.slice(head[0].length);
      while (items.length < Number(head[1])) {
        const bulk = /^\$(\d+)\r\n/.exec(rest);
        if (!bulk || rest.length < bulk[0].length + Number(bulk[1]) + 2) return undefined;
        items.push(rest.slice(bulk[0].length, bulk[0].length + Number(bulk[1])));
        rest = rest.slice(bulk[0].length + Number(bulk[1]) + 2);
      }
      return done(items);
    });
  });
}

/** `SENTINEL MASTER <name>` as a map (empty when the sentinel does not answer). */
async function sentinelView(sentinel: RedisServer, name: string): Promise<Map<string, string>> {
  const items = (await rawArray(sentinel.port, ['SENTINEL', 'MASTER', name])) ?? [];
  const map = new Map<string, string>();
  for (let i = 0; i + 1 < items.length; i += 2) map.set(items[i]!, items[i + 1]!);
  return map;
}

/**
 * Starts a master, `replicas` (default 1) replicas of it and `sentinels` (default 3) sentinels with
 * quorum 2, all `redis-server` processes on free loopback ports, and waits until every sentinel
 * knows every replica and the other sentinels. `downAfterMs` (default 1000) is how long the master
 * must be unreachable before a sentinel thinks it down; `failoverTimeoutMs` (default 5000) bounds a
 * failover attempt. Everything started is killed again if any step fails.
 */
export async function startSentinel({
  name = 'mrrt',
  replicas = 1,
  sentinels = 3,
  downAfterMs = 1000,
  failoverTimeoutMs = 5000,
}: {
  name?: string;
  replicas?: number;
  sentinels?: number;
  downAfterMs?: number;
  failoverTimeoutMs?: number;
} = {}): Promise<RedisSentinel> {
  const nodes: RedisServer[] = [];
  const watchers: RedisServer[] = [];
  const destroy = async (): Promise<void> => {
    await Promise.all([...watchers, ...nodes].map((node) => node.destroy()));
  };
  const masterPorts = async (): Promise<number[]> => {
    const answers = await Promise.all(watchers.filter((s) => s.running).map((s) => rawArray(s.port, ['SENTINEL', 'get-master-addr-by-name', name])));
    return answers.flatMap((answer) => (answer?.[1] ? [Number(answer[1])] : []));
  };
  const masterPort = async (): Promise<number | undefined> => {
    const votes = new Map<number, number>();
    for (const port of await masterPorts()) votes.set(port, (votes.get(port) ?? 0) + 1);
    const [best] = [...votes.entries()].sort((a, b) => b[1] - a[1]);
    return best && best[1] > watchers.length / 2 ? best[0] : undefined;
  };
  try {
    const master = await RedisServer.start();
    nodes.push(master);
    for (let i = 0; i < replicas; i += 1) nodes.push(await RedisServer.start({ extraArgs: ['--replicaof', HOST, String(master.port)] }));
    const config = [
      `sentinel monitor ${name} ${HOST} ${master.port} 2`,
      `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
      `sentinel failover-timeout ${name} ${failoverTimeoutMs}`,
      `sentinel parallel-syncs ${name} 1`,
      '',
    ].join('\n');
    for (let i = 0; i < sentinels; i += 1) watchers.push(await RedisServer.start({ config, extraArgs: ['--sentinel'] }));

    for (let attempt = 0; ; attempt += 1) {
      const infos = await Promise.all(watchers.map((s) => sentinelView(s, name)));
      const ready = infos.every(
        (info) => info.get('num-slaves') === String(replicas) && info.get('num-other-sentinels') === String(sentinels - 1) && info.get('flags') === 'master',
      );
      const synced =
        (await master.command('INFO', 'replication').catch(() => '')).split('\n').filter((line) => /^slave\d+:.*state=online/.test(line)).length === replicas;
      if (ready && synced) break;
      if (attempt >= 300)
        throw new Error(
          `the sentinels did not see ${replicas} replica(s) and ${sentinels - 1} other sentinel(s) within 30s: ${JSON.stringify(infos.map((info) => Object.fromEntries(info)))}`,
        );
      await sleep(100);
    }
  } catch (err) {
    await destroy();
    throw err;
  }
  return {
    name,
    nodes,
    sentinels: watchers,
    sentinelNodes: watchers.map((s) => ({ host: HOST, port: s.port })),
    masterPort,
    masterPorts,
    destroy,
  };
}

/**
 * ioredis settings under which a dead or stalled Redis makes requests fail within about a second
 * instead of queueing for many seconds (ioredis defaults: 20 retries per request, no command timeout).
 * The offline queue stays on: RedisPolicyStore's subscriber connection (`redis.duplicate()`) sends
 * SUBSCRIBE before it is connected and silently never subscribes without it (test/scale-findings.test.ts).
 */
export const QUICK_FAILURE = {
  maxRetriesPerRequest: 1,
  commandTimeout: 1000,
  connectTimeout: 1000,
  retryStrategy: (times: number): number => Math.min(times * 100, 1000),
} as const;
