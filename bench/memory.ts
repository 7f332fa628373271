/**
 * Resident memory of the primary as it runs: a fresh process per case runs a
 * real {@linkcode Primary} (src/primary.ts: encoder, capture buffers, retained
 * log, commit path; no peers, `--ack none`) over a real source, and reads its
 * own `/proc/self/status` before anything of the image exists and after every
 * checkpoint. Everything the process holds is counted: the capture buffers
 * the encoder allocates, its model (committed copy, hashes, content index),
 * the retained log and whatever the source maps.
 *
 * Two cases, each at both levels:
 *
 * - `full`: the `file:` source (src/file_source.ts) on a file in /dev/shm
 *   (as a QEMU guest's `memory-backend-file`), copied whole at every capture
 *   and scanned whole by the encoder. Before capture k the process writes
 *   image k of the series into that file (1 MiB at a time), as the guest
 *   would.
 * - `dirty`: a source with a dirty log, as a hypervisor's: capture k copies
 *   into the capture buffer only the pages in which image k differs from
 *   image k − 1 (read from the series files 1 MiB at a time) and reports
 *   them, so only those are hashed. The first capture is whole.
 *
 * The images come from a recorded series (`--series DIR`) or, without one,
 * from the seeded synthetic workload written to a temporary series first (by
 * this parent process, not the measured one).
 *
 *     deno run -A bench/memory.ts [--series DIR] [--epochs N] [--levels fast,max]
 *       [--cases full,dirty] [--size SIZE] [--json]
 *
 * Prints a Markdown table (and with `--json` one JSON line per case).
 * @module
 */

import {
  formatBytes,
  intOption,
  parseArgs,
  runMain,
  UsageError,
} from "../src/_cli.ts";
import type { ImageSpec } from "../src/encoder.ts";
import { FileSource } from "../src/file_source.ts";
import { type Level, parseLevel } from "../src/level.ts";
import { Primary } from "../src/primary.ts";
import { AckLevel } from "../src/protocol.ts";
import { openSeries, type Series, SeriesWriter } from "../src/series.ts";
import { type CaptureResult, checkInto, type Source } from "../src/source.ts";
import { parseSize, SyntheticWorkload } from "../src/synthetic.ts";

/** The two ways the primary captures. */
export type MemoryCase = "full" | "dirty";

const CASES: readonly MemoryCase[] = ["full", "dirty"];
const PAGE = 4096;
const CHUNK = 1 << 20;

/** Fields of /proc/self/status, in bytes. */
interface ProcMemory {
  /** VmRSS */
  rss: number;
  /** VmHWM: peak RSS since the process started or since `resetPeak`. */
  hwm: number;
  /** RssAnon: private memory (heap, wasm arena, array buffers). */
  anon: number;
  /** RssFile + RssShmem: mapped files and shared memory. */
  mapped: number;
}

function procMemory(): ProcMemory {
  const text = Deno.readTextFileSync("/proc/self/status");
  const kb = (name: string): number => {
    const m = text.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"));
    if (!m) throw new Error(`/proc/self/status has no ${name}`);
    return Number(m[1]) * 1024;
  };
  return {
    rss: kb("VmRSS"),
    hwm: kb("VmHWM"),
    anon: kb("RssAnon"),
    mapped: kb("RssFile") + kb("RssShmem"),
  };
}

/** What one case measured (one JSON line of a child process). */
export interface MemoryResult {
  case: MemoryCase;
  level: Level;
  series: string;
  imageBytes: number;
  /** Checkpoints taken: the first (whole image) and epochs − 1 after it. */
  epochs: number;
  /** Largest and mean dirty bytes (4096 × pages changed) of the epochs after the first. */
  maxDirtyBytes: number;
  meanDirtyBytes: number;
  /** RSS when the process had loaded its code and nothing of the image existed. */
  baselineRssBytes: number;
  /** VmHWM − baseline RSS: peak growth, all of it (private and mapped). */
  peakRssGrowthBytes: number;
  /** Peak growth less the source's mapped file (resident at the end): what the primary adds on the host. */
  peakPrivateGrowthBytes: number;
  /** After the last checkpoint, RSS − baseline. */
  endRssGrowthBytes: number;
  /** After the last checkpoint, RssAnon − baseline: private memory. */
  endPrivateGrowthBytes: number;
  /** After the last checkpoint, (RssFile + RssShmem) − baseline: the source's mapping, mostly. */
  endMappedGrowthBytes: number;
  /** Private growth after each checkpoint. */
  privateGrowthPerEpoch: number[];
  /** The primary's retained log at the end (frames of the epochs it keeps). */
  retainedLogBytes: number;
  /** What the encoder counts as its model (committed copy, hashes, content index). */
  modelBytes: number;
  /** The encoder's capture buffers. */
  captureBytes: number;
}

