/**
 * FGBI block hashing: every memory image is hashed in fixed-size blocks
 * (64 bytes by default) at every epoch, and a block whose hash changed is
 * dirty. The hash is XXH32 (seed 0) for the low word plus a second fold of
 * the same four lanes for the high word, so one block costs one i32x4 round
 * per 16-byte stripe. Two implementations give bit-identical results: a
 * WebAssembly SIMD kernel and a pure-TS fallback.
 *
 * ```ts
 * import { createBlockHasher } from "./block_hash.ts";
 *
 * const hasher = createBlockHasher({ blockSize: 64 });
 * const image = new Uint8Array(4096);
 * const hashes = new Uint32Array(2 * hasher.blockCount(image.length));
 * hasher.hashAll(image, hashes);
 * image[100] = 1;
 * const dirty = new Uint32Array(Math.ceil(hasher.blockCount(image.length) / 32));
 * hasher.scanDirty(image, hashes, dirty); // 1: block 1 is dirty
 * ```
 *
 * @module
 */

import { TsBlockHashCore, tsHashBlockInto } from "./_ts_block_hash.ts";
import {
  WASM_CHUNK_BYTES,
  WasmBlockHashCore,
  wasmBlockHashModule,
} from "./_wasm_block_hash.ts";
import { checkByteCount } from "./_arena.ts";

/** Which implementation a {@linkcode BlockHasher} uses. */
export type BlockHasherKind = "wasm" | "ts";

/**
 * Hashes memory images block by block.
 *
 * @example Detect the dirty blocks between two epochs
 * ```ts
 * import { createBlockHasher } from "./block_hash.ts";
 *
 * const h = createBlockHasher();
 * const image = new Uint8Array(1 << 16);
 * const hashes = new Uint32Array(2 * h.blockCount(image.length));
 * h.hashAll(image, hashes);
 * const dirty = new Uint32Array(Math.ceil(h.blockCount(image.length) / 32));
 * console.log(h.scanDirty(image, hashes, dirty)); // 0
 * ```
 */
export interface BlockHasher {
  /** The implementation in use. */
  readonly kind: BlockHasherKind;
  /** Block size in bytes. */
  readonly blockSize: number;
  /** Number of blocks for an image of `byteLength` bytes (ceil). */
  blockCount(byteLength: number): number;
  /** Hash every block of `image` into `out` (2 u32 per block). `out.length` must be >= 2*blockCount(image.length). */
  hashAll(image: Uint8Array, out: Uint32Array): void;
  /** Compare-and-update, the dirty-detection scan: recompute each block's hash; where it differs from `hashes`, set bit b (bit (b & 31) of dirty[b >>> 5]) and store the new hash into `hashes`. Bits of clean blocks are left untouched (the caller zeroes `dirty` first). Returns the number of dirty blocks. */
  scanDirty(image: Uint8Array, hashes: Uint32Array, dirty: Uint32Array): number;
  /**
   * Allocates `byteLength` zeroed bytes, 64-byte aligned, from the arena
   * reserved by {@linkcode BlockHasherOptions.arenaBytes} (wasm memory for
   * the wasm kind; ordinary memory for the ts kind). Returns null when the
   * arena has no room left: callers then use ordinary arrays, and
   * everything still works through the copy path. Alignment padding counts
   * against the arena. Views never detach: the memory is never grown after
   * creation, and nothing is ever freed.
   *
   * When the image, the hashes and (for scanDirty) the dirty bitmap are all
   * views of this arena, hashAll and scanDirty hash them in place, with no
   * copying; operands outside the arena are streamed through scratch.
   *
   * @example Scan an image that lives in the arena
   * ```ts
   * import { createBlockHasher } from "./block_hash.ts";
   *
   * const h = createBlockHasher({ arenaBytes: 1 << 20 });
   * const n = h.blockCount(65536);
   * const image = h.alloc(65536)!;
   * const hb = h.alloc(8 * n)!;
   * const hashes = new Uint32Array(hb.buffer, hb.byteOffset, 2 * n);
   * const db = h.alloc(4 * Math.ceil(n / 32))!;
   * const dirty = new Uint32Array(db.buffer, db.byteOffset, db.length / 4);
   * h.hashAll(image, hashes);
   * image[7] = 1;
   * console.log(h.scanDirty(image, hashes, dirty)); // 1
   * ```
   */
  alloc(byteLength: number): Uint8Array | null;
}

/** Options for {@linkcode createBlockHasher}. */
export interface BlockHasherOptions {
  /** Block size in bytes: a multiple of 16 from 16 to 4096. Default 64. */
  blockSize?: number;
  /** Implementation; "auto" (default) picks wasm when WebAssembly SIMD works. */
  kind?: BlockHasherKind | "auto";
  /**
   * Bytes to reserve up front for {@linkcode BlockHasher.alloc}; the wasm
   * memory is created at its final size so views never detach. A wasm
   * memory holds at most 4 GiB - 64 KiB: beyond that (or if the runtime
   * refuses the address space) what fits is reserved, and alloc() returns
   * null past it. Default 0.
   */
  arenaBytes?: number;
}

