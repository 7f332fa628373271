// Copyright patchwire authors. MIT license.
/**
 * zstd compression with optional raw-content prefixes, on the system libzstd
 * through Deno FFI, or on `node:zlib` when FFI is unavailable.
 *
 * A prefix (ZSTD_CCtx_refPrefix) lets a dirty page be compressed against its
 * reference page, so content that moved a few bytes or was copied from the
 * reference costs a few match tokens instead of literals.
 *
 * ```ts
 * import { createZstd } from "./zstd.ts";
 *
 * const zstd = createZstd();
 * const reference = new Uint8Array(4096).fill(7);
 * const page = reference.slice();
 * page[100] = 1;
 * const frame = zstd.compress(page, { prefix: reference });
 * const back = zstd.decompress(frame, page.length, reference);
 * zstd.close();
 * ```
 *
 * @module
 */
import {
  FfiZstd,
  LIBZSTD_ENV,
  loadZstdLibrary,
  type ResolvedCompressOptions,
} from "./_zstd_ffi.ts";
import { NodeZstd } from "./_zstd_node.ts";

/** Options for {@linkcode Zstd.compress} and {@linkcode Zstd.compressInto}. */
export interface ZstdCompressOptions {
  /** zstd level, negative (fastest) to 22; default 3. */
  level?: number;
  /** Raw content prefix the decoder must also supply. An empty prefix means none. FFI backend only. */
  prefix?: Uint8Array;
  /** log2 window (10..31); default: zstd's default for the level, but large enough to cover prefix+src. */
  windowLog?: number;
  /** Write a content checksum so corruption or a wrong prefix is detected; default true. */
  checksum?: boolean;
}

/**
 * One reusable compression + decompression context.
 *
 * @example
 * ```ts
 * import { createZstd } from "./zstd.ts";
 *
 * const zstd = createZstd({ backend: "auto" });
 * const data = new TextEncoder().encode("abc".repeat(1000));
 * const frame = zstd.compress(data, { level: 3 });
 * console.log(zstd.backend, frame.length, zstd.decompress(frame, data.length).length);
 * zstd.close();
 * ```
 */
export interface Zstd {
  /** Which implementation this context runs on. */
  readonly backend: "ffi" | "node";
  /** Compress src; returns a new, owned Uint8Array. */
  compress(src: Uint8Array, options?: ZstdCompressOptions): Uint8Array;
  /** Compress into dst at dstOffset; returns bytes written; throws a clear error if dst is too small. Zero-copy path for hot loops. */
  compressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dstOffset: number,
    options?: ZstdCompressOptions,
  ): number;
  /** Upper bound of compressed size (ZSTD_compressBound). */
  compressBound(srcSize: number): number;
  /** Decompress a frame whose decompressed size must be exactly expectedSize; prefix must equal the one used to compress. Throws naming the zstd error and the expected size. */
  decompress(
    src: Uint8Array,
    expectedSize: number,
    prefix?: Uint8Array,
  ): Uint8Array;
  /** Decompress into dst[dstOffset .. dstOffset+expectedSize). */
  decompressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dstOffset: number,
    expectedSize: number,
    prefix?: Uint8Array,
  ): void;
  /** Free native contexts. Further calls throw. */
  close(): void;
}

/** Options for {@linkcode createZstd}. */
export interface CreateZstdOptions {
  /** "auto" (default) = ffi if libzstd loads, else node. */
  backend?: "ffi" | "node" | "auto";
}

/** zstd's ZSTD_CLEVEL_DEFAULT. */
const DEFAULT_LEVEL = 3;
const WINDOWLOG_MIN = 10;
const WINDOWLOG_MAX = 31;

type Backend = FfiZstd | NodeZstd;

function checkBytes(v: unknown, name: string): void {
  if (!(v instanceof Uint8Array)) {
    throw new TypeError(`zstd: ${name} must be a Uint8Array, got ${typeof v}`);
  }
}

function checkSize(v: number, name: string, max: number): void {
  if (!Number.isSafeInteger(v) || v < 0 || v > max) {
    throw new RangeError(
      `zstd: ${name} must be an integer in [0, ${max}], got ${v}`,
    );
  }
}

