/**
 * Parser for Linux `/proc/PID/maps`.
 *
 * @module
 */

/** One line of `/proc/PID/maps`. */
export interface MapEntry {
  /** First address of the mapping. */
  start: number;
  /** One past the last address of the mapping. */
  end: number;
  /** Permission string, e.g. `rw-p`. */
  perms: string;
  /** Offset into the mapped file. */
  offset: number;
  /** Mapped file path or pseudo name (`[heap]`, `[stack]`); "" if anonymous. */
  path: string;
}

/** Pseudo mappings never captured (kernel-provided, not process memory). */
export const SKIPPED_PATHS: ReadonlySet<string> = new Set([
  "[vvar]",
  "[vvar_vclock]",
  "[vsyscall]",
  "[vdso]",
]);

const LINE =
  /^([0-9a-f]+)-([0-9a-f]+)\s+([r-][w-][xX-][psS])\s+([0-9a-f]+)\s+\S+\s+\d+\s*(.*)$/;

/**
 * Parse the text of `/proc/PID/maps`. Mappings whose addresses do not fit a
 * safe integer (only `[vsyscall]` on x86-64) are dropped.
 *
 * @example
 * ```ts
 * import { parseMaps } from "./_maps.ts";
 * const m = parseMaps("55d0c000-55d2d000 rw-p 00000000 00:00 0  [heap]\n");
 * console.log(m[0].path, m[0].end - m[0].start); // "[heap]" 135168
 * ```
 */
export function parseMaps(text: string): MapEntry[] {
  const out: MapEntry[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const m = LINE.exec(line);
    if (m === null) {
      throw new Error(
        `unparsable /proc/PID/maps line ${
          JSON.stringify(line)
        }, expected "start-end perms offset dev inode [path]"`,
      );
    }
    const start = parseInt(m[1], 16);
    const end = parseInt(m[2], 16);
    if (!Number.isSafeInteger(end)) continue; // kernel-space [vsyscall]
    out.push({
      start,
      end,
      perms: m[3],
      offset: parseInt(m[4], 16),
      path: m[5].trim(),
    });
  }
  return out;
}

/**
 * Keep the mappings a process capture records: writable (`w`), not a
 * kernel pseudo mapping (`[vvar]`, `[vsyscall]`, `[vdso]`).
 *
 * @example
 * ```ts
 * import { parseMaps, writableRanges } from "./_maps.ts";
 * const w = writableRanges(parseMaps(await Deno.readTextFile("/proc/self/maps")));
 * ```
 */
export function writableRanges(maps: readonly MapEntry[]): MapEntry[] {
  return maps.filter((m) =>
    m.perms[1] === "w" && !SKIPPED_PATHS.has(m.path) && m.end > m.start
  );
}
