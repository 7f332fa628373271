/**
 * The series comparison: for every pair of consecutive images of a series,
 * patchwire's wire bytes and encode time at each level next to
 * `xdelta3 -e -s prev cur`, `zstd -1 --patch-from=prev cur`, and same-address
 * XOR of dirty pages + zstd -1, all in one run.
 * @module
 */

import { createZstd } from "../src/compress/zstd.ts";
import { type ReplayResult, replaySeries } from "../src/replay.ts";
import { openSeries } from "../src/series.ts";

/** Totals of one method over a series. */
export interface MethodTotals {
  method: string;
  wireBytes: number;
  encodeMs: number;
  pairs: number;
  verified?: boolean;
}

/** Everything measured for one series. */
export interface SeriesComparison {
  series: string;
  dir: string;
  imageBytes: number;
  pairs: number;
  dirtyPageBytes: number;
  methods: MethodTotals[];
  replays: ReplayResult[];
}

async function timeCommand(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(cmd, {
    args,
    stdout: "null",
    stderr: "piped",
  }).output();
  const ms = performance.now() - t0;
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed: ${
        new TextDecoder().decode(out.stderr).trim()
      }`,
    );
  }
  return ms;
}

/** Same-address XOR of the pages that differ, plus their page numbers, compressed with zstd -1 in one batch. */
export function xorZstdBaseline(
  prev: Uint8Array,
  cur: Uint8Array,
  scratch: Uint8Array,
  zstd: ReturnType<typeof createZstd>,
): number {
  const pageWords = 1024;
  const a = new Uint32Array(prev.buffer, prev.byteOffset, prev.length >>> 2);
  const b = new Uint32Array(cur.buffer, cur.byteOffset, cur.length >>> 2);
  const out = new Uint32Array(
    scratch.buffer,
    scratch.byteOffset,
    scratch.length >>> 2,
  );
  let o = 0;
  const fullPages = Math.floor(prev.length / 4096);
  for (let p = 0; p < fullPages; p++) {
    const base = p * pageWords;
    let differs = false;
    for (let i = 0; i < pageWords; i++) {
      if (a[base + i] !== b[base + i]) {
        differs = true;
        break;
      }
    }
    if (!differs) continue;
    out[o++] = p;
    for (let i = 0; i < pageWords; i++) out[o++] = a[base + i] ^ b[base + i];
  }
  // A short last page, if any, is sent raw.
  let bytes = o * 4;
  const tail = prev.length - fullPages * 4096;
  if (tail > 0) {
    scratch.set(cur.subarray(fullPages * 4096), bytes);
    bytes += tail;
  }
  return bytes === 0
    ? 0
    : zstd.compress(scratch.subarray(0, bytes), { level: 1, checksum: false })
      .length;
}

/** Runs every method over a series (at most `limit` pairs). */
export async function compareSeries(
  dir: string,
  limit: number | undefined,
  log: (line: string) => void,
): Promise<SeriesComparison> {
  const series = await openSeries(dir);
  const pairs = Math.min(series.meta.epochs - 1, limit ?? Infinity);
  const result: SeriesComparison = {
    series: series.meta.name,
    dir,
    imageBytes: series.meta.size,
    pairs,
    dirtyPageBytes: 0,
    methods: [],
    replays: [],
  };
  for (const level of ["fast", "max"] as const) {
    log(`  ${series.meta.name}: patchwire ${level} ...`);
    const r = await replaySeries(dir, { level, limit: pairs });
    result.replays.push(r);
    result.dirtyPageBytes = r.dirtyPageBytes;
    result.methods.push({
      method: `patchwire ${level}`,
      wireBytes: r.wireBytes,
      encodeMs: r.encodeMs,
      pairs: r.pairs,
      verified: r.verified,
    });
  }
  const tmp = await Deno.makeTempDir({ prefix: "patchwire-bench-" });
  try {
    const xdelta: MethodTotals = {
      method: "xdelta3 -e -s",
      wireBytes: 0,
      encodeMs: 0,
      pairs,
    };
    const zstdCli: MethodTotals = {
      method: "zstd -1 --patch-from",
      wireBytes: 0,
      encodeMs: 0,
      pairs,
    };
    const xor: MethodTotals = {
      method: "XOR dirty pages + zstd -1",
      wireBytes: 0,
      encodeMs: 0,
      pairs,
    };
    const zstd = createZstd();
    const scratch = new Uint8Array(
      series.meta.size + 4 * Math.ceil(series.meta.size / 4096) + 4096,
    );
    let prev: Uint8Array = await series.readImage(
      0,
      new Uint8Array(series.meta.size),
    );
    let spare: Uint8Array = new Uint8Array(series.meta.size);
    log(
      `  ${series.meta.name}: xdelta3, zstd --patch-from, XOR+zstd over ${pairs} pairs ...`,
    );
    for (let k = 1; k <= pairs; k++) {
      const prevPath = series.imagePath(k - 1), curPath = series.imagePath(k);
      const xOut = `${tmp}/x.vcdiff`, zOut = `${tmp}/z.zst`;
      xdelta.encodeMs += await timeCommand("xdelta3", [
        "-e",
        "-f",
        "-s",
        prevPath,
        curPath,
        xOut,
      ]);
      xdelta.wireBytes += (await Deno.stat(xOut)).size;
      zstdCli.encodeMs += await timeCommand("zstd", [
        "-1",
        "-q",
        "-f",
        `--patch-from=${prevPath}`,
        curPath,
        "-o",
        zOut,
      ]);
      zstdCli.wireBytes += (await Deno.stat(zOut)).size;
      const cur = await series.readImage(k, spare);
      const t0 = performance.now();
      xor.wireBytes += xorZstdBaseline(prev, cur, scratch, zstd);
      xor.encodeMs += performance.now() - t0;
      spare = prev;
      prev = cur;
    }
    zstd.close();
    result.methods.push(xdelta, zstdCli, xor);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  return result;
}

/** Markdown table of one comparison, ratios against xdelta3. */
export function comparisonTable(c: SeriesComparison): string {
  const x = c.methods.find((m) => m.method.startsWith("xdelta3"))!;
  const mib = (n: number) => (n / (1 << 20)).toFixed(2);
  const lines = [
    `### ${c.series} — ${mib(c.imageBytes)} MiB image, ${c.pairs} epochs, ${
      mib(c.dirtyPageBytes)
    } MiB of dirty pages`,
    "",
    "| method | wire MiB | wire KiB/epoch | wire ÷ xdelta3 | dirty pages ÷ wire | encode ms/epoch | time ÷ xdelta3 |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const m of c.methods) {
    lines.push(
      `| ${m.method}${m.verified === false ? " (NOT VERIFIED)" : ""} | ${
        mib(m.wireBytes)
      } | ${(m.wireBytes / 1024 / Math.max(1, m.pairs)).toFixed(1)} | ${
        (m.wireBytes / Math.max(1, x.wireBytes)).toFixed(3)
      } | ${(c.dirtyPageBytes / Math.max(1, m.wireBytes)).toFixed(1)} | ${
        (m.encodeMs / Math.max(1, m.pairs)).toFixed(2)
      } | ${(m.encodeMs / Math.max(1e-9, x.encodeMs)).toFixed(4)} |`,
    );
  }
  const fast = c.methods.find((m) => m.method === "patchwire fast")!;
  const max = c.methods.find((m) => m.method === "patchwire max")!;
  const xorBase = c.methods.find((m) => m.method.startsWith("XOR"))!;
  const check = (ok: boolean) => (ok ? "met" : "MISSED");
  lines.push(
    "",
    `targets: fast wire ≤ 1.25× xdelta3: ${
      check(fast.wireBytes <= 1.25 * x.wireBytes)
    } (${
      (fast.wireBytes / x.wireBytes).toFixed(3)
    }×); fast time ≤ 1/30 xdelta3: ${
      check(fast.encodeMs * 30 <= x.encodeMs)
    } (1/${
      (x.encodeMs / fast.encodeMs).toFixed(1)
    }); max wire ≤ 0.75× xdelta3: ${
      check(max.wireBytes <= 0.75 * x.wireBytes)
    } (${(max.wireBytes / x.wireBytes).toFixed(3)}×); max time ≤ 1/2 xdelta3: ${
      check(max.encodeMs * 2 <= x.encodeMs)
    } (1/${(x.encodeMs / max.encodeMs).toFixed(1)}); both ≤ XOR+zstd -1: ${
      check(
        fast.wireBytes <= xorBase.wireBytes &&
          max.wireBytes <= xorBase.wireBytes,
      )
    }`,
  );
  return lines.join("\n");
}