class ZstdContext implements Zstd {
  readonly backend: "ffi" | "node";
  #b: Backend;
  // Reused per call: the hot path allocates nothing but the output.
  #opts: ResolvedCompressOptions = {
    level: DEFAULT_LEVEL,
    checksum: true,
    windowLog: 0,
    prefix: undefined,
  };
  #out = new Uint8Array(0);

  constructor(backend: Backend) {
    this.#b = backend;
    this.backend = backend.backend;
  }

  compress(src: Uint8Array, options?: ZstdCompressOptions): Uint8Array {
    checkBytes(src, "src");
    const o = this.#resolve(options);
    const b = this.#b;
    if (b instanceof NodeZstd) return b.compress(src, o);
    const bound = b.compressBound(src.length);
    if (this.#out.length < bound) this.#out = new Uint8Array(bound);
    const n = b.compressInto(src, this.#out, 0, o);
    return this.#out.slice(0, n);
  }

  compressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dstOffset: number,
    options?: ZstdCompressOptions,
  ): number {
    checkBytes(src, "src");
    checkBytes(dst, "dst");
    checkSize(dstOffset, "dstOffset", dst.length);
    return this.#b.compressInto(src, dst, dstOffset, this.#resolve(options));
  }

  compressBound(srcSize: number): number {
    checkSize(srcSize, "srcSize", Number.MAX_SAFE_INTEGER);
    return this.#b.compressBound(srcSize);
  }

  decompress(
    src: Uint8Array,
    expectedSize: number,
    prefix?: Uint8Array,
  ): Uint8Array {
    checkBytes(src, "src");
    checkSize(expectedSize, "expectedSize", Number.MAX_SAFE_INTEGER);
    const p = this.#prefix(prefix);
    const b = this.#b;
    if (b instanceof NodeZstd) return b.decompress(src, expectedSize, p);
    const out = new Uint8Array(expectedSize);
    b.decompressInto(src, out, 0, expectedSize, p);
    return out;
  }

  decompressInto(
    src: Uint8Array,
    dst: Uint8Array,
    dstOffset: number,
    expectedSize: number,
    prefix?: Uint8Array,
  ): void {
    checkBytes(src, "src");
    checkBytes(dst, "dst");
    checkSize(dstOffset, "dstOffset", dst.length);
    checkSize(expectedSize, "expectedSize", dst.length - dstOffset);
    this.#b.decompressInto(
      src,
      dst,
      dstOffset,
      expectedSize,
      this.#prefix(prefix),
    );
  }

  close(): void {
    this.#b.close();
    this.#out = new Uint8Array(0);
  }

  #prefix(prefix: Uint8Array | undefined): Uint8Array | undefined {
    if (prefix === undefined) return undefined;
    checkBytes(prefix, "prefix");
    return prefix.length === 0 ? undefined : prefix;
  }

  #resolve(options: ZstdCompressOptions | undefined): ResolvedCompressOptions {
    const o = this.#opts;
    if (options === undefined) {
      o.level = DEFAULT_LEVEL;
      o.checksum = true;
      o.windowLog = 0;
      o.prefix = undefined;
      return o;
    }
    const level = options.level ?? DEFAULT_LEVEL;
    const b = this.#b;
    if (!Number.isInteger(level) || level < b.minLevel || level > b.maxLevel) {
      throw new RangeError(
        `zstd: level must be an integer in [${b.minLevel}, ${b.maxLevel}], got ${level}`,
      );
    }
    const windowLog = options.windowLog ?? 0;
    if (
      windowLog !== 0 &&
      (!Number.isInteger(windowLog) || windowLog < WINDOWLOG_MIN ||
        windowLog > WINDOWLOG_MAX)
    ) {
      throw new RangeError(
        `zstd: windowLog must be an integer in [${WINDOWLOG_MIN}, ${WINDOWLOG_MAX}], got ${windowLog}`,
      );
    }
    o.level = level;
    o.checksum = options.checksum ?? true;
    o.windowLog = windowLog;
    o.prefix = this.#prefix(options.prefix);
    return o;
  }
}

/**
 * Create one reusable compression + decompression context (not thread-safe;
 * one per worker). Backend "auto" = ffi if libzstd loads, else node. FFI needs
 * `--allow-ffi`; `PATCHWIRE_LIBZSTD` names a specific libzstd (read with
 * `--allow-env`), and if set and unloadable, "ffi" and "auto" both throw.
 *
 * @example
 * ```ts
 * import { createZstd } from "./zstd.ts";
 *
 * const zstd = createZstd({ backend: "ffi" });
 * const page = new Uint8Array(4096);
 * const dst = new Uint8Array(zstd.compressBound(page.length));
 * const n = zstd.compressInto(page, dst, 0, { level: 1 });
 * zstd.decompressInto(dst.subarray(0, n), page, 0, page.length);
 * zstd.close();
 * ```
 */
export function createZstd(options?: CreateZstdOptions): Zstd {
  const backend = options?.backend ?? "auto";
  if (backend === "node") return new ZstdContext(new NodeZstd());
  if (backend !== "ffi" && backend !== "auto") {
    throw new TypeError(
      `zstd: backend must be "ffi", "node" or "auto", got ${String(backend)}`,
    );
  }
  const lib = loadZstdLibrary();
  if (lib instanceof Error) {
    if (backend === "ffi" || hasOverride()) throw lib;
    return new ZstdContext(new NodeZstd());
  }
  return new ZstdContext(new FfiZstd(lib));
}

/**
 * The zstd the codec uses: libzstd through FFI, which it needs because it
 * compresses pages against their reference pages (zstd prefixes), which the
 * `node:zlib` fallback cannot. Throws, naming the library, its package and
 * the permission, where libzstd cannot be loaded: roles call it at start
 * rather than failing on their first epoch.
 * @example
 * ```ts
 * import { createCodecZstd } from "./zstd.ts";
 * const zstd = createCodecZstd(); // throws here without libzstd
 * console.log(zstd.backend); // "ffi"
 * zstd.close();
 * ```
 */
export function createCodecZstd(): Zstd {
  const lib = loadZstdLibrary();
  if (lib instanceof Error) {
    throw new Error(
      `the codec needs libzstd (it compresses pages against reference pages as zstd prefixes, which node:zlib cannot do): ${lib.message}`,
    );
  }
  return new ZstdContext(new FfiZstd(lib));
}

function hasOverride(): boolean {
  try {
    return !!Deno.env.get(LIBZSTD_ENV);
  } catch {
    return false;
  }
}
