/**
 * `record`: capture a recording (image series) from any source: a live QEMU
 * guest, a live process, files, or the synthetic workload.
 *
 * ```sh
 * deno run -A tools/record.ts --source qemu:/run/vm.qmp?mem=/dev/shm/vm \
 *   --epochs 30 --interval-ms 200 --out /work/data/series/vm
 * ```
 *
 * Run with `--help` for every option.
 *
 * @module
 */

import { parseArgs, UsageError } from "../src/_cli.ts";
import type { ImageSpec } from "../src/encoder.ts";
import { openSources } from "../src/open_source.ts";
import {
  type LayoutRange,
  ProcMemoryCapture,
} from "../src/record/proc_memory.ts";
import {
  imageFileName,
  isSeriesDir,
  SERIES_PAGE_SIZE,
  type SeriesMeta,
  SeriesWriter,
} from "../src/series.ts";
import type { CaptureResult, Source } from "../src/source.ts";

const HELP =
  `record — capture a recording: one image series (meta.json + 0000.img, 0001.img, ...)
per image of the source

Usage:
  deno run -A tools/record.ts (--source SPEC... | --pid PID | --file PATH)
                              --epochs N --interval-ms MS --out DIR
                              [--name NAME] [--notes TEXT] [--buffer-mb MB] [--force]

Sources (--source may be repeated: the sources are captured together, one
epoch across all of them, as the primary does):
  --source SPEC      any primary source:
                       qemu:QMP_SOCKET?mem=PATH   a live QEMU guest's RAM (paused
                                                  with QMP stop/cont per capture)
                       proc:PID[?size=SIZE]       a live process's whole, changing
                                                  layout: two images, the arena
                                                  proc-PID and proc-PID.layout
                       file:PATH                  a file or /dev/shm file
                       series:DIR                 another recording, re-recorded
                       synthetic:SPEC             the seeded synthetic workload
  --pid PID          a live process as one image of fixed layout: its writable
                     mappings (heap, stack, anonymous and file-backed; not
                     [vvar]/[vsyscall]/[vdso]) concatenated, read through
                     /proc/PID/mem while paused with SIGSTOP (always resumed
                     with SIGCONT). The layout is fixed by a first capture that
                     is not recorded, and written to DIR/layout.json; ranges
                     that later vanish or shrink read as zeros (reported),
                     memory mapped later is not captured (reported). This is
                     what the codec benches replay; use --source proc:PID to
                     keep every change of layout.
  --file PATH        the same as --source file:PATH
  Processes need root or ptrace rights over PID, and Deno's --allow-all (-A):
  Deno treats /proc/PID files as privileged.

Output:
  A source with one image writes the series into DIR. A source with several
  images writes one series per image into DIR/IMAGE_ID/; series:DIR replays
  either form.

Options:
  --epochs N         number of epochs to capture, N >= 1 (required)
  --interval-ms MS   time between capture starts in ms, MS >= 0 (required); a
                     capture that falls behind starts at once and the achieved
                     intervals are recorded in meta.json "notes"
  --out DIR          output directory, created if missing (required); must not
                     already hold a recording unless --force
  --name NAME        series name of a one-image recording (default: the last
                     component of DIR); with several images each series is
                     named after its image
  --notes TEXT       free text prepended to meta.json "notes" (program, version,
                     load command)
  --buffer-mb MB     memory for captured epochs not yet on disk (default 4096;
                     at least one epoch). Epochs are written only when this
                     buffer is full or at the end, so disk speed stretches the
                     intervals only once it is full: for short intervals give
                     it epochs x image size
  --force            replace a recording already in DIR (removes its meta.json,
                     layout.json and NNNN.img files first)
  -h, --help         show this help

Progress goes to stderr, one line per epoch: epoch, bytes, capture ms (the time
the source was paused, or read if it is not paused). On SIGINT/SIGTERM or when
the source fails (e.g. "process PID exited") the epochs captured so far are kept
as a complete, shorter recording and the exit status is non-zero.

Exit status: 0 success, 1 capture failure, 2 bad arguments, 130 interrupted.
`;

interface Args {
  sources: string[];
  pid?: number;
  epochs: number;
  intervalMs: number;
  out: string;
  name: string;
  notes: string;
  force: boolean;
  bufferMb: number;
}

function intArg(name: string, v: string | undefined, min: number): number {
  if (v === undefined) throw new UsageError(`missing --${name}`);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v)) || +v < min) {
    throw new UsageError(
      `--${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`,
    );
  }
  return Number(v);
}

