// Copyright patchwire authors. MIT license.
/**
 * Internal: libzstd through Deno FFI — symbol table, library loading and the
 * FFI backend of {@linkcode createZstd}. Not part of the public API.
 *
 * @module
 */

/** Parameter numbers and enums from zstd.h (stable API, libzstd ≥ 1.4.0). */
const ZSTD_c_compressionLevel = 100;
const ZSTD_c_windowLog = 101;
const ZSTD_c_checksumFlag = 201;
const ZSTD_d_windowLogMax = 100;
const ZSTD_reset_session_and_parameters = 3;
/** ZSTD_WINDOWLOG_MAX_64: single-pass decoding allocates no window, so allowing the maximum is free. */
const WINDOWLOG_MAX = 31;
/** ZSTD_WINDOWLOG_ABSOLUTEMIN. */
const WINDOWLOG_MIN = 10;
/** refPrefix and the advanced API need 1.4.0. */
const MIN_VERSION = 10400;
/** ZSTD_CONTENTSIZE_UNKNOWN and ZSTD_CONTENTSIZE_ERROR as u64. */
const CONTENTSIZE_UNKNOWN = 0xffff_ffff_ffff_ffffn;
const CONTENTSIZE_ERROR = 0xffff_ffff_ffff_fffen;
/**
 * Results above this are zstd error codes ((size_t)-code), never sizes.
 * Deno 2.9 returns every usize as bigint (and only takes bigint usize
 * arguments on its fast-call path: a number argument costs ~100 ns instead of
 * ~15 ns), but results are still checked as number | bigint.
 */
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

const SYMBOLS = {
  ZSTD_versionNumber: { parameters: [], result: "u32" },
  ZSTD_minCLevel: { parameters: [], result: "i32" },
  ZSTD_maxCLevel: { parameters: [], result: "i32" },
  ZSTD_compressBound: { parameters: ["usize"], result: "usize" },
  ZSTD_isError: { parameters: ["usize"], result: "u32" },
  ZSTD_getErrorName: { parameters: ["usize"], result: "pointer" },
  ZSTD_getFrameContentSize: { parameters: ["buffer", "usize"], result: "u64" },
  ZSTD_createCCtx: { parameters: [], result: "pointer" },
  ZSTD_freeCCtx: { parameters: ["pointer"], result: "usize" },
  ZSTD_CCtx_reset: { parameters: ["pointer", "i32"], result: "usize" },
  ZSTD_CCtx_setParameter: {
    parameters: ["pointer", "i32", "i32"],
    result: "usize",
  },
  ZSTD_CCtx_refPrefix: {
    parameters: ["pointer", "buffer", "usize"],
    result: "usize",
  },
  ZSTD_compress2: {
    parameters: ["pointer", "buffer", "usize", "buffer", "usize"],
    result: "usize",
  },
  ZSTD_createDCtx: { parameters: [], result: "pointer" },
  ZSTD_freeDCtx: { parameters: ["pointer"], result: "usize" },
  ZSTD_DCtx_reset: { parameters: ["pointer", "i32"], result: "usize" },
  ZSTD_DCtx_setParameter: {
    parameters: ["pointer", "i32", "i32"],
    result: "usize",
  },
  ZSTD_DCtx_refPrefix: {
    parameters: ["pointer", "buffer", "usize"],
    result: "usize",
  },
  ZSTD_decompressDCtx: {
    parameters: ["pointer", "buffer", "usize", "buffer", "usize"],
    result: "usize",
  },
} as const;

/** The loaded library's symbols. */
export type ZstdSymbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** A loaded libzstd with the facts the backend needs. */
export interface ZstdLibrary {
  readonly symbols: ZstdSymbols;
  /** Path or name it was loaded from. */
  readonly path: string;
  /** ZSTD_versionNumber(), e.g. 10504 for 1.5.4. */
  readonly version: number;
  readonly minLevel: number;
  readonly maxLevel: number;
}

/** Environment variable naming the libzstd shared object to load instead of the defaults. */
export const LIBZSTD_ENV = "PATCHWIRE_LIBZSTD";

function candidateNames(): string[] {
  switch (Deno.build.os) {
    case "darwin":
      return [
        "libzstd.1.dylib",
        "libzstd.dylib",
        "/opt/homebrew/lib/libzstd.1.dylib",
        "/usr/local/lib/libzstd.1.dylib",
      ];
    case "windows":
      return ["zstd.dll", "libzstd.dll"];
    default:
      return [
        "libzstd.so.1",
        "libzstd.so",
        "/usr/lib/x86_64-linux-gnu/libzstd.so.1",
        "/usr/lib/aarch64-linux-gnu/libzstd.so.1",
        "/usr/lib64/libzstd.so.1",
      ];
  }
}

function envOverride(): string | undefined {
  try {
    return Deno.env.get(LIBZSTD_ENV) || undefined;
  } catch {
    // Without --allow-env the override simply does not apply.
    return undefined;
  }
}

