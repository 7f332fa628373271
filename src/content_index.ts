/**
 * The content index: block hash → where that content lives in the last
 * committed state of any image of this primary (FGBI's sharing of identical
 * blocks within and across images).
 *
 * It is an open-addressing table of global block ids. Keys are not stored:
 * every candidate in the probe chain is confirmed bitwise against the
 * committed bytes before it is used, so a hash collision can never make a
 * reference to different content. Entries whose block has since changed fail
 * that check and are dropped at the next rebuild.
 *
 * Only *sampled* blocks are indexed (those whose hash has its low
 * `log2(sampling)` bits zero): identical content is sampled identically on
 * both sides, so an identical page is still found through any of its sampled
 * blocks, at a fraction of the memory.
 * @module
 */

/** One committed image as the index sees it. */
export interface IndexedImage {
  /** Committed contents (what the receiver holds). */
  readonly committed: Uint8Array;
  /** Block hashes, 2 u32 per block; may already describe newer content for dirty blocks. */
  readonly hashes: Uint32Array;
  /** Number of blocks. */
  readonly blocks: number;
}

/** Options of {@linkcode ContentIndex}. */
export interface ContentIndexOptions {
  /** Index one block in `sampling` (a power of two) by hash. Default 2. */
  sampling?: number;
  /**
   * Mask applied to the low hash word before use. Tests set a tiny mask to
   * force collisions and prove that bitwise confirmation prevents corruption.
   * Default: all bits, and the high word is used too.
   */
  keyMask?: number;
  /** Bitwise confirmations tried per lookup before giving up. Default 8. */
  maxCandidates?: number;
}

const EMPTY = 0;

function mix(lo: number, hi: number): number {
  let h = (lo ^ Math.imul(hi, 0x9e3779b1)) | 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca77);
  h ^= h >>> 13;
  return h >>> 0;
}

/**
 * Hash → committed location of identical content, across all images.
 *
 * @example
 * ```ts
 * const index = new ContentIndex(images, 64, { sampling: 1 });
 * index.rebuild();
 * const id = index.find(lo, hi, bytes, offset); // global block id or -1
 * ```
 */
export class ContentIndex {
  readonly sampling: number;
  readonly keyMask: number;
  readonly maxCandidates: number;
  #images: IndexedImage[];
  #bases: number[] = [];
  #slots: Uint32Array;
  #inserted = 0;
  #zeroLo: number;
  #zeroHi: number;
  #blockSize: number;
  /** Lookups, confirmed hits and rejected candidates (collisions or stale entries), for stats. */
  readonly counters = { lookups: 0, hits: 0, rejected: 0 };

  constructor(
    images: IndexedImage[],
    blockSize: number,
    zeroHash: { lo: number; hi: number },
    options: ContentIndexOptions = {},
  ) {
    const sampling = options.sampling ?? 2;
    if (
      !Number.isInteger(sampling) || sampling < 1 ||
      (sampling & (sampling - 1)) !== 0
    ) {
      throw new RangeError(
        `content index sampling must be a power of two >= 1, got ${sampling}`,
      );
    }
    this.sampling = sampling;
    this.keyMask = options.keyMask ?? -1;
    this.maxCandidates = options.maxCandidates ?? 8;
    this.#images = images;
    this.#blockSize = blockSize;
    this.#zeroLo = zeroHash.lo;
    this.#zeroHi = zeroHash.hi;
    let total = 0;
    for (const image of images) {
      this.#bases.push(total);
      total += image.blocks;
    }
    if (total >= 0xffffffff) {
      throw new RangeError(`too many blocks for the content index: ${total}`);
    }
    const capacity = Math.max(1024, Math.ceil((total / sampling) * 1.5));
    this.#slots = new Uint32Array(capacity);
  }

  /** Bytes of memory the table uses. */
  get byteLength(): number {
    return this.#slots.byteLength;
  }

