import type { MrrtExchangeEvent } from './exchange.js';
import { MrrtTypeError } from './errors.js';

/**
 * What {@link MrrtMetrics} needs of a prom-client `Registry` (prom-client 15's `Registry` and its
 * global `register` fit): it registers its three metrics there and the registry reads them on every
 * scrape. Typed structurally so that this package never loads prom-client itself.
 */
export interface MetricsRegistry {
  registerMetric(metric: never): void;
}

/** Options of {@link MrrtMetrics}. */
export interface MrrtMetricsOptions {
  /** Upper bounds (seconds) of the latency histogram buckets. Default `[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]`. */
  buckets?: number[];
  /**
   * prom-client registries to register the metrics in, as prom-client's own `registers` option.
   * Default `[]`: the metrics are only rendered by {@link MrrtMetrics.toPrometheus}.
   */
  registers?: MetricsRegistry[];
}

interface Emitter {
  on(event: string, listener: (...args: never[]) => void): unknown;
  off(event: string, listener: (...args: never[]) => void): unknown;
}

interface Sample {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

/** One metric in the shape prom-client's `Registry` reads (`get`, `reset`, `aggregator` for cluster aggregation). */
interface Collector {
  name: string;
  readonly help: string;
  readonly type: 'counter' | 'histogram';
  readonly aggregator: 'sum';
  get(): Promise<{ name: string; help: string; type: 'counter' | 'histogram'; aggregator: 'sum'; values: Sample[] }>;
  reset(): void;
}

const EXCHANGES = 'mrrt_exchanges_total';
const STORE_ERRORS = 'mrrt_store_errors_total';
const DURATION = 'mrrt_exchange_duration_seconds';
const HELP = {
  [EXCHANGES]: 'MRRT exchanges by outcome and reason.',
  [STORE_ERRORS]: 'Policy store failures seen during exchanges.',
  [DURATION]: 'Time spent handling MRRT exchanges at the token endpoint.',
} as const;

const label = (value: string): string => value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
const byKey = <V>(map: Map<string, V>): [string, V][] => [...map].sort(([a], [b]) => a.localeCompare(b));

/**
 * Exchange counters by outcome and reason, store errors, and a latency histogram by outcome (SPEC
 * O2), fed by the provider's `mrrt.exchange` and `mrrt.store_error` events. Rendered in the
 * Prometheus text format by {@link MrrtMetrics.toPrometheus}, and readable through prom-client
 * registries given in `registers` (both show the same values).
 *
 * @example
 * ```ts
 * const metrics = new MrrtMetrics();
 * metrics.attach(provider);
 * app.get('/metrics', (_req, res) => res.type(metrics.contentType).send(metrics.toPrometheus()));
 * ```
 *
 * @example With prom-client
 * ```ts
 * const registry = new Registry();
 * new MrrtMetrics({ registers: [registry] }).attach(provider);
 * app.get('/metrics', async (_req, res) => res.type(registry.contentType).send(await registry.metrics()));
 * ```
 */
export class MrrtMetrics {
  readonly contentType = 'text/plain; version=0.0.4; charset=utf-8';
  readonly #buckets: number[];
  readonly #exchanges = new Map<string, { outcome: string; reason: string; count: number }>();
  readonly #histograms = new Map<string, { counts: number[]; sum: number; count: number }>();
  #storeErrors = 0;

  constructor({ buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers = [] }: MrrtMetricsOptions = {}) {
    if (!Array.isArray(buckets) || buckets.length === 0 || buckets.some((b, i) => !(Number.isFinite(b) && b > 0) || (i > 0 && b <= buckets[i - 1]!))) {
      throw new MrrtTypeError('"buckets" option must be a non-empty increasing list of positive numbers');
    }
    if (!Array.isArray(registers) || registers.some((r) => typeof (r as { registerMetric?: unknown } | null)?.registerMetric !== 'function')) {
      throw new MrrtTypeError('"registers" option must be a list of prom-client Registry objects');
    }
    this.#buckets = [...buckets];
    const collectors = this.#collectors();
    for (const registry of registers) {
      for (const collector of collectors) (registry.registerMetric as (metric: Collector) => void).call(registry, collector);
    }
  }

