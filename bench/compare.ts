/**
 * The series comparison: for every pair of consecutive images of a series,
 * patchwire's wire bytes and encode time at each level next to
 * `xdelta3 -e -s prev cur`, `zstd -1 --patch-from=prev cur`, and same-address
 * XOR of dirty pages + zstd -1, all in one run. Two ways of timing are in the
 * table, each row says which ({@linkcode COMPARISON_LEGEND}): in the bench
 * process with the images in memory (patchwire's encoder, XOR + zstd), and
 * whole processes from spawn to exit over the two image files (xdelta3, zstd,
 * and patchwire as a `replay` process, tools/replay.ts).
 * @module
 */

import { createZstd } from "../src/compress/zstd.ts";
import {
  LinkModel,
  type ReplayResult,
  type ReplayRow,
  replaySeries,
} from "../src/replay.ts";

/** Links the time-to-commit table models, Mbit/s: a LAN, a WAN link, a thin one. */
export const LINK_RATES_MBPS = [1000, 10, 1];

/** Modelled ms from due to commit, summed over a fixed level's pairs ({@linkcode LinkModel}). */
function modelledCommitMs(
  rows: ReplayRow[],
  intervalMs: number,
  linkMbps: number,
): number {
  const link = new LinkModel(intervalMs, linkMbps);
  let total = 0;
  for (const r of rows) {
    const s = link.send(r.epoch, r.encodeMs, r.wireBytes);
    total += s.committedAt - s.due;
  }
  return total;
}
import { openSeries } from "../src/series.ts";

/** How a method's time was taken (spelled out in {@linkcode COMPARISON_LEGEND}). */
export type Timing = "in-process" | "process";

/** Totals of one method over a series. */
export interface MethodTotals {
  method: string;
  wireBytes: number;
  /** The time measured, as `timing` says: the encode alone, or a whole process. */
  encodeMs: number;
  timing: Timing;
  /** For a patchwire process: its own in-process encode time of the pair. */
  innerEncodeMs?: number;
  /** For a patchwire process: its encode time of the first image against an all-zero start. */
  innerInitialMs?: number;
  pairs: number;
  verified?: boolean;
}

/** What the times of each kind of row include, for the printed output. */
export const COMPARISON_LEGEND = [
  "What each row's time includes (ms/epoch is that time over the pairs):",
  "",
  "- **patchwire fast / max** (in process): `EpochEncoder.encode` of image k, in the bench process, images already in memory (reading them from disk is not timed): the dirty-block scan of the whole image, encoding and compression. The encoder's model holds every earlier epoch of the series (as a running primary's does). No process start, no file I/O, no decode.",
  "- **xdelta3 -e -s**, **zstd -1 --patch-from** (whole process): wall time from spawn to exit of `xdelta3 -e -f -s PREV CUR OUT` and `zstd -1 -q -f --patch-from=PREV CUR -o OUT`: process start, reading both files (in the page cache), encoding, writing the delta to a file in /tmp. Each knows only PREV.",
  "- **replay process fast / max** (whole process): wall time from spawn to exit of `deno run --allow-read --allow-ffi --allow-env tools/replay.ts DIR --limit 1 --level L --json` (what `deno task replay` runs, without the task runner), DIR a two-image series of the same two files (symlinks): Deno's start and module load (its transpile cache warm: one untimed run first), reading both files, sending PREV against an all-zero start (encode and decode: the initial sync), encoding CUR against PREV, decoding, applying and verifying it; it writes only its text. Knows only PREV, as the tools; wire bytes are the pair's, not the initial sync. The \"of it\" columns are what the process measured inside: the pair's encode, and the initial sync's encode.",
  "- **zstd -19 --long --patch-from** (whole process, below each table, over the first pairs only: about a minute and a half per pair here): `zstd -19 --long=30 -q -f --patch-from=PREV CUR -o OUT`, zstd's strongest practical setting for a delta, its window covering the whole previous image.",
  "- **XOR dirty pages + zstd -1** (in process): comparing the pages, XOR of those that differ and zstd -1 of the batch, images in memory.",
].join("\n");

