// Copyright patchwire authors. MIT license.
/**
 * Internal: the `node:zlib` zstd fallback of {@linkcode createZstd}, for when
 * FFI is unavailable. It cannot use prefixes (Deno's node:zlib ignores
 * dictionaries), and it does not notice a truncated checksum on its own, so
 * frames are walked here before decoding.
 *
 * @module
 */
import {
  constants,
  zstdCompressSync,
  zstdDecompressSync,
  type ZstdOptions,
} from "node:zlib";
import type { ResolvedCompressOptions } from "./_zstd_ffi.ts";

const ZSTD_MAGIC = 0xfd2fb528;
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;
const BLOCK_RLE = 1;
const BLOCK_RESERVED = 3;
/** ZSTD_WINDOWLOG_MAX_64: the caller has already decided to trust the frame's size. */
const WINDOWLOG_MAX = 31;

/** zstd's own bounds (ZSTD_minCLevel() / ZSTD_maxCLevel() in 1.5.x). */
const MIN_LEVEL = -(1 << 17);
const MAX_LEVEL = 22;

function noPrefix(what: string): Error {
  return new TypeError(
    `zstd ${what}: the node:zlib backend cannot use a prefix (node:zlib ignores dictionaries); use the "ffi" backend (libzstd via --allow-ffi) or omit the prefix`,
  );
}

