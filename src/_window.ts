/** A fixed-size window of recent samples with quantiles, for pause and latency figures. */
export class SampleWindow {
  #samples: Float64Array;
  #count = 0;
  #next = 0;

  constructor(size = 1024) {
    this.#samples = new Float64Array(size);
  }

  /** Samples held (at most the window size). */
  get count(): number {
    return this.#count;
  }

  add(value: number): void {
    this.#samples[this.#next] = value;
    this.#next = (this.#next + 1) % this.#samples.length;
    if (this.#count < this.#samples.length) this.#count++;
  }

  /** Forgets every sample (a benchmark's warm-up, say). */
  clear(): void {
    this.#count = 0;
    this.#next = 0;
  }

  /** The q-quantile (0..1) of the samples held, nearest rank; 0 if empty. */
  quantile(q: number): number {
    if (this.#count === 0) return 0;
    const sorted = this.#samples.slice(0, this.#count).sort();
    const rank = Math.min(this.#count - 1, Math.ceil(q * this.#count) - 1);
    return sorted[Math.max(0, rank)];
  }
}