/** Everything measured for one series. */
export interface SeriesComparison {
  series: string;
  dir: string;
  imageBytes: number;
  pairs: number;
  dirtyPageBytes: number;
  methods: MethodTotals[];
  replays: ReplayResult[];
  /**
   * `zstd -19 --long --patch-from` over the first `slow.pairs` pairs only (it
   * takes a minute or more per pair of these images), beside xdelta3's bytes
   * for the same pairs.
   */
  slow?: {
    pairs: number;
    wireBytes: number;
    encodeMs: number;
    xdeltaBytes: number;
  };
  /** Per modelled link: ms from due to commit per epoch at fast, max and auto, and auto's choices. */
  commit: {
    linkMbps: number;
    fastMs: number;
    maxMs: number;
    autoMs: number;
    autoWireBytes: number;
    autoLevels: { fast: number; max: number };
  }[];
  intervalMs: number;
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

/** Times `zstd LEVEL... --patch-from=PREV CUR -o OUT` as a whole process. */
function zstdPatchFrom(
  level: string[],
  prev: string,
  cur: string,
  out: string,
): Promise<number> {
  return timeCommand("zstd", [
    ...level,
    "-q",
    "-f",
    `--patch-from=${prev}`,
    cur,
    "-o",
    out,
  ]);
}

const REPLAY = new URL("../tools/replay.ts", import.meta.url).pathname;

/**
 * Runs tools/replay.ts over a two-image series as its own process (the
 * permissions of `deno task replay`), timed from spawn to exit.
 */
async function replayProcess(
  dir: string,
  level: "fast" | "max",
): Promise<
  {
    ms: number;
    wireBytes: number;
    encodeMs: number;
    initialMs: number;
    verified: boolean;
  }
> {
  const args = [
    "run",
    "--allow-read",
    "--allow-ffi",
    "--allow-env",
    REPLAY,
    dir,
    "--limit",
    "1",
    "--level",
    level,
    "--json",
  ];
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const ms = performance.now() - t0;
  if (!out.success) {
    throw new Error(
      `tools/replay.ts ${args.slice(5).join(" ")} failed: ${
        new TextDecoder().decode(out.stderr).trim()
      }`,
    );
  }
  const totals = JSON.parse(
    new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!,
  );
  return {
    ms,
    wireBytes: totals.wireBytes,
    encodeMs: totals.encodeMs,
    initialMs: totals.initialEncodeMs,
    verified: totals.verified === true && totals.pairs === 1,
  };
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
  slowPairs = 1,
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
    commit: [],
    intervalMs: series.meta.intervalMs,
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
      timing: "in-process",
      pairs: r.pairs,
      verified: r.verified,
    });
  }
  const [fastRun, maxRun] = result.replays;
  for (const linkMbps of LINK_RATES_MBPS) {
    log(`  ${series.meta.name}: patchwire auto over ${linkMbps} Mbit/s ...`);
    const a = await replaySeries(dir, {
      level: "auto",
      limit: pairs,
      linkMbps,
    });
    if (!a.verified) {
      throw new Error(`auto over ${linkMbps} Mbit/s: not verified`);
    }
    const per = (ms: number) => ms / Math.max(1, pairs);
    result.commit.push({
      linkMbps,
      fastMs: per(
        modelledCommitMs(fastRun.rows, series.meta.intervalMs, linkMbps),
      ),
      maxMs: per(
        modelledCommitMs(maxRun.rows, series.meta.intervalMs, linkMbps),
      ),
      autoMs: per(a.commitMs),
      autoWireBytes: a.wireBytes,
      autoLevels: a.levels,
    });
  }
  const tmp = await Deno.makeTempDir({ prefix: "patchwire-bench-" });
  try {
    const xdelta: MethodTotals = {
      method: "xdelta3 -e -s",
      wireBytes: 0,
      encodeMs: 0,
      timing: "process",
      pairs,
    };
    const zstdCli: MethodTotals = {
      method: "zstd -1 --patch-from",
      wireBytes: 0,
      encodeMs: 0,
      timing: "process",
      pairs,
    };
    const replayProcs: MethodTotals[] = (["fast", "max"] as const).map((
      level,
    ) => ({
      method: `replay process ${level}`,
      wireBytes: 0,
      encodeMs: 0,
      timing: "process",
      innerEncodeMs: 0,
      innerInitialMs: 0,
      pairs,
      verified: true,
    }));
    const xor: MethodTotals = {
      method: "XOR dirty pages + zstd -1",
      wireBytes: 0,
      encodeMs: 0,
      timing: "in-process",
      pairs,
    };
    const pairDir = `${tmp}/pair`;
    await Deno.mkdir(pairDir);
    await Deno.writeTextFile(
      `${pairDir}/meta.json`,
      JSON.stringify({
        name: `${series.meta.name}-pair`,
        source: `two images of ${dir}`,
        pageSize: 4096,
        size: series.meta.size,
        epochs: 2,
        intervalMs: series.meta.intervalMs,
        notes: "bench/compare.ts: one pair of the series, for a replay process",
      }),
    );
    const linkPair = async (k: number) => {
      for (
        const [name, epoch] of [["0000.img", k - 1], ["0001.img", k]] as const
      ) {
        await Deno.remove(`${pairDir}/${name}`).catch(() => {});
        await Deno.symlink(series.imagePath(epoch), `${pairDir}/${name}`);
      }
    };
    if (pairs > 0) {
      // Untimed: fills Deno's transpile cache for tools/replay.ts.
      await linkPair(1);
      await replayProcess(pairDir, "fast");
    }
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
    const slow = {
      pairs: Math.min(slowPairs, pairs),
      wireBytes: 0,
      encodeMs: 0,
      xdeltaBytes: 0,
    };
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
      const xBytes = (await Deno.stat(xOut)).size;
      xdelta.wireBytes += xBytes;
      if (k <= slow.pairs) {
        log(
          `  ${series.meta.name}: zstd -19 --long --patch-from, pair ${k} ...`,
        );
        slow.encodeMs += await zstdPatchFrom(
          ["-19", "--long=30"],
          prevPath,
          curPath,
          zOut,
        );
        slow.wireBytes += (await Deno.stat(zOut)).size;
        slow.xdeltaBytes += xBytes;
      }
      zstdCli.encodeMs += await zstdPatchFrom(["-1"], prevPath, curPath, zOut);
      zstdCli.wireBytes += (await Deno.stat(zOut)).size;
      await linkPair(k);
      for (const r of replayProcs) {
        const p = await replayProcess(
          pairDir,
          r.method.endsWith("max") ? "max" : "fast",
        );
        r.encodeMs += p.ms;
        r.wireBytes += p.wireBytes;
        r.innerEncodeMs! += p.encodeMs;
        r.innerInitialMs! += p.initialMs;
        r.verified &&= p.verified;
      }
      const cur = await series.readImage(k, spare);
      const t0 = performance.now();
      xor.wireBytes += xorZstdBaseline(prev, cur, scratch, zstd);
      xor.encodeMs += performance.now() - t0;
      spare = prev;
      prev = cur;
    }
    zstd.close();
    result.methods.push(xdelta, zstdCli, ...replayProcs, xor);
    if (slow.pairs > 0) result.slow = slow;
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  return result;
}