function parse(argv: string[]): Args | "help" {
  if (argv.includes("-h") || argv.includes("--help")) return "help";
  const { positional, options } = parseArgs(
    argv,
    [
      "source",
      "pid",
      "file",
      "epochs",
      "interval-ms",
      "out",
      "name",
      "notes",
      "buffer-mb",
    ],
    ["force"],
  );
  if (positional.length) {
    throw new UsageError(
      `unexpected argument ${JSON.stringify(positional[0])}`,
    );
  }
  const one = (name: string): string | undefined => {
    const v = options.get(name);
    if (v && v.length > 1) {
      throw new UsageError(`--${name} given more than once`);
    }
    return v?.[0];
  };
  const sources = [
    ...(options.get("source") ?? []),
    ...(options.get("file") ?? []).map((p) => `file:${p}`),
  ];
  const pid = one("pid");
  if ((pid === undefined) === (sources.length === 0)) {
    throw new UsageError(
      "expected --source SPEC (or --file PATH), or exactly one --pid PID",
    );
  }
  const out = one("out");
  if (out === undefined || out === "") throw new UsageError("missing --out");
  const base = out.replace(/\/+$/, "").split("/").pop() || "series";
  const bufferMb = one("buffer-mb");
  return {
    sources,
    pid: pid === undefined ? undefined : intArg("pid", pid, 1),
    epochs: intArg("epochs", one("epochs"), 1),
    intervalMs: intArg("interval-ms", one("interval-ms"), 0),
    out,
    name: one("name") ?? base,
    notes: one("notes") ?? "",
    force: options.has("force"),
    bufferMb: bufferMb === undefined ? 4096 : intArg("buffer-mb", bufferMb, 0),
  };
}

const SERIES_FILE = /^(\d{4,}\.img|meta\.json|layout\.json)$/;

/**
 * Paths of the recording files in `dir`: its own series files, and those of
 * its subdirectories (the series of a several-image recording).
 */
async function recordingFiles(dir: string): Promise<string[]> {
  const paths: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && SERIES_FILE.test(e.name)) paths.push(`${dir}/${e.name}`);
      if (e.isDirectory && await isSeriesDir(`${dir}/${e.name}`)) {
        for await (const f of Deno.readDir(`${dir}/${e.name}`)) {
          if (f.isFile && SERIES_FILE.test(f.name)) {
            paths.push(`${dir}/${e.name}/${f.name}`);
          }
        }
      }
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return paths;
}

async function describeProcess(pid: number): Promise<string> {
  try {
    const cmd = (await Deno.readTextFile(`/proc/${pid}/cmdline`))
      .split("\0").filter((s) => s !== "").join(" ");
    const exe = await Deno.readLink(`/proc/${pid}/exe`).catch(() => "?");
    return `process ${pid}: ${exe} (${cmd})`;
  } catch {
    return `process ${pid}`;
  }
}

/**
 * `--pid`: a process as one image of fixed layout ({@linkcode ProcMemoryCapture}),
 * behind the `Source` interface. Opening makes the first, unrecorded capture
 * that fixes the layout and so the image size.
 */
class FixedLayoutProcess implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  private constructor(
    readonly capturer: ProcMemoryCapture,
    id: string,
    size: number,
  ) {
    this.name = `pid:${capturer.pid}`;
    this.images = [{ id, size }];
  }

  static async open(pid: number, id: string): Promise<FixedLayoutProcess> {
    const capturer = await ProcMemoryCapture.open(pid);
    const size = (await capturer.capture()).image.length;
    return new FixedLayoutProcess(capturer, id, size);
  }

  get layout(): readonly LayoutRange[] {
    return this.capturer.layout!;
  }

  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    const r = await this.capturer.capture(into[0]);
    return { pauseMs: r.captureMs };
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Where image `id` of a recording goes: DIR itself, or DIR/ID with several. */
function seriesDirOf(out: string, images: ImageSpec[], id: string): string {
  if (images.length === 1) return out;
  if (id === "." || id === ".." || id.includes("/")) {
    throw new Error(
      `image id "${id}" cannot name a directory; expected a plain file name`,
    );
  }
  return `${out.replace(/\/+$/, "")}/${id}`;
}

