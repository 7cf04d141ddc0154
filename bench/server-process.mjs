// The bench server (bench/server.mjs) as a child process of the runner, driven over IPC: `call`
// sends one command and resolves with its answer, each call with its own time limit.
import { execFileSync, fork } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { log } from './util.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

export class ServerProcess {
  #child;
  #pending = new Map();
  #next = 0;
  #pin;

  /** `pin`: the server on the last CPU, this process on the others (`taskset`, Linux). */
  constructor({ pin = false } = {}) {
    this.#pin = pin;
  }

  async start() {
    const execArgv = ['--expose-gc'];
    // the child's stdout goes to our stderr: stdout carries nothing but the results
    this.#child = fork(path.join(here, 'server.mjs'), [], { execArgv, stdio: ['ignore', 2, 2, 'ipc'] });
    if (this.#pin) {
      // the server on the last CPU, this load generator on the others (Redis is left to the scheduler)
      const last = os.availableParallelism() - 1;
      execFileSync('taskset', ['-a', '-p', '-c', String(last), String(this.#child.pid)], { stdio: 'ignore' });
      execFileSync('taskset', ['-a', '-p', '-c', `0-${Math.max(last - 1, 0)}`, String(process.pid)], { stdio: 'ignore' });
    }
    this.#child.on('error', (err) => log(`bench server: ${err.message}`));
    const ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('bench server did not start within 30 s')), 30_000);
      this.#child.once('message', () => {
        clearTimeout(timer);
        resolve();
      });
      this.#child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`bench server exited (${code})`));
      });
    });
    this.#child.on('message', (msg) => {
      const waiter = msg.id === undefined ? undefined : this.#pending.get(msg.id);
      if (!waiter) return;
      this.#pending.delete(msg.id);
      clearTimeout(waiter.timer);
      if (msg.ok) waiter.resolve(msg.result);
      else waiter.reject(new Error(`bench server: ${msg.error}`));
    });
    this.#child.on('exit', (code, signal) => {
      for (const waiter of this.#pending.values()) waiter.reject(new Error(`bench server exited (${code ?? signal})`));
      this.#pending.clear();
    });
    await ready;
  }

  call(cmd, callArgs = {}, timeoutMs = 300_000) {
    if (!this.#child?.connected) return Promise.reject(new Error(`bench server: "${cmd}": not running`));
    return new Promise((resolve, reject) => {
      const id = ++this.#next;
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`bench server: "${cmd}" did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#child.send({ id, cmd, args: callArgs });
    });
  }

  async stop() {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    try {
      await this.call('close', {}, 10_000);
    } catch (err) {
      log(`closing the bench server: ${err.message}`);
    }
    if (child.connected) child.disconnect(); // the server exits when its IPC channel closes
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}
