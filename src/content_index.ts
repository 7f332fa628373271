/**
 * The content index: block hash → where that content lives in the last
 * committed state of any image of this primary (FGBI's sharing of identical
 * blocks within and across images).
 *
 * It is an open-addressing table (linear probing) of global block ids, each
 * with a 16-bit tag of its hash. An entry whose tag matches is only a
 * candidate: it is confirmed bitwise against the committed bytes before it
 * is used, so a hash collision can never make a reference to different
 * content. The tag is taken at insertion, not from the live hashes array,
 * because that array already describes this epoch's new contents while a
 * moved page's source still holds the old ones in committed state.
 *
 * Inserting content whose tag is already in its probe chain replaces that
 * entry (the newer copy is at least as likely to still be committed), so
 * many copies of one block (allocator patterns, repeated values) occupy one
 * slot instead of forming a long cluster that every insert would walk.
 *
 * Only *sampled* blocks are indexed (those whose hash has its low
 * `log2(sampling)` bits zero): identical content is sampled identically on
 * both sides, so an identical page is still found through any of its sampled
 * blocks, at a fraction of the memory.
 * @module
 */

/** One committed image as the index sees it. */
export interface IndexedImage {
  /** Committed contents (what the receiver holds), padded to whole pages. */
  readonly committed: Uint8Array;
  /** Block hashes, 2 u32 per block (used to rebuild the index). */
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
 * const index = new ContentIndex(images, 64, zeroHash, { sampling: 1 });
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
  #tags: Uint16Array;
  #used = 0;
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
    const capacity = Math.max(1024, Math.ceil((total / sampling) * 1.25));
    this.#slots = new Uint32Array(capacity);
    this.#tags = new Uint16Array(capacity);
  }

  /** Bytes of memory the table uses. */
  get byteLength(): number {
    return this.#slots.byteLength + this.#tags.byteLength;
  }

  /** True if a block with this hash is one the index keeps (sampled and not zero). */
  isIndexed(lo: number, hi: number): boolean {
    if ((lo & (this.sampling - 1)) !== 0) return false;
    return !(lo === this.#zeroLo && hi === this.#zeroHi);
  }

  /** Key of a hash (home slot and tag); the test mask weakens it. */
  #key(lo: number, hi: number): number {
    return this.keyMask === -1 ? mix(lo, hi) : mix(lo & this.keyMask, 0);
  }

  /** Adds block `block` of image `slot`, whose hash is (lo, hi). */
  insert(slot: number, block: number, lo: number, hi: number): void {
    if (!this.isIndexed(lo, hi)) return;
    const slots = this.#slots, tags = this.#tags;
    const n = slots.length;
    const key = this.#key(lo, hi);
    const tag = key & 0xffff;
    const entry = this.#bases[slot] + block + 1;
    let i = Math.floor((key * n) / 4294967296);
    for (let probes = 0; probes < n; probes++) {
      if (slots[i] === EMPTY) {
        slots[i] = entry;
        tags[i] = tag;
        this.#used++;
        return;
      }
      if (tags[i] === tag) {
        slots[i] = entry; // most likely the same content: keep the newest copy
        return;
      }
      if (++i === n) i = 0;
    }
  }

  /** True when the table is full enough that stale entries should be dropped. */
  get needsRebuild(): boolean {
    return this.#used > this.#slots.length * 0.85;
  }

  /** Drops every entry and indexes the current committed state of all images. */
  rebuild(): void {
    this.#slots.fill(EMPTY);
    this.#used = 0;
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

  /** Global block id of block `block` of image `slot`. */
  idOf(slot: number, block: number): number {
    return this.#bases[slot] + block;
  }

  /**
   * Finds a committed block whose bytes equal `bytes[offset .. offset+blockSize)`
   * (the block hash of which is (lo, hi)), confirmed bitwise. Returns its
   * global block id, or -1. `skipId` excludes one id (the block itself).
   * `bytes` must have a whole block at `offset` (callers pad the last page).
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
    const slots = this.#slots, tags = this.#tags;
    const n = slots.length;
    const key = this.#key(lo, hi);
    const tag = key & 0xffff;
    let i = Math.floor((key * n) / 4294967296);
    let tried = 0;
    for (let probes = 0; probes < n; probes++) {
      const entry = slots[i];
      if (entry === EMPTY) return -1;
      if (tags[i] === tag && entry - 1 !== skipId) {
        const id = entry - 1;
        const slot = this.slotOf(id);
        const block = id - this.#bases[slot];
        const image = this.#images[slot];
        if (
          block < image.blocks &&
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
    if (aOff + bs > a.length || bOff + bs > b.length) return false;
    for (let k = 0; k < bs; k++) if (a[aOff + k] !== b[bOff + k]) return false;
    return true;
  }
}
