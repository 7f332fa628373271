// Loader and host-side driver for the WebAssembly SIMD block-hash kernel
// (asm/block_hash.ts, embedded by tools/build_wasm.ts).
//
// Each core owns one WebAssembly.Memory, created once at its final size and
// imported by the kernel; it is never grown, so views onto it never detach.
// Layout: [0, scratchBase) kernel statics | scratch (image chunk, hash
// chunk, dirty chunk, tail block) | arena (BlockHasher.alloc).
//
// Operands that live in the arena are passed to the kernel by offset, with
// no copying; the others are streamed through scratch in L2-sized chunks
// (the copy-in leaves the chunk hot in cache for the hash pass). A trailing
// partial block is always hashed from a zero-padded scratch copy: reading
// past the end of an arena image would read a neighbour's bytes.

import { BLOCK_HASH_WASM_BASE64 } from "./_block_hash_wasm.ts";
import { ARENA_ALIGN, BumpArena, checkByteCount } from "./_arena.ts";

/** Target bytes of image per chunk (rounded to whole 32-block groups). */
export const WASM_CHUNK_BYTES = 256 * 1024;

/** WebAssembly page size. */
const PAGE = 65536;
/** Largest memory this module creates: 4 GiB - 64 KiB, in pages. */
export const WASM_MAX_PAGES = 65535;

interface KernelExports {
  scratchBase(): number;
  hashBlocks(
    src: number,
    nBlocks: number,
    blockSize: number,
    out: number,
  ): void;
  scanBlocks(
    src: number,
    nBlocks: number,
    blockSize: number,
    hashes: number,
    dirty: number,
  ): number;
}

let cachedModule: WebAssembly.Module | null | undefined;

