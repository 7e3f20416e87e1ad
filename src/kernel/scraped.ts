import { Counter, Gauge, type Registry } from "prom-client";

export type Series = [Record<string, string>, number][];

/**
 * A metric family whose series are read from elsewhere at each scrape: the kernel's counters, the device's
 * figures. prom-client's counters only count up by `inc`, so each scrape starts from `reset()`; and since
 * `reset()` gives a family without labels a series of 0, that series is removed when `read` has none, so an
 * absent figure reads as absent, never as zero.
 */
export function scrapedFamily(o: {
  registry: Registry;
  type: "counter" | "gauge";
  name: string;
  help: string;
  labels: string[];
  read: () => Series;
}): void {
  const common = { name: o.name, help: o.help, labelNames: o.labels, registers: [o.registry] };
  const fill = (metric: { remove(): void }, set: (labels: Record<string, string>, value: number) => void) => {
    const series = o.read();
    for (const [labels, value] of series) set(labels, value);
    if (series.length === 0 && o.labels.length === 0) metric.remove();
  };
  if (o.type === "counter") {
    new Counter({
      ...common,
      collect() {
        this.reset();
        fill(this, (labels, value) => this.inc(labels, value));
      },
    });
  } else {
    new Gauge({
      ...common,
      collect() {
        this.reset();
        fill(this, (labels, value) => this.set(labels, value));
      },
    });
  }
}
