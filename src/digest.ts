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

  /** The digest of an image of `size` bytes. */
  value(size: number): ImageDigest {
    return { size, lo: this.lo >>> 0, hi: this.hi >>> 0 };
  }
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
