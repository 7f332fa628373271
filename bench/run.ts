/**
 * `deno task bench`: the numbers the codec is judged by, in one run.
 *
 * 1. Series comparison: for each recorded series, patchwire fast and max
 *    against xdelta3, zstd --patch-from and same-address XOR + zstd -1
 *    (bench/compare.ts), as Markdown tables with ratios and the targets;
 *    patchwire both in process and as a whole `replay` process over the same
 *    two files as the tools, each row saying what its time includes.
 * 2. Throughput on the same real series: encode (without the scan) and
 *    decode + apply, in GB/s of dirty data.
 * 3. The dirty-detection scan of a 1 GiB image beside a memcpy of it.
 * 4. Resident memory of the primary as it runs, per byte of image: a fresh
 *    process per case running a real Primary with full and with dirty-hinted
 *    capture (bench/memory.ts), over each series, or over a synthetic one when
 *    there is none.
 *
 * The stage micro-benchmarks are `Deno.bench` files run before this script
 * by the same task (bench/*_bench.ts).
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import { createBlockHasher } from "../src/hash/block_hash.ts";
import { isSeriesDir } from "../src/series.ts";
import {
  compareSeries,
  COMPARISON_LEGEND,
  comparisonTable,
  type SeriesComparison,
} from "./compare.ts";
import { measureMemory, type MemoryResult, memoryTable } from "./memory.ts";

const USAGE =
  `usage: deno task bench [--series DIR]... [--limit N] [--slow-pairs N] [--no-scan]

Runs the series comparison over every series directory given with --series
(default: every series under /work/data/series, see bench/README.md for how
they were recorded), at most N epochs each (default 12; 0 = all), then the
throughput, scan and memory measurements (the memory one over a synthetic
image when there is no series). zstd -19 --long --patch-from, about a minute
and a half per pair of these images, runs over the first --slow-pairs pairs
only (default 1; 0 = none). Prints Markdown.`;

const DEFAULT_ROOT = "/work/data/series";

async function findSeries(root: string): Promise<string[]> {
  const dirs: string[] = [];
  try {
    for await (const entry of Deno.readDir(root)) {
      const dir = `${root}/${entry.name}`;
      if (entry.isDirectory && await isSeriesDir(dir)) dirs.push(dir);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return dirs.sort();
}

function gbps(bytes: number, ms: number): string {
  return ms > 0 ? (bytes / ms / 1e6).toFixed(2) : "-";
}

function scanBench(): string {
  const size = 1 << 30;
  const blocks = size / 64;
  const dirtyWords = Math.ceil(blocks / 32);
  const hasher = createBlockHasher({
    arenaBytes: size + blocks * 8 + dirtyWords * 4 + (1 << 20),
  });
  // Image, hashes and dirty bits in the hasher's arena: the scan reads them in place.
  const image = hasher.alloc(size) ?? new Uint8Array(size);
  const hashBytes = hasher.alloc(blocks * 8);
  const dirtyBytes = hasher.alloc(dirtyWords * 4);
  const inArena = hashBytes !== null && dirtyBytes !== null;
  const h = hashBytes
    ? new Uint32Array(hashBytes.buffer, hashBytes.byteOffset, blocks * 2)
    : new Uint32Array(blocks * 2);
  const d = dirtyBytes
    ? new Uint32Array(dirtyBytes.buffer, dirtyBytes.byteOffset, dirtyWords)
    : new Uint32Array(dirtyWords);
  const words = new Uint32Array(image.buffer, image.byteOffset, size >>> 2);
  for (let i = 0; i < words.length; i += 7) words[i] = Math.imul(i, 0x9e3779b1);
  hasher.hashAll(image, h);
  const copy = new Uint8Array(size);
  const times: number[] = [], copies: number[] = [];
  for (let r = 0; r < 5; r++) {
    words[(r * 7919) % words.length] ^= 1;
    d.fill(0);
    const t0 = performance.now();
    hasher.scanDirty(image, h, d);
    times.push(performance.now() - t0);
    const t1 = performance.now();
    copy.set(image);
    copies.push(performance.now() - t1);
  }
  const best = (xs: number[]) => Math.min(...xs);
  const median = (xs: number[]) =>
    [...xs].sort((a, b) => a - b)[xs.length >> 1];
  return [
    `| 1 GiB image (${
      inArena ? "in the hasher's arena" : "ordinary buffers"
    }) | best GB/s | median GB/s |`,
    "| --- | ---: | ---: |",
    `| dirty-detection scan (${hasher.kind}, one core) | ${
      gbps(size, best(times))
    } | ${gbps(size, median(times))} |`,
    `| memcpy (Uint8Array.set) | ${gbps(size, best(copies))} | ${
      gbps(size, median(copies))
    } |`,
  ].join("\n");
}

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, ["series", "limit", "slow-pairs"], [
    "no-scan",
    "help",
  ]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  const limitArg = intOption(
    args.options.get("limit")?.at(-1) ?? "12",
    "limit",
    0,
  );
  const limit = limitArg === 0 ? undefined : limitArg;
  const slowPairs = intOption(
    args.options.get("slow-pairs")?.at(-1) ?? "1",
    "slow-pairs",
  );
  const dirs = args.options.get("series") ?? await findSeries(DEFAULT_ROOT);
  for (const dir of dirs) {
    if (!await isSeriesDir(dir)) {
      throw new UsageError(
        `${dir} is not an image series directory (no meta.json)`,
      );
    }
  }
  console.log(
    `# patchwire benchmarks — ${
      new Date().toISOString()
    }, ${Deno.build.target}\n`,
  );
  const comparisons: SeriesComparison[] = [];
  if (dirs.length === 0) {
    console.log(
      `No series found under ${DEFAULT_ROOT}: record some (bench/README.md) or pass --series DIR.\n`,
    );
  }
  if (dirs.length > 0) console.log(COMPARISON_LEGEND + "\n");
  for (const dir of dirs) {
    const c = await compareSeries(
      dir,
      limit,
      (line) => console.error(line),
      slowPairs,
    );
    comparisons.push(c);
    console.log(comparisonTable(c) + "\n");
  }
  if (comparisons.length > 0) {
    console.log("## Throughput on the real series (GB/s of dirty page data)\n");
    console.log(
      "| series | level | encode without scan | encode with scan | scan of whole image | decode + apply |",
    );
    console.log("| --- | --- | ---: | ---: | ---: | ---: |");
    for (const c of comparisons) {
      for (const r of c.replays) {
        console.log(
          `| ${c.series} | ${r.level} | ${
            gbps(r.dirtyPageBytes, r.encodeMs - r.scanMs)
          } | ${gbps(r.dirtyPageBytes, r.encodeMs)} | ${
            gbps(c.imageBytes * r.pairs, r.scanMs)
          } | ${gbps(r.dirtyPageBytes, r.decodeMs)} |`,
        );
      }
    }
    console.log();
  }
  console.log("## Resident memory of the primary as it runs\n");
  const memory: MemoryResult[] = [];
  if (comparisons.length === 0) memory.push(...await measureMemory());
  for (const c of comparisons) {
    memory.push(...await measureMemory({ series: c.dir }));
  }
  console.log(memoryTable(memory) + "\n");
  if (!args.options.has("no-scan")) {
    console.log("## Dirty-detection scan\n");
    console.log(scanBench() + "\n");
  }
});
