// Copyright patchwire authors. MIT license.
/**
 * Raw LZMA2 with a preset dictionary, on the system liblzma (xz-utils, on
 * every Debian system like libzstd) through Deno FFI.
 *
 * The preset dictionary plays the role zstd's prefix plays: the reference
 * pages a dirty page is compressed against. LZMA2 finds the same matches but
 * codes them with context-modelled range coding (literals predicted from the
 * previous byte and their position, "rep" matches that repeat a recent
 * distance), which is what pays on memory pages whose structures move by a
 * few bytes: the encoder of `--level max`'s LZ section.
 *
 * Raw streams (no .xz container): the frame carries the sizes and the
 * decoder supplies the same dictionary, so there is nothing to frame twice.
 *
 * ```ts
 * import { createLzma } from "./lzma.ts";
 *
 * const lzma = createLzma();
 * const reference = new Uint8Array(4096).fill(7);
 * const page = reference.slice();
 * page[100] = 1;
 * const packed = lzma.compress(page, { dictionary: reference });
 * const back = lzma.decompress(packed, page.length, reference);
 * console.log(packed.length < 64, back[100]);
 * lzma.close();
 * ```
 *
 * @module
 */

/** lzma_ret values used here (base.h). */
const LZMA_OK = 0;
const LZMA_STREAM_END = 1;
const LZMA_BUF_ERROR = 10;
const RET_NAMES: Record<number, string> = {
  0: "LZMA_OK",
  1: "LZMA_STREAM_END",
  5: "LZMA_MEM_ERROR",
  6: "LZMA_MEMLIMIT_ERROR",
  7: "LZMA_FORMAT_ERROR",
  8: "LZMA_OPTIONS_ERROR",
  9: "LZMA_DATA_ERROR",
  10: "LZMA_BUF_ERROR",
  11: "LZMA_PROG_ERROR",
};
/** LZMA_FILTER_LZMA2 and LZMA_VLI_UNKNOWN (filter.h, vli.h). */
const FILTER_LZMA2 = 0x21n;
const VLI_UNKNOWN = 0xffff_ffff_ffff_ffffn;
/** Offsets in lzma_options_lzma (lzma12.h, LP64): 112 bytes in all. */
const OPT_DICT_SIZE = 0;
const OPT_PRESET_DICT = 8;
const OPT_PRESET_DICT_SIZE = 16;
const OPT_LC = 20;
const OPT_LP = 24;
const OPT_PB = 28;
const OPT_NICE_LEN = 36;
const OPT_MF = 40;
const OPT_DEPTH = 44;
const OPT_BYTES = 112;
/** Match finders (lzma12.h). */
const MF_HC4 = 0x04;
const MF_BT4 = 0x14;
/** liblzma's smallest dictionary. */
const DICT_MIN = 4096;

const SYMBOLS = {
  lzma_lzma_preset: { parameters: ["buffer", "u32"], result: "u8" },
  lzma_raw_buffer_encode: {
    parameters: [
      "buffer",
      "pointer",
      "buffer",
      "usize",
      "buffer",
      "buffer",
      "usize",
    ],
    result: "i32",
  },
  lzma_raw_buffer_decode: {
    parameters: [
      "buffer",
      "pointer",
      "buffer",
      "buffer",
      "usize",
      "buffer",
      "buffer",
      "usize",
    ],
    result: "i32",
  },
} as const;

/** Environment variable naming the liblzma shared object to load. */
export const LIBLZMA_ENV = "PATCHWIRE_LIBLZMA";

/** Options for {@linkcode Lzma.compress}. */
export interface LzmaCompressOptions {
  /** xz preset 0..9 (match finder, depth, literal coder); default 6. */
  preset?: number;
  /** Match finder: `hc4` (hash chains, faster) or `bt4` (binary trees, finds more); default: the preset's. */
  matchFinder?: "hc4" | "bt4";
  /** Longest match the encoder settles for, 2..273; default: the preset's. */
  niceLength?: number;
  /** Match-finder search depth, 0 = the preset's automatic one. */
  depth?: number;
  /**
   * Literal context bits (lc), 0..4; default 3. With lc + lp ≤ 4. Memory
   * pages are words, not text: 0 predicts a literal from its position, not
   * from the byte before it.
   */
  literalContextBits?: number;
  /** Literal position bits (lp), 0..4; default 0. 2 = 4-byte words. */
  literalPositionBits?: number;
  /** Position bits (pb) for matches, 0..4; default 2. */
  positionBits?: number;
  /** Bytes the decoder also holds, compressed against as if they preceded `src`. */
  dictionary?: Uint8Array;
}