function u32(b: Uint8Array, at: number): number {
  return (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>>
    0;
}

/**
 * Walk the frames in `src` (RFC 8878) and return the sum of their declared
 * content sizes (-1 if any frame omits it). Throws if the input is not made of
 * complete frames — node:zlib accepts a frame cut inside its checksum.
 */
export function checkFrames(src: Uint8Array): number {
  let at = 0;
  let total = 0;
  const n = src.length;
  if (n === 0) throw new RangeError("input is empty, expected a zstd frame");
  while (at < n) {
    if (n - at < 8) {
      throw new RangeError(`truncated frame header at byte ${at} of ${n}`);
    }
    const magic = u32(src, at);
    if ((magic & SKIPPABLE_MASK) >>> 0 === SKIPPABLE_MAGIC) {
      at += 8 + u32(src, at + 4);
      if (at > n) {
        throw new RangeError(`truncated skippable frame (${n} bytes)`);
      }
      continue;
    }
    if (magic !== ZSTD_MAGIC) {
      throw new RangeError(
        `unknown frame magic 0x${
          magic.toString(16)
        } at byte ${at}, expected 0x${ZSTD_MAGIC.toString(16)}`,
      );
    }
    const fhd = src[at + 4];
    const fcsFlag = fhd >> 6;
    const single = (fhd >> 5) & 1;
    const checksum = (fhd >> 2) & 1;
    const didSize = [0, 1, 2, 4][fhd & 3];
    const fcsSize = fcsFlag === 0 ? single : 1 << fcsFlag;
    at += 5 + (single ? 0 : 1) + didSize;
    if (at + fcsSize > n) throw new RangeError("truncated frame header");
    if (fcsSize === 0) total = -1;
    else if (total >= 0) {
      let size = 0;
      for (let i = fcsSize - 1; i >= 0; i--) size = size * 256 + src[at + i];
      total += fcsSize === 2 ? size + 256 : size;
    }
    at += fcsSize;
    for (let last = 0; last === 0;) {
      if (at + 3 > n) {
        throw new RangeError(`truncated block header at byte ${at}`);
      }
      const h = src[at] | (src[at + 1] << 8) | (src[at + 2] << 16);
      last = h & 1;
      const type = (h >> 1) & 3;
      if (type === BLOCK_RESERVED) {
        throw new RangeError(`reserved block type at byte ${at}`);
      }
      at += 3 + (type === BLOCK_RLE ? 1 : h >>> 3);
      if (at > n) throw new RangeError(`truncated block ending at byte ${at}`);
    }
    at += checksum * 4;
    if (at > n) throw new RangeError("truncated content checksum");
  }
  return total;
}

/**
 * A plain Uint8Array that owns its whole buffer. Buffer#slice would share
 * memory (and pooled Buffers share an ArrayBuffer with unrelated data).
 */
function ownedCopy(out: Uint8Array): Uint8Array {
  return out.byteOffset === 0 && out.buffer.byteLength === out.length
    ? new Uint8Array(out.buffer, 0, out.length)
    : new Uint8Array(out);
}

/** zstd through `node:zlib`; no prefixes. */
export class NodeZstd {
  readonly backend = "node" as const;
  readonly minLevel = MIN_LEVEL;
  readonly maxLevel = MAX_LEVEL;
  #closed = false;

  compressBound(srcSize: number): number {
    // ZSTD_COMPRESSBOUND from zstd.h.
    return srcSize + (srcSize >>> 8) +
      (srcSize < 131072 ? (131072 - srcSize) >>> 11 : 0);
  }

  compress(src: Uint8Array, o: ResolvedCompressOptions): Uint8Array {
    const out = this.#compress(src, o);
    return ownedCopy(out);
  }

  compressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dstOffset: number,
    o: ResolvedCompressOptions,
  ): number {
    const out = this.#compress(src, o);
    const capacity = dst.length - dstOffset;
    if (out.length > capacity) {
      throw new RangeError(
        `zstd compress of ${src.length} bytes failed: Destination buffer is too small; ${capacity} bytes available at offset ${dstOffset}, need ${out.length} (compressBound is ${
          this.compressBound(src.length)
        })`,
      );
    }
    dst.set(out, dstOffset);
    return out.length;
  }

  decompress(
    src: Uint8Array,
    expectedSize: number,
    prefix: Uint8Array | undefined,
  ): Uint8Array {
    const out = this.#decompress(src, expectedSize, prefix);
    return ownedCopy(out);
  }

  decompressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dstOffset: number,
    expectedSize: number,
    prefix: Uint8Array | undefined,
  ): void {
    dst.set(this.#decompress(src, expectedSize, prefix), dstOffset);
  }

  close(): void {
    this.#closed = true;
  }

  #compress(src: Uint8Array, o: ResolvedCompressOptions): Uint8Array {
    this.#open();
    if (o.prefix !== undefined) throw noPrefix("compress");
    const params: Record<number, number> = {
      [constants.ZSTD_c_compressionLevel]: o.level,
      [constants.ZSTD_c_checksumFlag]: o.checksum ? 1 : 0,
    };
    if (o.windowLog !== 0) params[constants.ZSTD_c_windowLog] = o.windowLog;
    return zstdCompressSync(src, { params } as ZstdOptions);
  }

  #decompress(
    src: Uint8Array,
    expectedSize: number,
    prefix: Uint8Array | undefined,
  ): Uint8Array {
    this.#open();
    if (prefix !== undefined) throw noPrefix("decompress");
    const fail = (why: string) =>
      new RangeError(
        `zstd decompress failed: ${why} (expected ${expectedSize} bytes, ${src.length} compressed bytes, no prefix)`,
      );
    let declared: number;
    try {
      declared = checkFrames(src);
    } catch (e) {
      throw fail(e instanceof Error ? e.message : String(e));
    }
    if (declared >= 0 && declared !== expectedSize) {
      throw fail(`frame declares ${declared} bytes`);
    }
    let out: Uint8Array;
    try {
      out = zstdDecompressSync(src, {
        // Refuse to inflate past the size we were told to expect.
        maxOutputLength: Math.max(1, expectedSize),
        params: { [constants.ZSTD_d_windowLogMax]: WINDOWLOG_MAX },
      } as ZstdOptions);
    } catch (e) {
      throw fail(e instanceof Error ? e.message : String(e));
    }
    if (out.length !== expectedSize) {
      throw fail(`produced ${out.length} bytes`);
    }
    return out;
  }

  #open(): void {
    if (this.#closed) throw new Error("zstd: context used after close()");
  }
}
