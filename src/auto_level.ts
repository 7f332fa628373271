// Copyright patchwire authors. MIT license.
/**
 * `--level auto`: per epoch, the operating point expected to commit soonest.
 *
 * An epoch's time to commit is its encode time plus the time its bytes take
 * to reach the peers the ack policy waits for and be acknowledged. Both
 * levels are exact, so the choice is only one of cost:
 *
 *     cost(level) = dirty × encodeMsPerByte(level)
 *                 + dirty × wirePerDirtyByte(level) × linkMsPerByte
 *
 * - `encodeMsPerByte` and `wirePerDirtyByte` are running averages of what
 *   each level measured on this primary's own recent epochs (the workload
 *   decides them: compressible heaps favour `max` more than random data).
 * - `linkMsPerByte` is measured from committed epochs: an epoch's service
 *   time (from the end of its encode, or from the previous commit if that
 *   came later, to its commit) ÷ its wire bytes, the median of the last
 *   {@linkcode LINK_WINDOW}. Measured from commits, it is the link the
 *   policy waits for (`all`: the slowest peer; `quorum:K`: the K-th; `none`:
 *   nothing, so `fast` wins on encode time). Counting from the previous
 *   commit leaves out the time an epoch queued behind earlier ones; the
 *   median ignores an epoch that a token bucket let through in a burst, or
 *   that a busy receiver acknowledged late. The round trip and the apply,
 *   which do not grow with bytes, are in it: on a LAN they stay small beside
 *   `max`'s extra encode time.
 *
 * Every {@linkcode AutoLevel.EXPLORE_EVERY}th epoch uses the level not
 * chosen, so both estimates follow the workload; until both levels have been
 * measured, they alternate.
 *
 * @example
 * ```ts
 * import { AutoLevel } from "./auto_level.ts";
 *
 * const auto = new AutoLevel();
 * const level = auto.next(); // "fast" or "max"
 * auto.encoded(level, 4 << 20, 12, 300_000); // dirty bytes, encode ms, wire bytes
 * auto.committed(300_000, 1000, 1040); // wire bytes, encoded at, committed at (ms)
 * ```
 * @module
 */

import type { Level } from "./level.ts";

/** Running-average weight of a new sample. */
const ALPHA = 0.3;
/** Epochs smaller than this on the wire say more about the round trip than the link. */
const MIN_LINK_SAMPLE_BYTES = 4096;
/** Link samples the estimate is the median of. */
export const LINK_WINDOW = 16;

interface LevelModel {
  /** Encode ms per dirty byte. */
  encodeMsPerByte: number;
  /** Wire bytes per dirty byte. */
  wirePerDirtyByte: number;
  samples: number;
}

/** Chooses the operating point of each epoch from what earlier epochs measured. */
export class AutoLevel {
  /** Every this many epochs the level not chosen runs once, to keep its estimate current. */
  static readonly EXPLORE_EVERY = 16;
  #models: Record<Level, LevelModel> = {
    fast: { encodeMsPerByte: 0, wirePerDirtyByte: 0, samples: 0 },
    max: { encodeMsPerByte: 0, wirePerDirtyByte: 0, samples: 0 },
  };
  /** Link ms per wire byte of the last epochs (a ring), NaN where none yet. */
  #linkSamples = new Float64Array(LINK_WINDOW).fill(NaN);
  #linkNext = 0;
  #prevCommit = -Infinity;
  #sorted = new Float64Array(LINK_WINDOW);
  #epochs = 0;
  #last: Level = "max";
  #lastDirty = 0;
  #chosen: Record<Level, number> = { fast: 0, max: 0 };

  /** The level of the next epoch. */
  next(): Level {
    const n = this.#epochs++;
    const f = this.#models.fast, m = this.#models.max;
    if (f.samples === 0 || m.samples === 0) {
      this.#last = f.samples === 0 ? "fast" : "max";
    } else {
      const best = this.best(this.#lastDirty);
      this.#last = n % AutoLevel.EXPLORE_EVERY === 0 ? other(best) : best;
    }
    this.#chosen[this.#last]++;
    return this.#last;
  }

  /** The level expected to commit `dirtyBytes` soonest, from the estimates now. */
  best(dirtyBytes: number): Level {
    return this.cost("max", dirtyBytes) < this.cost("fast", dirtyBytes)
      ? "max"
      : "fast";
  }

  /** Expected ms from the start of the encode to the commit, but the round trip (the same for both levels). */
  cost(level: Level, dirtyBytes: number): number {
    const m = this.#models[level];
    const link = Math.max(0, this.linkMsPerByte);
    return dirtyBytes * (m.encodeMsPerByte + m.wirePerDirtyByte * link);
  }

  /** Records an encoded epoch. */
  encoded(
    level: Level,
    dirtyBytes: number,
    encodeMs: number,
    wireBytes: number,
  ): void {
    this.#lastDirty = dirtyBytes;
    if (dirtyBytes <= 0) return;
    const m = this.#models[level];
    const a = m.samples === 0 ? 1 : ALPHA;
    m.encodeMsPerByte += a * (encodeMs / dirtyBytes - m.encodeMsPerByte);
    m.wirePerDirtyByte += a * (wireBytes / dirtyBytes - m.wirePerDirtyByte);
    m.samples++;
  }

  /**
   * Records a committed epoch: its wire bytes, when its encode ended and
   * when it was committed (ms on one clock, e.g. `performance.now()`).
   */
  committed(wireBytes: number, encodedAt: number, committedAt: number): void {
    const start = Math.max(encodedAt, this.#prevCommit);
    this.#prevCommit = committedAt;
    if (wireBytes < MIN_LINK_SAMPLE_BYTES || committedAt < start) return;
    this.#linkSamples[this.#linkNext] = (committedAt - start) / wireBytes;
    this.#linkNext = (this.#linkNext + 1) % LINK_WINDOW;
  }

  /** The link's ms per wire byte (the median of the recent samples), or -1 before any. */
  get linkMsPerByte(): number {
    const sorted = this.#sorted;
    let n = 0;
    for (const v of this.#linkSamples) if (!Number.isNaN(v)) sorted[n++] = v;
    if (n === 0) return -1;
    sorted.subarray(0, n).sort();
    return sorted[n >>> 1];
  }

  /** What the choice rests on, for /status and logs. */
  get estimates(): {
    linkMBps: number | null;
    fast: LevelModel;
    max: LevelModel;
    last: Level;
    epochs: Record<Level, number>;
  } {
    return {
      linkMBps: this.linkMsPerByte > 0 ? 1 / this.linkMsPerByte / 1000 : null,
      fast: { ...this.#models.fast },
      max: { ...this.#models.max },
      last: this.#last,
      epochs: { ...this.#chosen },
    };
  }
}

function other(level: Level): Level {
  return level === "fast" ? "max" : "fast";
}