  /** True if a block with this hash is one the index keeps (sampled and not zero). */
  isIndexed(lo: number, hi: number): boolean {
    if ((lo & (this.sampling - 1)) !== 0) return false;
    return !(lo === this.#zeroLo && hi === this.#zeroHi);
  }

  #home(lo: number, hi: number): number {
    const key = this.keyMask === -1 ? mix(lo, hi) : mix(lo & this.keyMask, 0);
    return Math.floor((key * this.#slots.length) / 4294967296);
  }

  /** Adds block `block` of image `slot`, whose current hash is (lo, hi). */
  insert(slot: number, block: number, lo: number, hi: number): void {
    if (!this.isIndexed(lo, hi)) return;
    const slots = this.#slots;
    const n = slots.length;
    let i = this.#home(lo, hi);
    for (let probes = 0; probes < n; probes++) {
      if (slots[i] === EMPTY) {
        slots[i] = this.#bases[slot] + block + 1;
        this.#inserted++;
        return;
      }
      if (++i === n) i = 0;
    }
    // Full table (only with stale entries piling up): start over.
    this.rebuild();
  }

  /** True when stale entries have accumulated enough that a rebuild pays off. */
  get needsRebuild(): boolean {
    return this.#inserted > this.#slots.length * 0.6;
  }

  /** Drops every entry and indexes the current committed state of all images. */
  rebuild(): void {
    this.#slots.fill(EMPTY);
    this.#inserted = 0;
    for (let s = 0; s < this.#images.length; s++) {
      const { hashes, blocks } = this.#images[s];
      for (let b = 0; b < blocks; b++) {
        this.insert(s, b, hashes[2 * b], hashes[2 * b + 1]);
      }
    }
  }

  /** Image slot of a global block id. */
  slotOf(id: number): number {
    const bases = this.#bases;
    let s = bases.length - 1;
    while (bases[s] > id) s--;
    return s;
  }

  /** Block number within its image of a global block id. */
  blockOf(id: number): number {
    return id - this.#bases[this.slotOf(id)];
  }

  /** Global block id of block `block` of image `slot`. */
  idOf(slot: number, block: number): number {
    return this.#bases[slot] + block;
  }

  /**
   * Finds a committed block whose bytes equal `bytes[offset .. offset+blockSize)`
   * (the block hash of which is (lo, hi)), confirmed bitwise. Returns its
   * global block id, or -1. `skipId` excludes one id (the block itself).
   */
  find(
    lo: number,
    hi: number,
    bytes: Uint8Array,
    offset: number,
    skipId = -1,
  ): number {
    if (!this.isIndexed(lo, hi)) return -1;
    this.counters.lookups++;
    const slots = this.#slots;
    const n = slots.length;
    let i = this.#home(lo, hi);
    let tried = 0;
    for (let probes = 0; probes < n; probes++) {
      const entry = slots[i];
      if (entry === EMPTY) return -1;
      const id = entry - 1;
      const slot = this.slotOf(id);
      const block = id - this.#bases[slot];
      const image = this.#images[slot];
      // No key check against the hashes array: it may already describe this
      // epoch's new contents, while a move's source still holds the old ones in
      // committed state. The bitwise check below is the only one that counts.
      if (id !== skipId && block < image.blocks) {
        if (
          this.#sameBytes(
            image.committed,
            block * this.#blockSize,
            bytes,
            offset,
          )
        ) {
          this.counters.hits++;
          return id;
        }
        this.counters.rejected++;
        if (++tried >= this.maxCandidates) return -1;
      }
      if (++i === n) i = 0;
    }
    return -1;
  }

  #sameBytes(
    a: Uint8Array,
    aOff: number,
    b: Uint8Array,
    bOff: number,
  ): boolean {
    const bs = this.#blockSize;
    // The last block of an image may be short: both sides must have the same real length.
    const aLen = Math.min(bs, a.length - aOff);
    const bLen = Math.min(bs, b.length - bOff);
    if (aLen !== bLen || aLen <= 0) return false;
    for (let k = 0; k < aLen; k++) {
      if (a[aOff + k] !== b[bOff + k]) return false;
    }
    return true;
  }
}
