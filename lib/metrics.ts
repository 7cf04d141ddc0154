import type { MrrtExchangeEvent } from './exchange.js';
import { MrrtTypeError } from './errors.js';

/** Options of {@link MrrtMetrics}. */
export interface MrrtMetricsOptions {
  /** Upper bounds (seconds) of the latency histogram buckets. Default `[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]`. */
  buckets?: number[];
}

interface Emitter {
  on(event: string, listener: (...args: never[]) => void): unknown;
  off(event: string, listener: (...args: never[]) => void): unknown;
}

const label = (value: string): string => value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

/**
 * Exchange counters by outcome and reason, store errors, and a latency histogram by outcome, in the
 * Prometheus text format (SPEC O2). Fed by the provider's `mrrt.exchange` and `mrrt.store_error` events.
 *
 * @example
 * ```ts
 * const metrics = new MrrtMetrics();
 * metrics.attach(provider);
 * app.get('/metrics', (_req, res) => res.type(metrics.contentType).send(metrics.toPrometheus()));
 * ```
 */
export class MrrtMetrics {
  readonly contentType = 'text/plain; version=0.0.4; charset=utf-8';
  readonly #buckets: number[];
  readonly #exchanges = new Map<string, number>();
  readonly #histograms = new Map<string, { counts: number[]; sum: number; count: number }>();
  #storeErrors = 0;

  constructor({ buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5] }: MrrtMetricsOptions = {}) {
    if (!Array.isArray(buckets) || buckets.length === 0 || buckets.some((b, i) => !(Number.isFinite(b) && b > 0) || (i > 0 && b <= buckets[i - 1]!))) {
      throw new MrrtTypeError('"buckets" option must be a non-empty increasing list of positive numbers');
    }
    this.#buckets = [...buckets];
  }

  /** Starts counting a provider's MRRT events; returns the function that stops it. */
  attach(provider: object): () => void {
    const emitter = provider as Emitter;
    const onExchange = (_ctx: unknown, event: MrrtExchangeEvent): void => this.observe(event);
    const onStoreError = (): void => { this.#storeErrors += 1; };
    emitter.on('mrrt.exchange', onExchange);
    emitter.on('mrrt.store_error', onStoreError);
    return () => {
      emitter.off('mrrt.exchange', onExchange);
      emitter.off('mrrt.store_error', onStoreError);
    };
  }

  observe(event: MrrtExchangeEvent): void {
    const key = `${event.outcome}\u0000${event.reason}`;
    this.#exchanges.set(key, (this.#exchanges.get(key) ?? 0) + 1);
    let histogram = this.#histograms.get(event.outcome);
    if (!histogram) this.#histograms.set(event.outcome, (histogram = { counts: this.#buckets.map(() => 0), sum: 0, count: 0 }));
    const seconds = event.durationMs / 1000;
    this.#buckets.forEach((bound, i) => { if (seconds <= bound) histogram.counts[i]! += 1; });
    histogram.sum += seconds;
    histogram.count += 1;
  }

  toPrometheus(): string {
    const lines = [
      '# HELP mrrt_exchanges_total MRRT exchanges by outcome and reason.',
      '# TYPE mrrt_exchanges_total counter',
    ];
    for (const [key, value] of [...this.#exchanges].sort(([a], [b]) => a.localeCompare(b))) {
      const [outcome, reason] = key.split('\u0000') as [string, string];
      lines.push(`mrrt_exchanges_total{outcome="${label(outcome)}",reason="${label(reason)}"} ${value}`);
    }
    lines.push(
      '# HELP mrrt_store_errors_total Policy store failures seen during exchanges.',
      '# TYPE mrrt_store_errors_total counter',
      `mrrt_store_errors_total ${this.#storeErrors}`,
      '# HELP mrrt_exchange_duration_seconds Time spent handling MRRT exchanges at the token endpoint.',
      '# TYPE mrrt_exchange_duration_seconds histogram',
    );
    for (const [outcome, { counts, sum, count }] of [...this.#histograms].sort(([a], [b]) => a.localeCompare(b))) {
      const o = label(outcome);
      this.#buckets.forEach((bound, i) => lines.push(`mrrt_exchange_duration_seconds_bucket{outcome="${o}",le="${bound}"} ${counts[i]}`));
      lines.push(
        `mrrt_exchange_duration_seconds_bucket{outcome="${o}",le="+Inf"} ${count}`,
        `mrrt_exchange_duration_seconds_sum{outcome="${o}"} ${sum}`,
        `mrrt_exchange_duration_seconds_count{outcome="${o}"} ${count}`,
      );
    }
    return `${lines.join('\n')}\n`;
  }
}
