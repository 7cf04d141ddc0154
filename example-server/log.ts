import { performance } from 'node:perf_hooks';

import type { RequestHandler } from 'express';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export type LogEntry = Record<string, unknown> & { readonly event: string };
/** Receives one structured entry (already carrying `time` and `level`). */
export type LogSink = (entry: Readonly<Record<string, unknown>>) => void;

export interface Logger {
  debug(entry: LogEntry): void;
  info(entry: LogEntry): void;
  warn(entry: LogEntry): void;
  error(entry: LogEntry): void;
}

export function isLogLevel(value: unknown): value is LogLevel {
  return typeof value === 'string' && Object.hasOwn(RANK, value);
}

/** One JSON object per line on stdout. */
export const stdoutSink: LogSink = (entry) => {
  process.stdout.write(`${JSON.stringify(entry)}\n`);
};

/**
 * A structured logger: every call writes one entry `{ time, level, event, ... }`. Callers never
 * pass token values; the request log records the path without its query string.
 */
export function createLogger(level: LogLevel = 'info', sink: LogSink = stdoutSink): Logger {
  const write =
    (entryLevel: Exclude<LogLevel, 'silent'>) =>
    (entry: LogEntry): void => {
      if (RANK[entryLevel] < RANK[level]) return;
      sink({ time: new Date().toISOString(), level: entryLevel, ...entry });
    };
  return { debug: write('debug'), info: write('info'), warn: write('warn'), error: write('error') };
}

/** Logs one `http.request` line per request once the response is finished (or the connection closed). */
export function requestLogger(logger: Logger): RequestHandler {
  return (req, res, next) => {
    const start = performance.now();
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      const entry: LogEntry = {
        event: 'http.request',
        method: req.method,
        path: req.originalUrl.split('?')[0] ?? '',
        status: res.headersSent ? res.statusCode : 0,
        ms: Math.round((performance.now() - start) * 10) / 10,
        ...(res.writableFinished ? {} : { aborted: true }),
      };
      if (res.statusCode >= 500) logger.error(entry);
      else logger.info(entry);
    };
    res.once('finish', finish);
    res.once('close', finish);
    next();
  };
}