function decodeBase64(text: string): Uint8Array<ArrayBuffer> {
  const bin = atob(text);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

function instantiate(
  module: WebAssembly.Module,
  memory: WebAssembly.Memory,
): KernelExports {
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  return instance.exports as unknown as KernelExports;
}

/**
 * The compiled kernel module, or null when this runtime cannot compile it
 * (no WebAssembly, or no SIMD support). Compiled once, synchronously.
 */
export function wasmBlockHashModule(): WebAssembly.Module | null {
  if (cachedModule !== undefined) return cachedModule;
  cachedModule = null;
  if (typeof WebAssembly === "object") {
    try {
      const bytes = decodeBase64(BLOCK_HASH_WASM_BASE64);
      if (WebAssembly.validate(bytes)) {
        cachedModule = new WebAssembly.Module(bytes);
      }
    } catch {
      cachedModule = null;
    }
  }
  return cachedModule;
}

const scratchBases = new WeakMap<WebAssembly.Module, number>();

/** First byte past the kernel's static data, 64-aligned (probed once). */
function scratchBaseOf(module: WebAssembly.Module): number {
  let base = scratchBases.get(module);
  if (base === undefined) {
    const probe = instantiate(module, new WebAssembly.Memory({ initial: 1 }));
    base = Math.ceil(probe.scratchBase() / ARENA_ALIGN) * ARENA_ALIGN;
    scratchBases.set(module, base);
  }
  return base;
}

/**
 * Create a memory of `pages`, or of fewer if the runtime refuses (address
 * space limits): the arena shrinks, scratch is always kept.
 */
function createMemory(minPages: number, pages: number): WebAssembly.Memory {
  for (;;) {
    try {
      return new WebAssembly.Memory({ initial: pages, maximum: pages });
    } catch (e) {
      if (!(e instanceof RangeError) || pages <= minPages) throw e;
      pages = Math.max(minPages, Math.floor((pages + minPages) / 2));
    }
  }
}

/** One kernel instance with its own memory, sized for a block size. */
export class WasmBlockHashCore {
  readonly blockSize: number;
  /** Blocks per chunk: a multiple of 32 so dirty words never straddle. */
  readonly chunkBlocks: number;
  /** The kernel's linear memory; never grown after creation. */
  readonly memory: WebAssembly.Memory;
  #exports: KernelExports;
  #buffer: ArrayBuffer;
  #arena: BumpArena;
  #src: number;
  #hashes: number;
  #dirty: number;
  #tail: number;
  #tailHash: number;
  #bytes: Uint8Array;
  #words: Uint32Array;

  constructor(
    module: WebAssembly.Module,
    blockSize: number,
    chunkBytes: number = WASM_CHUNK_BYTES,
    arenaBytes = 0,
  ) {
    checkByteCount("arenaBytes", arenaBytes);
    this.blockSize = blockSize;
    const groups = Math.max(1, Math.round(chunkBytes / blockSize / 32));
    this.chunkBlocks = groups * 32;
    const base = scratchBaseOf(module);
    this.#src = base;
    this.#hashes = base + this.chunkBlocks * blockSize;
    this.#dirty = this.#hashes + this.chunkBlocks * 8;
    this.#tail = this.#dirty + groups * 4;
    this.#tailHash = this.#tail + blockSize;
    const arenaStart = Math.ceil((this.#tailHash + 8) / ARENA_ALIGN) *
      ARENA_ALIGN;
    const minPages = Math.ceil(arenaStart / PAGE);
    if (minPages > WASM_MAX_PAGES) {
      throw new RangeError(`chunk of ${chunkBytes} bytes does not fit`);
    }
    const want = Math.min(
      WASM_MAX_PAGES,
      Math.ceil((arenaStart + arenaBytes) / PAGE),
    );
    this.memory = createMemory(minPages, want);
    this.#exports = instantiate(module, this.memory);
    // Never shared (no `shared: true`), so a plain ArrayBuffer.
    this.#buffer = this.memory.buffer as ArrayBuffer;
    const arenaEnd = Math.min(
      this.#buffer.byteLength,
      arenaStart + arenaBytes,
    );
    this.#arena = new BumpArena(this.#buffer, arenaStart, arenaEnd);
    this.#bytes = new Uint8Array(this.#buffer);
    this.#words = new Uint32Array(this.#buffer);
  }

  /** Bytes the arena still has for one allocation. */
  get arenaFree(): number {
    return this.#arena.free;
  }

  /** Zeroed, 64-aligned bytes of wasm memory, or null when full. */
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
    const len = image.length;
    const full = Math.floor(len / bs);
    const buf = this.#buffer;
    const imageIn = image.buffer === buf;
    const outIn = out.buffer === buf;
    const dirtyIn = dirty !== undefined && dirty.buffer === buf;
    // Everything in the arena: one kernel call over all the whole blocks.
    const step = imageIn && outIn && (dirty === undefined || dirtyIn)
      ? Math.max(full, 1)
      : this.chunkBlocks;
    const ex = this.#exports;
    const mem = this.#bytes;
    const words = this.#words;
    const hashWord = this.#hashes >>> 2;
    const dirtyWord = this.#dirty >>> 2;
    let count = 0;
    for (let b = 0; b < full; b += step) {
      const n = Math.min(step, full - b);
      const start = b * bs;
      let src = this.#src;
      if (imageIn) src = image.byteOffset + start;
      else mem.set(image.subarray(start, start + n * bs), src);
      let hashes = this.#hashes;
      if (outIn) hashes = out.byteOffset + 8 * b;
      if (dirty === undefined) {
        ex.hashBlocks(src, n, bs, hashes);
        if (!outIn) out.set(words.subarray(hashWord, hashWord + 2 * n), 2 * b);
        continue;
      }
      if (!outIn) words.set(out.subarray(2 * b, 2 * (b + n)), hashWord);
      // b is a multiple of 32 here (step is, or b is 0), so dirty words
      // line up with the chunk.
      const dirtyPtr = dirtyIn ? dirty.byteOffset + 4 * (b >>> 5) : this.#dirty;
      const c = ex.scanBlocks(src, n, bs, hashes, dirtyPtr);
      if (c === 0) continue;
      count += c;
      if (!outIn) out.set(words.subarray(hashWord, hashWord + 2 * n), 2 * b);
      if (!dirtyIn) {
        const w0 = b >>> 5;
        const nw = (n + 31) >>> 5;
        for (let k = 0; k < nw; k++) {
          const bits = words[dirtyWord + k];
          if (bits !== 0) {
            dirty[w0 + k] |= bits;
            words[dirtyWord + k] = 0;
          }
        }
      }
    }
    const rest = len - full * bs;
    if (rest > 0) {
      // The trailing partial block is hashed as if zero-padded.
      const tail = this.#tail;
      mem.set(image.subarray(full * bs), tail);
      mem.fill(0, tail + rest, tail + bs);
      ex.hashBlocks(tail, 1, bs, this.#tailHash);
      const t = this.#tailHash >>> 2;
      const lo = words[t];
      const hi = words[t + 1];
      if (dirty === undefined) {
        out[2 * full] = lo;
        out[2 * full + 1] = hi;
      } else if (out[2 * full] !== lo || out[2 * full + 1] !== hi) {
        out[2 * full] = lo;
        out[2 * full + 1] = hi;
        dirty[full >>> 5] |= 1 << (full & 31);
        count++;
      }
    }
    return count;
  }
}
