// Loader and host-side driver for the WebAssembly SIMD block-hash kernel
// (asm/block_hash.ts, embedded by tools/build_wasm.ts). The image lives in
// JS memory, so it is streamed through a preallocated scratch area in wasm
// linear memory in L2-sized chunks: the copy-in leaves the chunk hot in
// cache for the hash pass.

import { BLOCK_HASH_WASM_BASE64 } from "./_block_hash_wasm.ts";

/** Target bytes of image per chunk (rounded to whole 32-block groups). */
export const WASM_CHUNK_BYTES = 256 * 1024;

interface KernelExports {
  memory: WebAssembly.Memory;
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

/** One kernel instance with its own scratch memory, sized for a block size. */
export class WasmBlockHashCore {
  readonly blockSize: number;
  /** Blocks per chunk: a multiple of 32 so dirty words never straddle. */
  readonly chunkBlocks: number;
  #exports: KernelExports;
  #src: number;
  #hashes: number;
  #dirty: number;
  #bytes: Uint8Array;
  #words: Uint32Array;

  constructor(
    module: WebAssembly.Module,
    blockSize: number,
    chunkBytes: number = WASM_CHUNK_BYTES,
  ) {
    this.blockSize = blockSize;
    const groups = Math.max(1, Math.round(chunkBytes / blockSize / 32));
    this.chunkBlocks = groups * 32;
    const instance = new WebAssembly.Instance(module, {});
    const ex = instance.exports as unknown as KernelExports;
    this.#exports = ex;
    const base = ex.scratchBase();
    this.#src = base;
    this.#hashes = base + this.chunkBlocks * blockSize;
    this.#dirty = this.#hashes + this.chunkBlocks * 8;
    const end = this.#dirty + groups * 4;
    const have = ex.memory.buffer.byteLength;
    if (end > have) ex.memory.grow(Math.ceil((end - have) / 65536));
    // Views are taken after the one grow: growing detaches the old buffer.
    this.#bytes = new Uint8Array(ex.memory.buffer);
    this.#words = new Uint32Array(ex.memory.buffer);
  }

  /** Hash (dirty === undefined) or scan all blocks of `image`. */
  run(
    image: Uint8Array,
    out: Uint32Array,
    dirty: Uint32Array | undefined,
  ): number {
    const bs = this.blockSize;
    const len = image.length;
    const total = Math.ceil(len / bs);
    const ex = this.#exports;
    const mem = this.#bytes;
    const words = this.#words;
    const src = this.#src;
    const hashes = this.#hashes;
    const hashWord = hashes >>> 2;
    const dirtyPtr = this.#dirty;
    const dirtyWord = dirtyPtr >>> 2;
    const step = this.chunkBlocks;
    let count = 0;
    for (let b = 0; b < total; b += step) {
      const n = Math.min(step, total - b);
      const start = b * bs;
      const stop = Math.min(len, start + n * bs);
      mem.set(image.subarray(start, stop), src);
      // The trailing partial block is hashed as if zero-padded.
      if (stop - start < n * bs) mem.fill(0, src + stop - start, src + n * bs);
      if (dirty === undefined) {
        ex.hashBlocks(src, n, bs, hashes);
        out.set(words.subarray(hashWord, hashWord + 2 * n), 2 * b);
        continue;
      }
      words.set(out.subarray(2 * b, 2 * (b + n)), hashWord);
      const c = ex.scanBlocks(src, n, bs, hashes, dirtyPtr);
      if (c === 0) continue;
      count += c;
      out.set(words.subarray(hashWord, hashWord + 2 * n), 2 * b);
      const w0 = b >>> 5;
      const nw = (n + 31) >>> 5;
      for (let k = 0; k < nw; k++) {
        const bits = words[dirtyWord + k];
        if (bits !== 0) dirty[w0 + k] |= bits;
      }
    }
    return count;
  }
}
