/**
 * Codec operating points. Both are exact; they differ in how hard the
 * encoder looks for a smaller encoding. The level is recorded in each frame,
 * so a receiver decodes either.
 * @module
 */

/** `fast` for LAN links (CPU and latency matter most), `max` for WAN links (bytes matter most). */
export type Level = "fast" | "max";

/** All levels, for argument parsing. */
export const LEVELS: readonly Level[] = ["fast", "max"];

/** Tunables behind each level. */
export interface LevelParams {
  /**
   * Compressor of the op stream and the LZ section: `zstd` (levels below),
   * or raw `lzma2` (liblzma, at the presets below) whose
   * context-modelled coding of literals and repeated distances is what pays
   * on pages whose words moved or changed in place.
   */
  sectionCodec: "zstd" | "lzma2";
  /** xz preset of an LZMA2 LZ section (0..9; 0-3 hash chains, 4+ binary trees). */
  lzmaLzPreset: number;
  /** xz preset of an LZMA2 op stream (small beside the LZ section: a slower preset costs little). */
  lzmaOpsPreset: number;
  /** zstd level for the op stream. */
  zstdLevel: number;
  /** zstd level for the LZ section (pages compressed with their references as prefix). */
  lzLevel: number;
  /** Consider LZ-with-reference-prefix for pages whose best XOR encoding exceeds this many bytes; Infinity = never. */
  lzThreshold: number;
  /**
   * zstd level of the per-page trial that decides between LZ and the XOR
   * encoding; 0 = no trial, such pages always go LZ (cheap: one batch call).
   */
  lzTrialLevel: number;
  /**
   * Pages with three quarters of their blocks dirty skip the XOR trials and
   * the LZ trial: they go LZ against their reference directly.
   */
  heavyDirectLz: boolean;
  /**
   * LZ section bytes per chunk. At low zstd levels a long window of reference
   * pages finds fewer matches, not more (postgres at fast: 4 MiB -> 1 MiB
   * sends 28% less).
   */
  lzChunkBytes: number;
  /** Find further LZ reference pages through content-defined anchors (moved content). */
  anchors: boolean;
  /** Look up every indexed dirty block for identical content (else only for heavily changed pages). */
  blockLookups: boolean;
  /** Candidate similar pages tried per dirty page. */
  similarCandidates: number;
  /** Content-index lookups spent per dirty page looking for a similar page. */
  pageLookups: number;
  /** Look for a similar page only when the best encoding so far exceeds this many bytes. */
  similarThreshold: number;
}

/** The parameters of a level. */
export function levelParams(level: Level): LevelParams {
  return level === "fast"
    ? {
      sectionCodec: "zstd",
      lzmaLzPreset: 1,
      lzmaOpsPreset: 6,
      // zstd's default level on the op stream: -10% bytes on redis for no
      // measurable time (the op stream is small beside the dirty data).
      zstdLevel: 3,
      // zstd -3 on the LZ section: -8% bytes on node-tsc for +10% time there.
      lzLevel: 3,
      lzThreshold: 1024,
      lzTrialLevel: 0,
      heavyDirectLz: true,
      lzChunkBytes: 1 << 20,
      anchors: false,
      blockLookups: false,
      similarCandidates: 1,
      pageLookups: 6,
      similarThreshold: 128,
    }
    : {
      // LZMA2 over zstd -9, measured on the first 4 pairs of every real
      // series (bench/README.md): the LZ section at preset 1 (hash chains)
      // with a literal coder for 4-byte words, the op stream at preset 6.
      // Wire bytes ÷ xdelta3 went node-tsc 1.32 -> 0.98, jvm 0.92 -> 0.74,
      // python-web 0.92 -> 0.83, redis 0.47 -> 0.41, mariadb 0.26 -> 0.22,
      // postgres 0.24 -> 0.21, memcached 2.67 -> 2.61; encode time +0-95%.
      // Preset 6 for the LZ section too: another -5% on node-tsc at 4× its
      // time. Only decoders of such frames need liblzma.
      sectionCodec: "lzma2",
      lzmaLzPreset: 1,
      lzmaOpsPreset: 6,
      zstdLevel: 9,
      lzLevel: 9,
      lzThreshold: 48,
      lzTrialLevel: 1,
      heavyDirectLz: true,
      lzChunkBytes: 4 << 20,
      // Measured on the three real series: -1% bytes on node-tsc, +5% on
      // redis, at 5-10% more time. Off until a workload shows it pays.
      anchors: false,
      blockLookups: true,
      similarCandidates: 3,
      pageLookups: 16,
      similarThreshold: 8,
    };
}

/** Parses a level name, with an error that lists the valid ones. */
export function parseLevel(text: string): Level {
  if (text === "fast" || text === "max") return text;
  throw new RangeError(
    `unknown codec level "${text}", expected one of: ${LEVELS.join(", ")}`,
  );
}

/** Parses `--level`: a level, or `auto` (chosen per epoch; see `auto_level.ts`). */
export function parseLevelChoice(text: string): Level | "auto" {
  if (text === "auto") return "auto";
  if (text === "fast" || text === "max") return text;
  throw new RangeError(
    `unknown codec level "${text}", expected one of: ${
      LEVELS.join(", ")
    }, auto`,
  );
}

/** Level → 2-bit frame flag. */
export function levelCode(level: Level): number {
  return level === "fast" ? 0 : 1;
}

/** 2-bit frame flag → level. */
export function levelFromCode(code: number): Level {
  if (code === 0) return "fast";
  if (code === 1) return "max";
  throw new RangeError(
    `unknown codec level code ${code}, expected 0 (fast) or 1 (max)`,
  );
}