/** One LZMA2 codec on liblzma. */
export interface Lzma {
  /** Compresses src into a raw LZMA2 stream; returns a new, owned array. */
  compress(src: Uint8Array, options?: LzmaCompressOptions): Uint8Array;
  /**
   * Decompresses a raw LZMA2 stream that must decode to exactly
   * `expectedSize` bytes with `dictionary` as its preset dictionary (the one
   * it was compressed with). Throws naming what was wrong.
   */
  decompress(
    src: Uint8Array,
    expectedSize: number,
    dictionary?: Uint8Array,
  ): Uint8Array;
  /** Decompresses into `dst` (its whole length is the expected size). */
  decompressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dictionary?: Uint8Array,
  ): void;
  /** Releases nothing held across calls today; kept so callers treat it as a resource. */
  close(): void;
}

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>;
let shared: Lib | null = null;

function loadLibrary(): Lib {
  if (shared) return shared;
  const override = Deno.env.get(LIBLZMA_ENV);
  const names = override ? [override] : [
    "liblzma.so.5",
    "liblzma.so",
    "/usr/lib/x86_64-linux-gnu/liblzma.so.5",
    "/usr/lib/aarch64-linux-gnu/liblzma.so.5",
    "/usr/lib64/liblzma.so.5",
  ];
  const errors: string[] = [];
  for (const name of names) {
    try {
      shared = Deno.dlopen(name, SYMBOLS);
      return shared;
    } catch (e) {
      errors.push(`${name}: ${(e as Error).message}`);
    }
  }
  throw new Error(
    `liblzma not found (install xz-utils / liblzma5, or set ${LIBLZMA_ENV} to its path): ${
      errors.join("; ")
    }`,
  );
}

function retName(ret: number): string {
  return RET_NAMES[ret] ?? `lzma_ret ${ret}`;
}

/** Dictionary size liblzma accepts that covers `bytes`. */
function dictSizeFor(bytes: number): number {
  return Math.max(DICT_MIN, Math.min(bytes, 0xffff_fffe));
}

class FfiLzma implements Lzma {
  #lib = loadLibrary();
  // Option and filter structs live in buffers larger than V8's on-heap
  // typed-array limit, so their addresses stay put while liblzma reads them.
  #options = new Uint8Array(Math.max(256, OPT_BYTES));
  #optionsView = new DataView(this.#options.buffer);
  #filters = new BigUint64Array(32);
  #pos = new BigUint64Array(32);
  #outPos = new BigUint64Array(32);
  // Byte views of the same buffers, made once: what the FFI "buffer" type takes.
  #filterBytes = new Uint8Array(this.#filters.buffer);
  #posBytes = new Uint8Array(this.#pos.buffer);
  #outPosBytes = new Uint8Array(this.#outPos.buffer);
  #out = new Uint8Array(1 << 16);
  #empty = new Uint8Array(256);