/** Default block size in bytes. */
export const DEFAULT_BLOCK_SIZE = 64;

function checkBlockSize(blockSize: number): void {
  if (
    !Number.isInteger(blockSize) || blockSize < 16 || blockSize > 4096 ||
    blockSize % 16 !== 0
  ) {
    throw new RangeError(
      `Invalid block size ${blockSize}: expected a multiple of 16 from 16 to 4096`,
    );
  }
}

interface Core {
  alloc(byteLength: number): Uint8Array | null;
  run(
    image: Uint8Array,
    out: Uint32Array,
    dirty: Uint32Array | undefined,
  ): number;
}

class Hasher implements BlockHasher {
  readonly kind: BlockHasherKind;
  readonly blockSize: number;
  #core: Core;

  constructor(kind: BlockHasherKind, blockSize: number, core: Core) {
    this.kind = kind;
    this.blockSize = blockSize;
    this.#core = core;
  }

  blockCount(byteLength: number): number {
    return Math.ceil(byteLength / this.blockSize);
  }

  hashAll(image: Uint8Array, out: Uint32Array): void {
    const n = this.blockCount(image.length);
    if (out.length < 2 * n) {
      throw new RangeError(
        `hashAll: out has ${out.length} words, expected at least ${
          2 * n
        } (2 per block for ${n} blocks of ${this.blockSize} bytes)`,
      );
    }
    this.#core.run(image, out, undefined);
  }

  scanDirty(
    image: Uint8Array,
    hashes: Uint32Array,
    dirty: Uint32Array,
  ): number {
    const n = this.blockCount(image.length);
    if (hashes.length < 2 * n) {
      throw new RangeError(
        `scanDirty: hashes has ${hashes.length} words, expected at least ${
          2 * n
        } (2 per block for ${n} blocks of ${this.blockSize} bytes)`,
      );
    }
    const words = Math.ceil(n / 32);
    if (dirty.length < words) {
      throw new RangeError(
        `scanDirty: dirty has ${dirty.length} words, expected at least ${words} (1 bit per block for ${n} blocks)`,
      );
    }
    return this.#core.run(image, hashes, dirty);
  }

  alloc(byteLength: number): Uint8Array | null {
    return this.#core.alloc(byteLength);
  }
}

/**
 * Create a block hasher. Synchronous: the embedded wasm module is small and
 * compiled once per process. "auto" (the default) uses wasm when WebAssembly
 * SIMD works here, else the pure-TS fallback; "wasm" throws if it cannot.
 *
 * @example
 * ```ts
 * import { createBlockHasher } from "./block_hash.ts";
 *
 * const h = createBlockHasher({ blockSize: 128, kind: "auto" });
 * console.log(h.kind, h.blockCount(1000)); // "wasm" 8
 * ```
 */
export function createBlockHasher(
  options: BlockHasherOptions = {},
): BlockHasher {
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
  const kind = options.kind ?? "auto";
  const arenaBytes = options.arenaBytes ?? 0;
  checkBlockSize(blockSize);
  checkByteCount("arenaBytes", arenaBytes);
  if (kind !== "auto" && kind !== "wasm" && kind !== "ts") {
    throw new TypeError(
      `Invalid block hasher kind "${kind}": expected "wasm", "ts" or "auto"`,
    );
  }
  if (kind !== "ts") {
    const wasmModule = wasmBlockHashModule();
    if (wasmModule !== null) {
      return new Hasher(
        "wasm",
        blockSize,
        new WasmBlockHashCore(
          wasmModule,
          blockSize,
          WASM_CHUNK_BYTES,
          arenaBytes,
        ),
      );
    }
    if (kind === "wasm") {
      throw new Error(
        'WebAssembly SIMD is not available in this runtime: use kind "ts" or "auto"',
      );
    }
  }
  return new Hasher(
    "ts",
    blockSize,
    new TsBlockHashCore(blockSize, arenaBytes),
  );
}

/**
 * Hash one block at `offset` (pure TS, for single-block needs), writing lo/hi
 * to `out[outIndex]`, `out[outIndex + 1]`. The block may run past the end of
 * `bytes`: the missing bytes read as zero.
 *
 * @example
 * ```ts
 * import { hashBlockInto } from "./block_hash.ts";
 *
 * const out = new Uint32Array(2);
 * hashBlockInto(new Uint8Array(64), 0, 64, out, 0);
 * ```
 */
export function hashBlockInto(
  bytes: Uint8Array,
  offset: number,
  blockSize: number,
  out: Uint32Array,
  outIndex: number,
): void {
  checkBlockSize(blockSize);
  if (!Number.isInteger(offset) || offset < 0) {
    throw new RangeError(
      `hashBlockInto: invalid offset ${offset}: expected a non-negative integer`,
    );
  }
  if (
    !Number.isInteger(outIndex) || outIndex < 0 || outIndex + 2 > out.length
  ) {
    throw new RangeError(
      `hashBlockInto: outIndex ${outIndex} leaves no room for 2 words in out of length ${out.length}`,
    );
  }
  tsHashBlockInto(bytes, offset, blockSize, out, outIndex);
}
