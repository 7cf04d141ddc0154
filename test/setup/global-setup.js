// Makes sure the programs the tests run are there (scripts/test-deps.mjs: found, or installed with
// apt-get once, or a clear failure naming what to install), then that a Redis answers for the tests:
// the one in MRRT_TEST_REDIS_URL or on 127.0.0.1:6379 when it responds, otherwise a redis-server
// started here on a free loopback port (stopped in teardown).
import { spawn } from 'node:child_process';
import net from 'node:net';

import { ensureTestDependencies } from '../../scripts/test-deps.mjs';

const ping = (port, host = '127.0.0.1') =>
  new Promise((resolve) => {
    const socket = net.connect({ port, host });
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (data) => done(data.toString().startsWith('+PONG')));
  });

const freePort = () =>
  new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });

export default async function globalSetup() {
  ensureTestDependencies();
  if (process.env.MRRT_TEST_REDIS_URL) return;
  if (await ping(6379)) {
    process.env.MRRT_TEST_REDIS_URL = 'redis://127.0.0.1:6379';
    return;
  }
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  child.once('error', (err) => {
    throw new Error(`could not start redis-server: ${err.message}`);
  });
  for (let i = 0; i < 100 && !(await ping(port)); i += 1) await new Promise((r) => setTimeout(r, 50));
  if (!(await ping(port))) throw new Error('redis-server did not start');
  globalThis.__MRRT_REDIS__ = child;
  process.env.MRRT_TEST_REDIS_URL = `redis://127.0.0.1:${port}`;
}
