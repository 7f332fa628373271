/**
 * The retained log: the frames of recent epochs, bounded in bytes, from which
 * a peer that reconnects catches up without a base sync.
 * @module
 */

import type { ImageDigestInfo } from "./protocol.ts";

/** One epoch's frames as they went on the wire, and the images' digests after it. */
export interface LoggedEpoch {
  epoch: number;
  frames: Uint8Array[];
  bytes: number;
  images: ImageDigestInfo[];
}

/**
 * Epochs `first..last`, oldest dropped first once over `maxBytes` (the newest
 * epoch always stays, whatever its size). Waiters learn of each append.
 *
 * @example
 * ```ts
 * const log = new RetainedLog(64 << 20);
 * log.append({ epoch: 1, frames, bytes: 1234, images });
 * log.get(1)?.frames;
 * ```
 */
export class RetainedLog {
  #epochs: LoggedEpoch[] = [];
  #bytes = 0;
  #waiters: (() => void)[] = [];
  /** The epoch before the first logged one: the state a base sync starts from. */
  #base = 0;
  #baseImages: ImageDigestInfo[] = [];
  /**
   * Bumped by every {@linkcode restart}: epochs logged under different
   * generations may be different histories, so an ack for one says nothing
   * about the other.
   */
  generation = 0;

  constructor(readonly maxBytes: number) {
    if (!(maxBytes > 0)) {
      throw new RangeError(`log size must be positive, got ${maxBytes}`);
    }
  }

  /** Bytes held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Oldest epoch a peer can catch up from: it must hold `first - 1`. */
  get first(): number {
    return this.#epochs.length ? this.#epochs[0].epoch : this.#base + 1;
  }

  /** Newest epoch logged (or the base epoch when empty). */
  get last(): number {
    return this.#epochs.length
      ? this.#epochs[this.#epochs.length - 1].epoch
      : this.#base;
  }

  /** Logged epochs. */
  get length(): number {
    return this.#epochs.length;
  }

  /** Drops everything and starts at `epoch` with these digests (a base sync, a promotion). */
  restart(epoch: number, images: ImageDigestInfo[]): void {
    this.generation++;
    this.#epochs = [];
    this.#bytes = 0;
    this.#base = epoch;
    this.#baseImages = images;
    this.#wake();
  }

  /** Appends the next epoch (must be `last + 1`). */
  append(entry: LoggedEpoch): void {
    if (entry.epoch !== this.last + 1) {
      throw new RangeError(
        `log append of epoch ${entry.epoch}, expected ${this.last + 1}`,
      );
    }
    this.#epochs.push(entry);
    this.#bytes += entry.bytes;
    while (this.#bytes > this.maxBytes && this.#epochs.length > 1) {
      const old = this.#epochs.shift()!;
      this.#bytes -= old.bytes;
      this.#base = old.epoch;
      this.#baseImages = old.images;
    }
    this.#wake();
  }

  /** The logged epoch, or undefined if it is not (or no longer) held. */
  get(epoch: number): LoggedEpoch | undefined {
    const i = epoch - this.first;
    return i >= 0 && i < this.#epochs.length ? this.#epochs[i] : undefined;
  }

  /** Digests after `epoch`, if it is the base or a logged epoch. */
  digestsAt(epoch: number): ImageDigestInfo[] | undefined {
    if (epoch === this.#base) return this.#baseImages;
    return this.get(epoch)?.images;
  }

  /** Resolves at the next append or restart. */
  changed(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Wakes every waiter (also used to make peers re-check on shutdown). */
  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  /** Wakes waiters without a change (shutdown). */
  wakeAll(): void {
    this.#wake();
  }
}

/** True if two image lists name the same images with the same digests. */
export function sameImages(
  a: ImageDigestInfo[],
  b: ImageDigestInfo[],
): boolean {
  return a.length === b.length &&
    a.every((x, i) =>
      x.id === b[i].id && x.size === b[i].size &&
      x.digestLo === b[i].digestLo && x.digestHi === b[i].digestHi
    );
}
