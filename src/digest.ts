/**
 * Image digests built from block hashes, so that both ends can keep them up
 * to date by touching only the blocks an epoch changed.
 *
 * digest(image) = (size, Σ term(b, hash_b)) over every block b, in two
 * independent 32-bit lanes (mod 2^32). A term is the block hash (already
 * avalanched) XOR a multiple of the block index, so moved content changes
 * the digest while an update costs a few integer operations per block. This guards against bugs, lost frames and
 * corruption (it is as strong as the 64-bit block hash), not against a
 * malicious peer: authenticating peers is the transport's job.
 * @module
 */

const P1 = 0x9e3779b1;
const P3 = 0xc2b2ae3d;

/** A 64-bit image digest as two lanes, plus the image size it covers. */
export interface ImageDigest {
  size: number;
  lo: number;
  hi: number;
}

/** Mutable digest accumulator; `add`/`remove` are inverse so updates are incremental. */
export class DigestAccumulator {
  lo = 0;
  hi = 0;

  /** Adds block `index` with hash (`lo`, `hi`). */
  add(index: number, lo: number, hi: number): void {
    this.lo = (this.lo + (lo ^ Math.imul(index, P1))) | 0;
    this.hi = (this.hi + (hi ^ Math.imul(index ^ 0x5bd1e995, P3))) | 0;
  }

  /** Removes what `add(index, lo, hi)` added. */
  remove(index: number, lo: number, hi: number): void {
    this.lo = (this.lo - (lo ^ Math.imul(index, P1))) | 0;
    this.hi = (this.hi - (hi ^ Math.imul(index ^ 0x5bd1e995, P3))) | 0;
  }

  /** Adds every block of a hash array (2 u32 per block). */
  addAll(hashes: Uint32Array, blocks: number): void {
    for (let b = 0; b < blocks; b++) {
      this.add(b, hashes[2 * b], hashes[2 * b + 1]);
    }
  }

  /**
   * The digest of an image of `size` bytes of which the first `length` are
   * in use (default: all of them; see {@linkcode bindLength}).
   */
  value(size: number, length = size): ImageDigest {
    const d = bindLength(this.lo, this.hi, size, length);
    return { size, lo: d.lo, hi: d.hi };
  }
}

/**
 * Digest lanes that also cover an image's length in use: a sized image (the
 * device state of a QEMU guest, whose size changes between checkpoints) is
 * `size` bytes of capacity of which the first `length` are its contents, the
 * rest zeros. Two checkpoints with the same bytes but another length must not
 * compare equal, so the length is mixed into both lanes. An image whose
 * length is its size keeps the plain lanes.
 * @example
 * ```ts
 * import { bindLength } from "./digest.ts";
 * const whole = bindLength(1, 2, 4096, 4096);
 * const part = bindLength(1, 2, 4096, 100);
 * console.log(whole.lo === 1 && whole.hi === 2, part.lo !== 1); // true true
 * ```
 */
export function bindLength(
  lo: number,
  hi: number,
  size: number,
  length: number,
): { lo: number; hi: number } {
  if (length === size) return { lo: lo >>> 0, hi: hi >>> 0 };
  const low = length >>> 0, high = Math.floor(length / 4294967296) >>> 0;
  return {
    lo: (lo ^ Math.imul(low ^ 0x6c656e67, P1) ^ 0x1b873593) >>> 0,
    hi: (hi ^ Math.imul(high ^ 0x74680000 ^ low, P3) ^ 0xcc9e2d51) >>> 0,
  };
}

/** Formats a digest for messages and status output. */
export function formatDigest(d: ImageDigest): string {
  return `${d.size}:${d.hi.toString(16).padStart(8, "0")}${
    d.lo.toString(16).padStart(8, "0")
  }`;
}

/** True if both digests cover the same size and hash. */
export function digestEquals(a: ImageDigest, b: ImageDigest): boolean {
  return a.size === b.size && (a.lo >>> 0) === (b.lo >>> 0) &&
    (a.hi >>> 0) === (b.hi >>> 0);
}