function open(path: string): ZstdLibrary {
  const lib = Deno.dlopen(path, SYMBOLS);
  const version = lib.symbols.ZSTD_versionNumber();
  if (version < MIN_VERSION) {
    lib.close();
    throw new Error(
      `libzstd at "${path}" is version ${version}, expected >= ${MIN_VERSION} (1.4.0) for prefix support`,
    );
  }
  return {
    symbols: lib.symbols,
    path,
    version,
    minLevel: lib.symbols.ZSTD_minCLevel(),
    maxLevel: lib.symbols.ZSTD_maxCLevel(),
  };
}

let cached: ZstdLibrary | Error | undefined;

/**
 * Load libzstd once per process. `PATCHWIRE_LIBZSTD`, when set, is the only
 * candidate: an operator who names a library wants that one or an error, not a
 * silent substitute. Returns the Error (listing every attempt) instead of
 * throwing so "auto" can fall back.
 */
export function loadZstdLibrary(): ZstdLibrary | Error {
  if (cached !== undefined) return cached;
  const override = envOverride();
  const names = override !== undefined ? [override] : candidateNames();
  const failures: string[] = [];
  for (const name of names) {
    try {
      // Querying never prompts; dlopen without permission would on a TTY.
      if (
        Deno.permissions.querySync({ name: "ffi", path: name }).state !==
          "granted"
      ) {
        failures.push(`${name}: no ffi permission`);
        continue;
      }
      cached = open(name);
      return cached;
    } catch (e) {
      failures.push(`${name}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  cached = new Error(
    `cannot load libzstd through FFI (run with --allow-ffi; install libzstd1 or set ${LIBZSTD_ENV}); tried ${
      failures.join("; ")
    }`,
  );
  return cached;
}

/** Compression settings after validation; windowLog 0 = zstd's default. */
export interface ResolvedCompressOptions {
  level: number;
  checksum: boolean;
  windowLog: number;
  prefix: Uint8Array | undefined;
}

/** Smallest windowLog whose window covers `bytes` (clamped to zstd's limits). */
export function windowLogFor(bytes: number): number {
  let log = WINDOWLOG_MIN;
  while (log < WINDOWLOG_MAX && 2 ** log < bytes) log++;
  return log;
}

const finalizer = new FinalizationRegistry<() => void>((free) => free());

/** One CCtx + DCtx pair on libzstd. */
export class FfiZstd {
  readonly backend = "ffi" as const;
  #lib: ZstdLibrary;
  #s: ZstdSymbols;
  #cctx: Deno.PointerValue;
  #dctx: Deno.PointerValue;
  // Sticky CCtx parameters as last set, so the hot path only pays for changes.
  #level = NaN;
  #checksum = -1;
  #windowLog = -1;
  #token = {};

  constructor(lib: ZstdLibrary) {
    this.#lib = lib;
    const s = lib.symbols;
    this.#s = s;
    const cctx = s.ZSTD_createCCtx();
    const dctx = s.ZSTD_createDCtx();
    if (cctx === null || dctx === null) {
      if (cctx !== null) s.ZSTD_freeCCtx(cctx);
      if (dctx !== null) s.ZSTD_freeDCtx(dctx);
      throw new Error(
        "zstd: ZSTD_createCCtx/ZSTD_createDCtx returned NULL (out of memory)",
      );
    }
    this.#cctx = cctx;
    this.#dctx = dctx;
    this.#resetD();
    // A forgotten close() must not leak native memory for the process lifetime.
    finalizer.register(this, () => {
      s.ZSTD_freeCCtx(cctx);
      s.ZSTD_freeDCtx(dctx);
    }, this.#token);
  }

  get minLevel(): number {
    return this.#lib.minLevel;
  }

  get maxLevel(): number {
    return this.#lib.maxLevel;
  }

  compressBound(srcSize: number): number {
    return this.#result(
      this.#s.ZSTD_compressBound(BigInt(srcSize)),
      "ZSTD_compressBound",
    );
  }

  compressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dstOffset: number,
    o: ResolvedCompressOptions,
  ): number {
    const cctx = this.#live(this.#cctx);
    const s = this.#s;
    if (o.level !== this.#level) {
      this.#param(ZSTD_c_compressionLevel, o.level);
      this.#level = o.level;
    }
    const checksum = o.checksum ? 1 : 0;
    if (checksum !== this.#checksum) {
      this.#param(ZSTD_c_checksumFlag, checksum);
      this.#checksum = checksum;
    }
    const windowLog = o.windowLog !== 0
      ? o.windowLog
      // zstd drops a prefix once the frame is a window past its end: cover it all.
      : o.prefix !== undefined
      ? windowLogFor(o.prefix.length + src.length)
      : 0;
    if (windowLog !== this.#windowLog) {
      this.#param(ZSTD_c_windowLog, windowLog);
      this.#windowLog = windowLog;
    }
    if (o.prefix !== undefined) {
      this.#check(
        s.ZSTD_CCtx_refPrefix(cctx, o.prefix, BigInt(o.prefix.length)),
        "ZSTD_CCtx_refPrefix",
        true,
      );
    }
    const capacity = dst.length - dstOffset;
    const out = dstOffset === 0 ? dst : dst.subarray(dstOffset);
    const r = s.ZSTD_compress2(
      cctx,
      out,
      BigInt(capacity),
      src,
      BigInt(src.length),
    );
    if (typeof r === "number" || r <= MAX_SAFE) return Number(r);
    // The prefix is consumed only once a frame starts; a failed call must not
    // leave it (or anything else) behind for the next one.
    this.#resetC();
    const name = this.#errorName(r);
    throw new RangeError(
      `zstd compress of ${src.length} bytes failed: ${name}; ${capacity} bytes available at offset ${dstOffset}, compressBound is ${
        this.compressBound(src.length)
      }`,
    );
  }

  decompressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dstOffset: number,
    expectedSize: number,
    prefix: Uint8Array | undefined,
  ): void {
    const dctx = this.#live(this.#dctx);
    const s = this.#s;
    // zstd reads zero bytes as zero frames; a lost frame must not pass as empty.
    if (src.length === 0) {
      throw new RangeError(
        `zstd decompress failed: input is empty, expected a zstd frame of ${expectedSize} bytes`,
      );
    }
    if (prefix !== undefined) {
      this.#check(
        s.ZSTD_DCtx_refPrefix(dctx, prefix, BigInt(prefix.length)),
        "ZSTD_DCtx_refPrefix",
        false,
      );
    }
    const out = dstOffset === 0 && dst.length === expectedSize
      ? dst
      : dst.subarray(dstOffset, dstOffset + expectedSize);
    const r = s.ZSTD_decompressDCtx(
      dctx,
      out,
      BigInt(expectedSize),
      src,
      BigInt(src.length),
    );
    if (typeof r === "number" || r <= MAX_SAFE) {
      const n = Number(r);
      if (n === expectedSize) return;
      if (prefix !== undefined) this.#resetD();
      throw new RangeError(
        `zstd decompress failed: frame holds ${n} bytes (expected exactly ${expectedSize} bytes, ${src.length} compressed bytes)`,
      );
    }
    // An unused prefix would otherwise apply to the next frame.
    this.#resetD();
    const name = this.#errorName(r);
    const declared = this.#contentSize(src);
    throw new RangeError(
      `zstd decompress failed: ${name} (expected ${expectedSize} bytes${declared}, ${src.length} compressed bytes${
        prefix !== undefined ? `, ${prefix.length}-byte prefix` : ", no prefix"
      })`,
    );
  }

  close(): void {
    if (this.#cctx !== null) this.#s.ZSTD_freeCCtx(this.#cctx);
    if (this.#dctx !== null) this.#s.ZSTD_freeDCtx(this.#dctx);
    this.#cctx = null;
    this.#dctx = null;
    finalizer.unregister(this.#token);
  }

  #live(ctx: Deno.PointerValue): Deno.PointerObject {
    if (ctx === null) throw new Error("zstd: context used after close()");
    return ctx;
  }

  #param(param: number, value: number): void {
    const r = this.#s.ZSTD_CCtx_setParameter(
      this.#live(this.#cctx),
      param,
      value,
    );
    this.#check(r, `ZSTD_CCtx_setParameter(${param}, ${value})`, true);
  }

  #resetC(): void {
    this.#s.ZSTD_CCtx_reset(
      this.#live(this.#cctx),
      ZSTD_reset_session_and_parameters,
    );
    this.#level = NaN;
    this.#checksum = -1;
    this.#windowLog = -1;
  }

  #resetD(): void {
    const dctx = this.#live(this.#dctx);
    this.#s.ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters);
    this.#check(
      this.#s.ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, WINDOWLOG_MAX),
      "ZSTD_DCtx_setParameter(windowLogMax)",
      false,
    );
  }

  #check(r: number | bigint, what: string, compress: boolean): void {
    if (typeof r === "number" || r <= MAX_SAFE) return;
    if (compress) this.#resetC();
    else this.#resetD();
    throw new RangeError(`zstd ${what} failed: ${this.#errorName(r)}`);
  }

  #result(r: number | bigint, what: string): number {
    if (typeof r === "number" || r <= MAX_SAFE) return Number(r);
    throw new RangeError(`zstd ${what} failed: ${this.#errorName(r)}`);
  }

  #errorName(r: bigint): string {
    if (this.#s.ZSTD_isError(r) === 0) return `result ${r} out of range`;
    const p = this.#s.ZSTD_getErrorName(r);
    return p === null ? `error ${r}` : Deno.UnsafePointerView.getCString(p);
  }

  #contentSize(src: Uint8Array): string {
    const v = BigInt(this.#s.ZSTD_getFrameContentSize(src, BigInt(src.length)));
    if (v === CONTENTSIZE_ERROR) return "; input is not a valid zstd frame";
    if (v === CONTENTSIZE_UNKNOWN) return "; frame does not declare its size";
    return `; frame declares ${v} bytes`;
  }
}