async function run(args: Args): Promise<number> {
  const existing = await recordingFiles(args.out);
  if (existing.length > 0) {
    if (!args.force) {
      throw new UsageError(
        `${args.out} already holds a recording, expected an empty or new directory (use --force to replace it)`,
      );
    }
    for (const p of existing) await Deno.remove(p);
    for await (const e of Deno.readDir(args.out)) {
      if (e.isDirectory) {
        await Deno.remove(`${args.out}/${e.name}`).catch(() => {});
      }
    }
  }

  const source: Source = args.pid !== undefined
    ? await FixedLayoutProcess.open(args.pid, args.name)
    : await openSources(args.sources);
  const what = args.pid !== undefined
    ? await describeProcess(args.pid)
    : source.name;
  const images = source.images;
  const epochBytes = images.reduce((n, s) => n + s.size, 0);

  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    console.error("record: interrupted, finishing the current epoch");
  };
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);

  // The source captures into the same buffers every time (a source with a
  // dirty log writes only what changed); each epoch is then copied out to
  // wait for the disk. Captured epochs wait in memory (up to --buffer-mb)
  // and are written only when the buffer is full or the recording is over:
  // the disk is often slower than the capture, and writing while capturing
  // slows both. Buffers are allocated and touched up front, so page faults
  // are paid neither during a pause nor between captures.
  const live = images.map((s) => new Uint8Array(s.size));
  const touched = () => images.map((s) => new Uint8Array(s.size).fill(1));
  const budget = args.bufferMb * 1024 * 1024;
  const free: Uint8Array[][] = [];
  const held: Uint8Array[][] = []; // captured, not yet written, oldest first
  const nBuf = Math.min(
    args.epochs,
    Math.max(1, Math.floor(budget / Math.max(epochBytes, 1))),
  );
  for (let i = 0; i < nBuf; i++) free.push(touched());
  console.error(
    `record: ${what}: ${images.length} image${
      images.length === 1 ? "" : "s"
    } (${
      images.map((s) => `${s.id} ${s.size} bytes`).join(", ")
    }); ${nBuf} epoch buffers prepared`,
  );

  const writers: SeriesWriter[] = [];
  const writeOldest = async () => {
    const slot = held.shift()!;
    await Promise.all(writers.map((w, i) => w.append(slot[i])));
    free.push(slot);
  };
  const starts: number[] = [];
  const captureMs: number[] = [];
  let failure: Error | undefined;
  const t0 = performance.now();
  try {
    for (let epoch = 0; epoch < args.epochs && !interrupted; epoch++) {
      while (held.length > 0 && (held.length + 1) * epochBytes > budget) {
        await writeOldest();
      }
      const due = t0 + epoch * args.intervalMs;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      if (interrupted) break;
      starts.push(performance.now());
      let r: CaptureResult;
      try {
        r = await source.capture(live);
      } catch (e) {
        failure = e as Error;
        break;
      }
      captureMs.push(r.pauseMs);
      const slot = free.pop() ?? touched();
      for (let i = 0; i < live.length; i++) slot[i].set(live[i]);
      if (writers.length === 0) {
        for (const s of images) {
          writers.push(
            await SeriesWriter.create(seriesDirOf(args.out, images, s.id), {
              name: images.length === 1 ? args.name : s.id,
              source: images.length === 1
                ? source.name
                : `${source.name} image ${s.id}`,
              pageSize: SERIES_PAGE_SIZE,
              size: s.size,
              intervalMs: args.intervalMs,
              notes: "",
            }),
          );
        }
        if (source instanceof FixedLayoutProcess) {
          await Deno.writeTextFile(
            `${args.out}/layout.json`,
            JSON.stringify(
              source.layout.map((l) => ({
                start: "0x" + l.start.toString(16),
                end: "0x" + l.end.toString(16),
                perms: l.perms,
                path: l.path,
                imageOffset: l.imageOffset,
              })),
              null,
              1,
            ) + "\n",
          );
        }
      }
      held.push(slot);
      const late = starts[epoch] - due;
      console.error(
        `epoch ${epoch + 1}/${args.epochs}  ${
          imageFileName(epoch)
        }  ${epochBytes} bytes  capture ${r.pauseMs.toFixed(1)} ms${
          late > 5 && args.intervalMs > 0
            ? `  (started ${late.toFixed(0)} ms late)`
            : ""
        }  (${held.length} in memory)`,
      );
    }
    if (held.length > 0) {
      console.error(`record: writing ${held.length} epochs to ${args.out}`);
    }
    while (held.length > 0) await writeOldest();
  } catch (e) {
    failure ??= e as Error;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
    await source.close().catch(() => {});
  }

  if (writers.length === 0) {
    throw failure ?? new Error("interrupted before the first capture");
  }
  const gaps = starts.slice(1).map((s, i) => s - starts[i]);
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  const stats = [
    `Recorded by tools/record.ts from ${what}.`,
    `Epochs ${
      writers[0].epochs
    } of ${args.epochs} requested, interval ${args.intervalMs} ms requested` +
    (gaps.length
      ? `, achieved mean ${mean(gaps).toFixed(0)} ms, max ${
        Math.max(...gaps).toFixed(0)
      } ms`
      : "") +
    `; capture (pause) mean ${mean(captureMs).toFixed(1)} ms, max ${
      Math.max(...captureMs).toFixed(1)
    } ms.`,
  ];
  if (source instanceof FixedLayoutProcess) {
    stats.push(
      `Image = concatenation of ${source.layout.length} writable ranges of the first capture, see layout.json.`,
    );
  }
  let meta: SeriesMeta | undefined;
  for (const w of writers) {
    w.setNotes([args.notes, ...stats].filter((s) => s !== "").join(" "));
    meta = await w.close();
  }
  console.error(
    `record: wrote ${meta!.epochs} epochs of ${images.length} image${
      images.length === 1 ? "" : "s"
    } (${epochBytes} bytes each) to ${args.out}`,
  );
  if (failure !== undefined) {
    console.error(
      `record: error: ${failure.message}; kept the ${
        meta!.epochs
      } epochs captured before it`,
    );
    return 1;
  }
  if (interrupted) return 130;
  return 0;
}

if (import.meta.main) {
  let code: number;
  try {
    const args = parse(Deno.args);
    if (args === "help") {
      console.log(HELP);
      code = 0;
    } else {
      code = await run(args);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`record: ${e.message}\nRun with --help for usage.`);
      code = 2;
    } else {
      console.error(`record: error: ${(e as Error).message}`);
      code = 1;
    }
  }
  Deno.exit(code);
}