/** Copies `from` into `to` 1 MiB at a time (a guest writing its RAM). */
function copyFile(from: string, to: string, chunk: Uint8Array): void {
  using src = Deno.openSync(from, { read: true });
  using dst = Deno.openSync(to, { write: true, create: true });
  for (;;) {
    const n = src.readSync(chunk);
    if (n === null) break;
    let off = 0;
    while (off < n) off += dst.writeSync(chunk.subarray(off, n));
  }
}

function readFull(f: Deno.FsFile, into: Uint8Array, path: string): void {
  let off = 0;
  while (off < into.length) {
    const n = f.readSync(into.subarray(off));
    if (n === null) throw new Error(`${path}: ended early`);
    off += n;
  }
}

/**
 * A source with a dirty log over a series: capture k writes and reports the
 * pages of image k that differ from image k − 1, read from the files in 1 MiB
 * chunks (the images themselves are never held whole).
 */
class DirtyLogSeriesSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  #next = 0;
  #a = new Uint8Array(CHUNK);
  #b = new Uint8Array(CHUNK);
  #dirty: Uint32Array;
  constructor(readonly series: Series) {
    this.name = `dirty-log:${series.dir}`;
    this.images = [{ id: "image", size: series.meta.size }];
    this.#dirty = new Uint32Array(
      Math.ceil(Math.ceil(series.meta.size / PAGE) / 32),
    );
  }

  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    const t0 = performance.now();
    const last = this.series.meta.epochs - 1;
    const k = Math.min(this.#next++, last);
    if (k === 0) {
      await this.series.readImage(k, into[0]);
      return { pauseMs: performance.now() - t0 };
    }
    this.#dirty.fill(0);
    const size = this.series.meta.size;
    const prevPath = this.series.imagePath(k - 1);
    const curPath = this.series.imagePath(k);
    using prev = Deno.openSync(prevPath, { read: true });
    using cur = Deno.openSync(curPath, { read: true });
    const a32 = new Uint32Array(this.#a.buffer);
    const b32 = new Uint32Array(this.#b.buffer);
    for (let off = 0; off < size; off += CHUNK) {
      const n = Math.min(CHUNK, size - off);
      readFull(prev, this.#a.subarray(0, n), prevPath);
      readFull(cur, this.#b.subarray(0, n), curPath);
      for (let p = 0; p * PAGE < n; p++) {
        const end = Math.min((p + 1) * PAGE, n);
        let differs = false;
        if (end - p * PAGE === PAGE) {
          for (let w = p * 1024, e = w + 1024; w < e; w++) {
            if (a32[w] !== b32[w]) {
              differs = true;
              break;
            }
          }
        } else {
          for (let i = p * PAGE; i < end; i++) {
            if (this.#a[i] !== this.#b[i]) {
              differs = true;
              break;
            }
          }
        }
        if (!differs) continue;
        const page = (off >>> 12) + p;
        this.#dirty[page >>> 5] |= 1 << (page & 31);
        into[0].set(this.#b.subarray(p * PAGE, end), off + p * PAGE);
      }
    }
    return { pauseMs: performance.now() - t0, dirtyPages: [this.#dirty] };
  }

  async close(): Promise<void> {}
}

/** The measured process: one case, one level. Prints one JSON line. */
async function child(
  kase: MemoryCase,
  level: Level,
  seriesDir: string,
  epochs: number,
  shmDir: string,
): Promise<void> {
  // Baseline: code loaded, nothing of the image allocated, peak reset.
  const base = procMemory();
  Deno.writeTextFileSync("/proc/self/clear_refs", "5");
  const series = await openSeries(seriesDir);
  epochs = Math.min(epochs, series.meta.epochs);
  const size = series.meta.size;
  const chunk = new Uint8Array(CHUNK);
  const ram = `${shmDir}/guest-ram`;
  let source: Source;
  if (kase === "full") {
    copyFile(series.imagePath(0), ram, chunk);
    source = await FileSource.open(ram, "image", () => {});
  } else {
    source = new DirtyLogSeriesSource(series);
  }
  const primary = new Primary(source, {
    to: [],
    ack: { who: { kind: "none" }, level: AckLevel.applied },
    level,
    intervalMs: null,
    note: () => {},
  });
  const dirty: number[] = [];
  const privateGrowth: number[] = [];
  for (let k = 0; k < epochs; k++) {
    if (kase === "full" && k > 0) {
      copyFile(
        series.imagePath(Math.min(k, series.meta.epochs - 1)),
        ram,
        chunk,
      );
    }
    const r = await primary.checkpoint();
    if (k > 0) dirty.push(r.dirtyBytes);
    privateGrowth.push(procMemory().anon - base.anon);
  }
  const end = procMemory();
  const mappedGrowth = end.mapped - base.mapped;
  const result: MemoryResult = {
    case: kase,
    level,
    series: series.meta.name,
    imageBytes: size,
    epochs,
    maxDirtyBytes: Math.max(0, ...dirty),
    meanDirtyBytes: dirty.reduce((a, b) => a + b, 0) /
      Math.max(1, dirty.length),
    baselineRssBytes: base.rss,
    peakRssGrowthBytes: end.hwm - base.rss,
    peakPrivateGrowthBytes: end.hwm - base.rss - Math.max(0, mappedGrowth),
    endRssGrowthBytes: end.rss - base.rss,
    endPrivateGrowthBytes: end.anon - base.anon,
    endMappedGrowthBytes: mappedGrowth,
    privateGrowthPerEpoch: privateGrowth,
    retainedLogBytes: primary.retained.bytes,
    modelBytes: primary.encoder.modelBytes,
    captureBytes: primary.encoder.captureBuffers.reduce(
      (n, b) => n + b.byteLength,
      0,
    ),
  };
  await primary.stop();
  console.log(JSON.stringify(result));
}

/** Options of {@linkcode measureMemory}. */
export interface MemoryOptions {
  /** A recorded series; absent: a synthetic one of `size` bytes. */
  series?: string;
  /** Checkpoints per case (the first is the whole image). Default 8. */
  epochs?: number;
  levels?: readonly Level[];
  cases?: readonly MemoryCase[];
  /** Image size of the synthetic series. Default 256 MiB. */
  size?: number;
  log?: (line: string) => void;
}

async function syntheticSeries(
  dir: string,
  size: number,
  epochs: number,
): Promise<string> {
  const w = new SyntheticWorkload({ seed: 1, images: 1, size });
  const out = await SeriesWriter.create(dir, {
    name: `synthetic-${formatBytes(size).replace(" ", "")}`,
    source: `synthetic:images=1,size=${size},seed=1`,
    pageSize: PAGE,
    size,
    intervalMs: 0,
    notes: "bench/memory.ts: the seeded synthetic workload, one step per image",
  });
  for (let k = 0; k < epochs; k++) {
    if (k > 0) w.step();
    await out.append(w.images[0]);
  }
  await out.close();
  return dir;
}

async function shmTempDir(): Promise<string> {
  try {
    return await Deno.makeTempDir({ dir: "/dev/shm", prefix: "pw-mem-" });
  } catch {
    return await Deno.makeTempDir({ prefix: "pw-mem-" });
  }
}

/**
 * Runs every case and level, each in a fresh `deno run -A` process of this
 * file, and returns what they measured.
 */
export async function measureMemory(
  options: MemoryOptions = {},
): Promise<MemoryResult[]> {
  const epochs = options.epochs ?? 8;
  const log = options.log ?? ((l) => console.error(l));
  let tmp: string | null = null;
  const results: MemoryResult[] = [];
  try {
    let dir = options.series;
    if (dir === undefined) {
      tmp = await Deno.makeTempDir({ prefix: "pw-mem-series-" });
      const size = options.size ?? 256 << 20;
      log(`  memory: writing a synthetic series of ${epochs} images ...`);
      dir = await syntheticSeries(tmp, size, epochs);
    }
    for (const kase of options.cases ?? CASES) {
      for (const level of options.levels ?? (["fast", "max"] as const)) {
        log(`  memory: ${dir} ${kase} ${level} ...`);
        const shm = await shmTempDir();
        try {
          const out = await new Deno.Command(Deno.execPath(), {
            args: [
              "run",
              "-A",
              new URL(import.meta.url).pathname,
              "--child",
              kase,
              "--level",
              level,
              "--series",
              dir,
              "--epochs",
              String(epochs),
              "--shm",
              shm,
            ],
            stdout: "piped",
            stderr: "inherit",
          }).output();
          if (!out.success) {
            throw new Error(
              `bench/memory.ts ${kase} ${level} failed on ${dir}`,
            );
          }
          const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
          results.push(JSON.parse(lines.at(-1)!));
        } finally {
          await Deno.remove(shm, { recursive: true });
        }
      }
    }
  } finally {
    if (tmp) await Deno.remove(tmp, { recursive: true });
  }
  return results;
}

/** The Markdown table of {@linkcode measureMemory}'s results. */
export function memoryTable(results: MemoryResult[]): string {
  const mib = (n: number) => (n / 2 ** 20).toFixed(1);
  const x = (n: number, d: number) => (n / d).toFixed(2);
  const lines = [
    "| series | capture | level | image MiB | dirty MiB/epoch, max (mean) | peak RSS growth ÷ image | peak private ÷ image | peak private ÷ (image + max dirty) | private after the last: MiB (÷ image) | of which retained log MiB | model ÷ image | mapped growth MiB |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of results) {
    const image = r.imageBytes;
    lines.push(
      `| ${r.series} | ${
        r.case === "full" ? "full (file:)" : "dirty-hinted"
      } | ${r.level} | ${mib(image)} | ${mib(r.maxDirtyBytes)} (${
        mib(r.meanDirtyBytes)
      }) | ${x(r.peakRssGrowthBytes, image)} | ${
        x(r.peakPrivateGrowthBytes, image)
      } | ${x(r.peakPrivateGrowthBytes, image + r.maxDirtyBytes)} | ${
        mib(r.endPrivateGrowthBytes)
      } (${x(r.endPrivateGrowthBytes, image)}) | ${mib(r.retainedLogBytes)} | ${
        x(r.modelBytes, image)
      } | ${mib(Math.max(0, r.endMappedGrowthBytes))} |`,
    );
  }
  const epochs = results[0]?.epochs ?? 0;
  lines.push(
    "",
    `Each row is a fresh process running a real Primary (no peers, --ack none, default 256 MiB retained-log bound) for ${epochs} checkpoints, the first of the whole image. ` +
      "Growth is counted from the process's RSS once its code was loaded and before anything of the image existed (/proc/self/status). " +
      "Peak RSS growth: VmHWM − baseline, everything, including mapped pages: the `file:` source maps the guest's RAM file (shared pages that exist for the guest anyway) and the process maps libraries (libzstd) on first use. " +
      "Peak private: peak RSS growth less the mapped growth at the end (last column). Private after the last: RssAnon growth after the last checkpoint. " +
      "Private memory includes the encoder's capture buffer (1 × image), its model (committed copy, hashes, content index) and the retained log, which keeps growing with the epochs up to its bound.",
  );
  return lines.join("\n");
}

const USAGE =
  `usage: deno run -A bench/memory.ts [--series DIR] [--epochs N] [--levels fast,max]
                                  [--cases full,dirty] [--size SIZE] [--json]

Resident memory of a real Primary as it runs, in a fresh process per case and
level: full capture (the file: source on a file in /dev/shm) and dirty-hinted
capture (a source with a dirty log). Images from the series DIR, or without
--series from the synthetic workload (--size, default 256M). --epochs
checkpoints per case (default 8). Prints a Markdown table; --json also prints
each case as a JSON line.`;

if (import.meta.main) {
  await runMain(USAGE, async () => {
    const args = parseArgs(
      Deno.args,
      ["series", "epochs", "levels", "cases", "size", "child", "level", "shm"],
      ["json", "help"],
    );
    const opt = (name: string) => args.options.get(name)?.at(-1);
    if (args.options.has("help")) {
      console.log(USAGE);
      return;
    }
    const epochs = intOption(opt("epochs") ?? "8", "epochs", 1);
    const kase = opt("child");
    if (kase !== undefined) {
      if (kase !== "full" && kase !== "dirty") {
        throw new UsageError(`--child must be full or dirty, got "${kase}"`);
      }
      await child(
        kase,
        parseLevel(opt("level") ?? "fast"),
        opt("series")!,
        epochs,
        opt("shm")!,
      );
      return;
    }
    const cases = (opt("cases") ?? "full,dirty").split(",").map((c) => {
      if (c !== "full" && c !== "dirty") {
        throw new UsageError(`--cases: expected full and/or dirty, got "${c}"`);
      }
      return c as MemoryCase;
    });
    const levels = (opt("levels") ?? "fast,max").split(",").map(parseLevel);
    const series = opt("series");
    const results = await measureMemory({
      series,
      epochs,
      levels,
      cases,
      size: opt("size") === undefined
        ? undefined
        : parseSize(opt("size")!, "--size"),
    });
    if (args.options.has("json")) {
      for (const r of results) console.log(JSON.stringify(r));
    }
    console.log(memoryTable(results));
  });
}
