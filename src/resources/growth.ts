/** One reading of what a leak would grow. */
export interface ResourceSample {
  rss: number;
  heapUsed: number;
  handles: number;
  workers: number;
}

export type Resource = keyof ResourceSample;

export interface GrowthOptions {
  /** Samples per window; a window is summarised by its minimum (the floor that a leak raises). */
  windowSamples: number;
  /** Consecutive windows whose floors must each rise before growth counts as sustained. */
  windows: number;
  /** The rise, first floor to last, that makes it worth an alarm, per resource. */
  minGrowth: Partial<Record<Resource, number>>;
}

export interface GrowthVerdict {
  growing: Resource[];
  /** Floor of the oldest and newest window compared, per resource. */
  floors: Partial<Record<Resource, { from: number; to: number }>>;
}

/**
 * Sustained growth, not a spike: each resource's floor (the minimum of a window of samples) must rise in every
 * one of `windows` consecutive windows and by at least `minGrowth` overall. A heap that saws up and down with
 * garbage collection, a burst of commands, or one large message keep their floor, and raise nothing.
 */
export class GrowthDetector {
  private readonly floors: ResourceSample[] = [];
  private current: ResourceSample[] = [];
  private readonly o: GrowthOptions;

  constructor(o: GrowthOptions) {
    this.o = o;
  }

  /** Adds a sample; returns a verdict when it completes a window, else undefined. */
  add(sample: ResourceSample): GrowthVerdict | undefined {
    this.current.push(sample);
    if (this.current.length < this.o.windowSamples) return undefined;
    const floor = {} as ResourceSample;
    for (const key of Object.keys(sample) as Resource[]) floor[key] = Math.min(...this.current.map((s) => s[key]));
    this.current = [];
    this.floors.push(floor);
    if (this.floors.length > this.o.windows + 1) this.floors.shift();
    return this.verdict();
  }

  private verdict(): GrowthVerdict {
    const growing: Resource[] = [];
    const floors: GrowthVerdict["floors"] = {};
    const first = this.floors[0];
    const last = this.floors.at(-1);
    if (!first || !last || this.floors.length < this.o.windows + 1) return { growing, floors };
    for (const [key, min] of Object.entries(this.o.minGrowth) as [Resource, number][]) {
      const rising = this.floors.every((f, i) => i === 0 || f[key] > (this.floors[i - 1] as ResourceSample)[key]);
      floors[key] = { from: first[key], to: last[key] };
      if (rising && last[key] - first[key] >= min) growing.push(key);
    }
    return { growing, floors };
  }
}