  /** Starts counting a provider's MRRT events; returns the function that stops it. */
  attach(provider: object): () => void {
    const emitter = provider as Emitter;
    const onExchange = (_ctx: unknown, event: MrrtExchangeEvent): void => this.observe(event);
    const onStoreError = (): void => {
      this.#storeErrors += 1;
    };
    emitter.on('mrrt.exchange', onExchange);
    emitter.on('mrrt.store_error', onStoreError);
    return () => {
      emitter.off('mrrt.exchange', onExchange);
      emitter.off('mrrt.store_error', onStoreError);
    };
  }

  observe(event: MrrtExchangeEvent): void {
    const key = `${event.outcome}\u0000${event.reason}`;
    const counter = this.#exchanges.get(key);
    if (counter) counter.count += 1;
    else this.#exchanges.set(key, { outcome: event.outcome, reason: event.reason, count: 1 });
    let histogram = this.#histograms.get(event.outcome);
    if (!histogram) this.#histograms.set(event.outcome, (histogram = { counts: this.#buckets.map(() => 0), sum: 0, count: 0 }));
    const seconds = event.durationMs / 1000;
    this.#buckets.forEach((bound, i) => {
      if (seconds <= bound) histogram.counts[i]! += 1;
    });
    histogram.sum += seconds;
    histogram.count += 1;
  }

  toPrometheus(): string {
    const lines = [`# HELP ${EXCHANGES} ${HELP[EXCHANGES]}`, `# TYPE ${EXCHANGES} counter`];
    for (const [, { outcome, reason, count }] of byKey(this.#exchanges)) {
      lines.push(`${EXCHANGES}{outcome="${label(outcome)}",reason="${label(reason)}"} ${count}`);
    }
    lines.push(
      `# HELP ${STORE_ERRORS} ${HELP[STORE_ERRORS]}`,
      `# TYPE ${STORE_ERRORS} counter`,
      `${STORE_ERRORS} ${this.#storeErrors}`,
      `# HELP ${DURATION} ${HELP[DURATION]}`,
      `# TYPE ${DURATION} histogram`,
    );
    for (const [outcome, { counts, sum, count }] of byKey(this.#histograms)) {
      const o = label(outcome);
      this.#buckets.forEach((bound, i) => lines.push(`${DURATION}_bucket{outcome="${o}",le="${bound}"} ${counts[i]}`));
      lines.push(
        `${DURATION}_bucket{outcome="${o}",le="+Inf"} ${count}`,
        `${DURATION}_sum{outcome="${o}"} ${sum}`,
        `${DURATION}_count{outcome="${o}"} ${count}`,
      );
    }
    return `${lines.join('\n')}\n`;
  }

  /** The same three metrics as prom-client metric objects, read from this instance's counts at every scrape. */
  #collectors(): Collector[] {
    const collector = (name: keyof typeof HELP, type: Collector['type'], values: () => Sample[], reset: () => void): Collector => ({
      name,
      help: HELP[name],
      type,
      aggregator: 'sum',
      reset,
      // prom-client renames a counter (drops `_total`) when its registry speaks OpenMetrics: read the name at scrape time.
      async get() {
        return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: values() };
      },
    });
    return [
      collector(
        EXCHANGES,
        'counter',
        () => byKey(this.#exchanges).map(([, { outcome, reason, count }]) => ({ value: count, labels: { outcome, reason } })),
        () => this.#exchanges.clear(),
      ),
      collector(
        STORE_ERRORS,
        'counter',
        () => [{ value: this.#storeErrors, labels: {} }],
        () => {
          this.#storeErrors = 0;
        },
      ),
      collector(
        DURATION,
        'histogram',
        () =>
          byKey(this.#histograms).flatMap(([outcome, { counts, sum, count }]): Sample[] => [
            ...this.#buckets.map((le, i) => ({ metricName: `${DURATION}_bucket`, labels: { le, outcome }, value: counts[i]! })),
            { metricName: `${DURATION}_bucket`, labels: { le: '+Inf', outcome }, value: count },
            { metricName: `${DURATION}_sum`, labels: { outcome }, value: sum },
            { metricName: `${DURATION}_count`, labels: { outcome }, value: count },
          ]),
        () => this.#histograms.clear(),
      ),
    ];
  }
}
