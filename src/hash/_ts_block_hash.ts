// Pure-TS FGBI block hash: the reference implementation and the fallback
// when WebAssembly SIMD is unavailable. Must match asm/block_hash.ts bit for
// bit. Assumes a little-endian host (every platform Deno runs on) for the
// word views; `hashBlockInto` reads bytes explicitly and is endian-free.

import { BumpArena, checkByteCount } from "./_arena.ts";

const P1 = 0x9e3779b1 | 0;
const P2 = 0x85ebca77 | 0;
const P3 = 0xc2b2ae3d | 0;
const P4 = 0x27d4eb2f | 0;
const P5 = 0x165667b1 | 0;
const INIT0 = (P1 + P2) | 0;
const INIT3 = -P1 | 0;

/** Bytes hashed per pass when the image must be copied to be word-aligned. */
const ALIGN_CHUNK_BYTES = 64 * 1024;

/** Lo half of the hash from the four final lanes (XXH32 finalisation). */
function finishLo(
  a0: number,
  a1: number,
  a2: number,
  a3: number,
  blockSize: number,
): number {
  let h = (((a0 << 1) | (a0 >>> 31)) + ((a1 << 7) | (a1 >>> 25)) +
    ((a2 << 12) | (a2 >>> 20)) + ((a3 << 18) | (a3 >>> 14)) + blockSize) | 0;
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Hi half of the hash from the four final lanes. */
function finishHi(
  a0: number,
  a1: number,
  a2: number,
  a3: number,
  blockSize: number,
): number {
  const x = a1 ^ a3;
  let h = ((a0 ^ ((a2 << 16) | (a2 >>> 16))) +
    Math.imul((x << 5) | (x >>> 27), P4) + Math.imul(blockSize, P5)) | 0;
  h ^= h >>> 16;
  h = Math.imul(h, P3);
  h ^= h >>> 13;
  h = Math.imul(h, P2);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Hash `nBlocks` blocks of words starting at `words[w]`. With `dirty`
 * omitted (hashAll) every hash is stored into `out`; otherwise (scanDirty)
 * `out` holds the previous hashes, changed ones are stored and flagged in
 * `dirty` starting at block index `firstBlock`. Returns the dirty count.
 */
function hashWords(
  words: Int32Array,
  w: number,
  nBlocks: number,
  blockSize: number,
  out: Uint32Array,
  firstBlock: number,
  dirty: Uint32Array | undefined,
): number {
  const blockWords = blockSize >>> 2;
  let count = 0;
  for (let i = 0; i < nBlocks; i++) {
    let a0 = INIT0;
    let a1 = P2;
    let a2 = 0;
    let a3 = INIT3;
    const end = w + blockWords;
    for (; w < end; w += 4) {
      a0 = (a0 + Math.imul(words[w], P2)) | 0;
      a0 = Math.imul((a0 << 13) | (a0 >>> 19), P1);
      a1 = (a1 + Math.imul(words[w + 1], P2)) | 0;
      a1 = Math.imul((a1 << 13) | (a1 >>> 19), P1);
      a2 = (a2 + Math.imul(words[w + 2], P2)) | 0;
      a2 = Math.imul((a2 << 13) | (a2 >>> 19), P1);
      a3 = (a3 + Math.imul(words[w + 3], P2)) | 0;
      a3 = Math.imul((a3 << 13) | (a3 >>> 19), P1);
    }
    const lo = finishLo(a0, a1, a2, a3, blockSize);
    const hi = finishHi(a0, a1, a2, a3, blockSize);
    const b = firstBlock + i;
    if (dirty === undefined) {
      out[2 * b] = lo;
      out[2 * b + 1] = hi;
    } else if (out[2 * b] !== lo || out[2 * b + 1] !== hi) {
      out[2 * b] = lo;
      out[2 * b + 1] = hi;
      dirty[b >>> 5] |= 1 << (b & 31);
      count++;
    }
  }
  return count;
}

/**
 * Hash one block at `offset` into `out[outIndex]` (lo) and
 * `out[outIndex + 1]` (hi); bytes past the end of `bytes` read as zero.
 */
export function tsHashBlockInto(
  bytes: Uint8Array,
  offset: number,
  blockSize: number,
  out: Uint32Array,
  outIndex: number,
): void {
  const len = bytes.length;
  let a0 = INIT0;
  let a1 = P2;
  let a2 = 0;
  let a3 = INIT3;
  const end = offset + blockSize;
  for (let p = offset; p < end; p += 16) {
    let w0: number, w1: number, w2: number, w3: number;
    if (p + 16 <= len) {
      w0 = bytes[p] | (bytes[p + 1] << 8) | (bytes[p + 2] << 16) |
        (bytes[p + 3] << 24);
      w1 = bytes[p + 4] | (bytes[p + 5] << 8) | (bytes[p + 6] << 16) |
        (bytes[p + 7] << 24);
      w2 = bytes[p + 8] | (bytes[p + 9] << 8) | (bytes[p + 10] << 16) |
        (bytes[p + 11] << 24);
      w3 = bytes[p + 12] | (bytes[p + 13] << 8) | (bytes[p + 14] << 16) |
        (bytes[p + 15] << 24);
    } else {
      w0 = wordAt(bytes, p, len);
      w1 = wordAt(bytes, p + 4, len);
      w2 = wordAt(bytes, p + 8, len);
      w3 = wordAt(bytes, p + 12, len);
    }
    a0 = (a0 + Math.imul(w0, P2)) | 0;
    a0 = Math.imul((a0 << 13) | (a0 >>> 19), P1);
    a1 = (a1 + Math.imul(w1, P2)) | 0;
    a1 = Math.imul((a1 << 13) | (a1 >>> 19), P1);
    a2 = (a2 + Math.imul(w2, P2)) | 0;
    a2 = Math.imul((a2 << 13) | (a2 >>> 19), P1);
    a3 = (a3 + Math.imul(w3, P2)) | 0;
    a3 = Math.imul((a3 << 13) | (a3 >>> 19), P1);
  }
  out[outIndex] = finishLo(a0, a1, a2, a3, blockSize);
  out[outIndex + 1] = finishHi(a0, a1, a2, a3, blockSize);
}

/** Little-endian word at `p`, bytes at or past `len` reading as zero. */
function wordAt(bytes: Uint8Array, p: number, len: number): number {
  let w = 0;
  for (let k = 3; k >= 0; k--) {
    w = (w << 8) | (p + k < len && p + k >= 0 ? bytes[p + k] : 0);
  }
  return w;
}

/**
 * An ordinary buffer of up to `bytes` for the ts kind's arena, smaller if
 * the runtime refuses that much.
 */
function arenaBuffer(bytes: number): ArrayBuffer {
  for (;;) {
    try {
      return new ArrayBuffer(bytes);
    } catch (e) {
      if (!(e instanceof RangeError) || bytes === 0) throw e;
      bytes = Math.floor(bytes / 2);
    }
  }
}

/** Pure-TS block hasher state: scratch buffers, allocated once. */
export class TsBlockHashCore {
  readonly blockSize: number;
  #arena: BumpArena;
  /** Word-aligned staging for images with an unaligned byteOffset. */
  #chunk: Int32Array | undefined;
  /** One zero-padded block, for the trailing partial block. */
  #tail: Int32Array;

  constructor(blockSize: number, arenaBytes = 0) {
    checkByteCount("arenaBytes", arenaBytes);
    this.blockSize = blockSize;
    this.#tail = new Int32Array(blockSize >>> 2);
    const buffer = arenaBuffer(arenaBytes);
    this.#arena = new BumpArena(buffer, 0, buffer.byteLength);
  }

  /** Bytes the arena still has for one allocation. */
  get arenaFree(): number {
    return this.#arena.free;
  }

  /** Zeroed, 64-aligned bytes of the arena (ordinary memory), or null. */
  alloc(byteLength: number): Uint8Array | null {
    return this.#arena.alloc(byteLength);
  }

  /** Hash (dirty === undefined) or scan all blocks of `image`. */
  run(
    image: Uint8Array,
    out: Uint32Array,
    dirty: Uint32Array | undefined,
  ): number {
    const bs = this.blockSize;
    const full = Math.floor(image.length / bs);
    let count = 0;
    if (full > 0) {
      if ((image.byteOffset & 3) === 0) {
        const words = new Int32Array(
          image.buffer,
          image.byteOffset,
          (full * bs) >>> 2,
        );
        count += hashWords(words, 0, full, bs, out, 0, dirty);
      } else {
        count += this.#runUnaligned(image, full, out, dirty);
      }
    }
    const rest = image.length - full * bs;
    if (rest > 0) {
      const tail = this.#tail;
      const tailBytes = new Uint8Array(tail.buffer);
      tailBytes.set(image.subarray(full * bs));
      tailBytes.fill(0, rest);
      count += hashWords(tail, 0, 1, bs, out, full, dirty);
    }
    return count;
  }

  #runUnaligned(
    image: Uint8Array,
    full: number,
    out: Uint32Array,
    dirty: Uint32Array | undefined,
  ): number {
    const bs = this.blockSize;
    const perChunk = Math.max(1, Math.floor(ALIGN_CHUNK_BYTES / bs));
    this.#chunk ??= new Int32Array((perChunk * bs) >>> 2);
    const chunk = this.#chunk;
    const chunkBytes = new Uint8Array(chunk.buffer);
    let count = 0;
    for (let b = 0; b < full; b += perChunk) {
      const n = Math.min(perChunk, full - b);
      chunkBytes.set(image.subarray(b * bs, (b + n) * bs));
      count += hashWords(chunk, 0, n, bs, out, b, dirty);
    }
    return count;
  }
}