  constructor() {
    this.#filters[0] = FILTER_LZMA2;
    this.#filters[1] = BigInt(
      Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#options)),
    );
    this.#filters[2] = VLI_UNKNOWN;
    this.#filters[3] = 0n;
  }

  #setOptions(
    dictionary: Uint8Array | undefined,
    dictSize: number,
    options: LzmaCompressOptions,
  ): void {
    const preset = options.preset ?? 6;
    if (!Number.isInteger(preset) || preset < 0 || preset > 9) {
      throw new RangeError(`LZMA preset ${preset} is not one of 0..9`);
    }
    this.#options.fill(0);
    if (this.#lib.symbols.lzma_lzma_preset(this.#options, preset) !== 0) {
      throw new RangeError(`liblzma does not know preset ${preset}`);
    }
    const v = this.#optionsView;
    v.setUint32(OPT_DICT_SIZE, dictSizeFor(dictSize), true);
    const hasDict = dictionary !== undefined && dictionary.length > 0;
    v.setBigUint64(
      OPT_PRESET_DICT,
      hasDict
        ? BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(dictionary)))
        : 0n,
      true,
    );
    v.setUint32(OPT_PRESET_DICT_SIZE, hasDict ? dictionary.length : 0, true);
    if (options.matchFinder) {
      v.setUint32(
        OPT_MF,
        options.matchFinder === "hc4" ? MF_HC4 : MF_BT4,
        true,
      );
    }
    if (options.niceLength !== undefined) {
      v.setUint32(OPT_NICE_LEN, options.niceLength, true);
    }
    if (options.literalContextBits !== undefined) {
      v.setUint32(OPT_LC, options.literalContextBits, true);
    }
    if (options.literalPositionBits !== undefined) {
      v.setUint32(OPT_LP, options.literalPositionBits, true);
    }
    if (options.positionBits !== undefined) {
      v.setUint32(OPT_PB, options.positionBits, true);
    }
    if (options.depth !== undefined) {
      v.setUint32(OPT_DEPTH, options.depth, true);
    }
  }

  compress(src: Uint8Array, options: LzmaCompressOptions = {}): Uint8Array {
    const dictionary = options.dictionary;
    this.#setOptions(
      dictionary,
      (dictionary?.length ?? 0) + src.length,
      options,
    );
    // LZMA2 stores incompressible chunks uncompressed: 3 bytes per 64 KiB.
    const bound = src.length + (src.length >>> 10) + 64;
    if (this.#out.length < bound) this.#out = new Uint8Array(bound);
    this.#pos[0] = 0n;
    const ret = this.#lib.symbols.lzma_raw_buffer_encode(
      this.#filterBytes,
      null,
      src.length > 0 ? src : this.#empty,
      BigInt(src.length),
      this.#out,
      this.#posBytes,
      BigInt(this.#out.length),
    );
    if (ret !== LZMA_OK) {
      throw new Error(
        `LZMA2 compression of ${src.length} bytes failed: ${retName(ret)}`,
      );
    }
    return this.#out.slice(0, Number(this.#pos[0]));
  }

  decompress(
    src: Uint8Array,
    expectedSize: number,
    dictionary?: Uint8Array,
  ): Uint8Array {
    const out = new Uint8Array(expectedSize);
    this.decompressInto(src, out, dictionary);
    return out;
  }

  decompressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dictionary?: Uint8Array,
  ): void {
    // The decoder reads only the dictionary and its size from the options;
    // the coder's settings are in the stream.
    this.#setOptions(dictionary, (dictionary?.length ?? 0) + dst.length, {});
    this.#pos[0] = 0n;
    this.#outPos[0] = 0n;
    const ret = this.#lib.symbols.lzma_raw_buffer_decode(
      this.#filterBytes,
      null,
      src.length > 0 ? src : this.#empty,
      this.#posBytes,
      BigInt(src.length),
      dst.length > 0 ? dst : this.#empty,
      this.#outPosBytes,
      BigInt(dst.length),
    );
    const inPos = Number(this.#pos[0]);
    const outPos = Number(this.#outPos[0]);
    if (ret === LZMA_BUF_ERROR || (ret === LZMA_OK && outPos < dst.length)) {
      throw new RangeError(
        `LZMA2 section decodes to more than the ${dst.length} bytes the frame declares, or is cut short (${outPos} bytes decoded, ${inPos} of ${src.length} read)`,
      );
    }
    if (ret !== LZMA_OK && ret !== LZMA_STREAM_END) {
      throw new RangeError(
        `LZMA2 section does not decode (${
          retName(ret)
        }): corrupt, or compressed against other reference pages than the receiver holds`,
      );
    }
    if (outPos !== dst.length || inPos !== src.length) {
      throw new RangeError(
        `LZMA2 section decodes to ${outPos} bytes reading ${inPos} of ${src.length}, expected ${dst.length} bytes from all of it`,
      );
    }
  }

  close(): void {}
}

/** Opens an LZMA2 codec on the system liblzma; throws naming what to install if it is missing. */
export function createLzma(): Lzma {
  return new FfiLzma();
}