/** Markdown table of one comparison, ratios against xdelta3 (see {@linkcode COMPARISON_LEGEND}). */
export function comparisonTable(c: SeriesComparison): string {
  const x = c.methods.find((m) => m.method.startsWith("xdelta3"))!;
  const mib = (n: number) => (n / (1 << 20)).toFixed(2);
  const perPair = (ms: number, m: MethodTotals) =>
    (ms / Math.max(1, m.pairs)).toFixed(2);
  const lines = [
    `### ${c.series} — ${mib(c.imageBytes)} MiB image, ${c.pairs} epochs, ${
      mib(c.dirtyPageBytes)
    } MiB of dirty pages`,
    "",
    "| method | timed | wire MiB | wire KiB/epoch | wire ÷ xdelta3 | dirty pages ÷ wire | ms/epoch | of it, the pair's encode ms | of it, the initial sync's encode ms | time ÷ xdelta3 process |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const m of c.methods) {
    lines.push(
      `| ${m.method}${m.verified === false ? " (NOT VERIFIED)" : ""} | ${
        m.timing === "process" ? "whole process" : "in process"
      } | ${mib(m.wireBytes)} | ${
        (m.wireBytes / 1024 / Math.max(1, m.pairs)).toFixed(1)
      } | ${(m.wireBytes / Math.max(1, x.wireBytes)).toFixed(3)} | ${
        (c.dirtyPageBytes / Math.max(1, m.wireBytes)).toFixed(1)
      } | ${perPair(m.encodeMs, m)} | ${
        m.innerEncodeMs === undefined ? "-" : perPair(m.innerEncodeMs, m)
      } | ${
        m.innerInitialMs === undefined ? "-" : perPair(m.innerInitialMs, m)
      } | ${(m.encodeMs / Math.max(1e-9, x.encodeMs)).toFixed(4)} |`,
    );
  }
  const fast = c.methods.find((m) => m.method === "patchwire fast")!;
  const max = c.methods.find((m) => m.method === "patchwire max")!;
  const fastProc = c.methods.find((m) => m.method === "replay process fast");
  const maxProc = c.methods.find((m) => m.method === "replay process max");
  const xorBase = c.methods.find((m) => m.method.startsWith("XOR"))!;
  const check = (ok: boolean) => (ok ? "met" : "MISSED");
  const inverse = (m: MethodTotals) => (x.encodeMs / m.encodeMs).toFixed(1);
  lines.push(
    "",
    `targets (times: patchwire's in-process encode against whole xdelta3 processes): fast wire ≤ 1.0× xdelta3: ${
      check(fast.wireBytes <= x.wireBytes)
    } (${
      (fast.wireBytes / x.wireBytes).toFixed(3)
    }×); fast time ≤ 1/12 xdelta3: ${
      check(fast.encodeMs * 12 <= x.encodeMs)
    } (1/${inverse(fast)}); max wire ≤ 0.70× xdelta3: ${
      check(max.wireBytes <= 0.70 * x.wireBytes)
    } (${(max.wireBytes / x.wireBytes).toFixed(3)}×); max time ≤ 1/2 xdelta3: ${
      check(max.encodeMs * 2 <= x.encodeMs)
    } (1/${inverse(max)}); both ≤ XOR+zstd -1: ${
      check(
        fast.wireBytes <= xorBase.wireBytes &&
          max.wireBytes <= xorBase.wireBytes,
      )
    }`,
  );
  if (c.commit.length > 0) {
    lines.push(
      "",
      `time to commit per epoch, modelled (epochs due every ${c.intervalMs} ms as recorded, each encoded after the previous, its bytes sent after the previous epoch's at the link's rate; ms from due to through, queueing included, round trip and apply left out; auto chose each epoch's level from what it measured):`,
      "",
      "| link | fast ms | max ms | auto ms | auto: epochs fast / max | auto wire ÷ xdelta3 | best fixed level |",
      "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    );
    for (const k of c.commit) {
      const best = k.fastMs <= k.maxMs ? "fast" : "max";
      lines.push(
        `| ${k.linkMbps} Mbit/s | ${k.fastMs.toFixed(1)} | ${
          k.maxMs.toFixed(1)
        } | ${
          k.autoMs.toFixed(1)
        } | ${k.autoLevels.fast} / ${k.autoLevels.max} | ${
          (k.autoWireBytes / x.wireBytes).toFixed(3)
        } | ${best} |`,
      );
    }
  }
  if (c.slow) {
    const s = c.slow;
    lines.push(
      "",
      `zstd -19 --long=30 --patch-from over the first ${s.pairs} pair(s): ${
        (s.wireBytes / 1024).toFixed(1)
      } KiB, ${
        (s.wireBytes / Math.max(1, s.xdeltaBytes)).toFixed(3)
      }× xdelta3's ${
        (s.xdeltaBytes / 1024).toFixed(1)
      } KiB for the same pair(s), ${
        (s.encodeMs / s.pairs).toFixed(0)
      } ms per pair (whole process)`,
    );
  }
  if (fastProc && maxProc) {
    const times = (m: MethodTotals) =>
      (m.encodeMs / Math.max(1e-9, x.encodeMs)).toFixed(2);
    lines.push(
      "",
      `process against process: a replay process takes ${
        times(fastProc)
      }× (fast) and ${times(maxProc)}× (max) the time of an xdelta3 process`,
    );
  }
  return lines.join("\n");
}
