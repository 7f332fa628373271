/**
 * `record`: capture an image series from a live process or a file.
 *
 * ```sh
 * deno run -A tools/record.ts --pid 1234 --epochs 30 --interval-ms 200 \
 *   --out /work/data/series/redis --name redis
 * ```
 *
 * Run with `--help` for every option.
 *
 * @module
 */

import { FileCapture } from "../src/record/file_capture.ts";
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

const HELP =
  `record — capture an image series (meta.json + 0000.img, 0001.img, ...)

Usage:
  deno run -A tools/record.ts (--pid PID | --file PATH) --epochs N --interval-ms MS
                              --out DIR [--name NAME] [--notes TEXT]
                              [--buffer-mb MB] [--force]

Sources (exactly one):
  --pid PID          a live process: its writable mappings (heap, stack, anonymous
                     and file-backed; not [vvar]/[vsyscall]/[vdso]) read through
                     /proc/PID/mem. The process is paused with SIGSTOP for each
                     capture and always resumed with SIGCONT. The layout (which
                     address ranges form the image) is fixed by a first capture
                     that is not recorded, and written to DIR/layout.json; ranges that later vanish or
                     shrink read as zeros (reported), memory mapped later is not
                     captured (reported). Needs root or ptrace rights over PID,
                     and Deno's --allow-all (-A): Deno treats /proc/PID files
                     as privileged.
  --file PATH        a regular file's full contents (not paused). The size is
                     fixed by a first, unrecorded read; a file that shrinks is an error,
                     growth beyond it is ignored with a warning.

Options:
  --epochs N         number of images to capture, N >= 1 (required)
  --interval-ms MS   time between capture starts in ms, MS >= 0 (required); a
                     capture that falls behind starts at once and the achieved
                     intervals are recorded in meta.json "notes"
  --out DIR          output directory, created if missing (required); must not
                     already hold a series (meta.json or NNNN.img) unless --force
  --name NAME        series name (default: the last component of DIR)
  --notes TEXT       free text prepended to meta.json "notes" (program, version,
                     load command)
  --buffer-mb MB     memory for captured images not yet on disk (default 4096;
                     at least one image). Images are written only when this
                     buffer is full or at the end, so disk speed stretches the
                     intervals only once it is full: for short intervals give
                     it epochs x image size
  --force            replace a series already in DIR (removes its meta.json,
                     layout.json and NNNN.img files first)
  -h, --help         show this help

Progress goes to stderr, one line per epoch: epoch, image bytes, capture ms (the
pause time for --pid, the read time for --file). On SIGINT/SIGTERM or when the
source fails (e.g. "process PID exited") the images captured so far are kept as
a complete, shorter series and the exit status is non-zero.

Exit status: 0 success, 1 capture failure, 2 bad arguments, 130 interrupted.
`;

class UsageError extends Error {}

interface Args {
  pid?: number;
  file?: string;
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

const STRING_OPTS = new Set([
  "pid",
  "file",
  "epochs",
  "interval-ms",
  "out",
  "name",
  "notes",
  "buffer-mb",
]);

function parse(argv: string[]): Args | "help" {
  const values: Record<string, string | undefined> & {
    force?: boolean;
    help?: boolean;
  } = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "-h" || a === "--help") {
      values.help = true;
      continue;
    }
    if (a === "--force") {
      values.force = true;
      continue;
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/s.exec(a);
    if (m === null || !STRING_OPTS.has(m[1])) {
      throw new UsageError(
        m === null
          ? `unexpected argument ${JSON.stringify(a)}`
          : `unknown option --${m[1]}`,
      );
    }
    let v = m[2];
    if (v === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`--${m[1]} needs a value`);
      v = argv[++i];
    }
    if (values[m[1]] !== undefined) {
      throw new UsageError(`--${m[1]} given more than once`);
    }
    values[m[1]] = v;
  }
  if (values.help) return "help";
  if ((values.pid === undefined) === (values.file === undefined)) {
    throw new UsageError("expected exactly one of --pid PID or --file PATH");
  }
  const out = values.out;
  if (out === undefined || out === "") throw new UsageError("missing --out");
  const base = out.replace(/\/+$/, "").split("/").pop() || "series";
  return {
    pid: values.pid === undefined ? undefined : intArg("pid", values.pid, 1),
    file: values.file,
    epochs: intArg("epochs", values.epochs, 1),
    intervalMs: intArg("interval-ms", values["interval-ms"], 0),
    out,
    name: values.name ?? base,
    notes: values.notes ?? "",
    force: values.force ?? false,
    bufferMb: values["buffer-mb"] === undefined
      ? 4096
      : intArg("buffer-mb", values["buffer-mb"], 0),
  };
}

/** Files of a series in `dir` (meta.json, layout.json, NNNN.img). */
async function seriesFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (
        e.isFile &&
        (/^\d{4,}\.img$/.test(e.name) || e.name === "meta.json" ||
          e.name === "layout.json")
      ) names.push(e.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return names;
}

async function describeProcess(pid: number): Promise<string> {
  try {
    const cmd = (await Deno.readTextFile(`/proc/${pid}/cmdline`))
      .split("\0").filter((s) => s !== "").join(" ");
    const exe = await Deno.readLink(`/proc/${pid}/exe`).catch(() => "?");
    return `${exe} (${cmd})`;
  } catch {
    return "?";
  }
}

interface Source {
  label: string;
  capture(into?: Uint8Array): Promise<{ image: Uint8Array; captureMs: number }>;
  estimate(): Promise<number>;
  layout?: () => readonly LayoutRange[] | undefined;
}

async function run(args: Args): Promise<number> {
  if (await isSeriesDir(args.out) || (await seriesFiles(args.out)).length) {
    if (!args.force) {
      throw new UsageError(
        `${args.out} already holds a series, expected an empty or new directory (use --force to replace it)`,
      );
    }
    for (const n of await seriesFiles(args.out)) {
      await Deno.remove(`${args.out}/${n}`);
    }
  }

  let source: Source;
  let sourceName: string;
  let what: string;
  if (args.pid !== undefined) {
    const cap = await ProcMemoryCapture.open(args.pid);
    what = await describeProcess(args.pid);
    sourceName = `pid:${args.pid}`;
    source = {
      label: `process ${args.pid}`,
      capture: (into) => cap.capture(into),
      estimate: () => cap.writableBytes(),
      layout: () => cap.layout,
    };
  } else {
    const cap = await FileCapture.open(args.file!);
    what = args.file!;
    sourceName = `file:${args.file}`;
    source = {
      label: args.file!,
      capture: (into) => cap.capture(into),
      estimate: async () => (await Deno.stat(args.file!)).size,
    };
  }

  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    console.error("record: interrupted, finishing the current epoch");
  };
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);

  let writer: SeriesWriter | undefined;
  // Captured images wait in memory (up to --buffer-mb) and are written only
  // when the buffer is full or the recording is over: the disk is often
  // slower than the capture, and writing while capturing slows both.
  const budget = args.bufferMb * 1024 * 1024;
  const free: Uint8Array[] = []; // buffers ready for a capture (pre-touched)
  const held: Uint8Array[] = []; // captured, not yet written, oldest first
  const writeOldest = async () => {
    const img = held.shift()!;
    await writer!.append(img);
    free.push(img);
  };
  // Buffers are allocated and touched up front (sized from the memory mapped
  // now, plus 25%), so page faults are paid neither during a pause nor between
  // captures. Then a first, unrecorded capture fixes the layout (--pid) or the
  // size (--file), and recording starts right after it.
  const estimate = Math.ceil((await source.estimate()) * 1.25 / 4096) * 4096;
  const nBuf = Math.min(
    args.epochs,
    Math.max(1, Math.floor(budget / Math.max(estimate, 1))),
  );
  for (let i = 0; i < nBuf; i++) free.push(new Uint8Array(estimate).fill(1));
  let size: number;
  try {
    size = (await source.capture(free[0])).image.length;
  } catch (e) {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
    throw e;
  }
  if (size > estimate) {
    console.error(
      `record: image size ${size} exceeds the ${estimate} bytes prepared; allocating per capture`,
    );
    free.length = 0;
  }
  console.error(
    `record: image size ${size} bytes${
      source.layout ? ` (${source.layout()!.length} writable ranges)` : ""
    }; ${free.length} buffers prepared`,
  );
  const starts: number[] = [];
  const captureMs: number[] = [];
  let failure: Error | undefined;
  const t0 = performance.now();
  try {
    for (let epoch = 0; epoch < args.epochs && !interrupted; epoch++) {
      while (held.length > 0 && (held.length + 1) * size > budget) {
        await writeOldest();
      }
      const due = t0 + epoch * args.intervalMs;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      if (interrupted) break;
      starts.push(performance.now());
      let r;
      try {
        r = await source.capture(free.pop());
      } catch (e) {
        failure = e as Error;
        break;
      }
      captureMs.push(r.captureMs);
      if (writer === undefined) {
        writer = await SeriesWriter.create(args.out, {
          name: args.name,
          source: sourceName,
          pageSize: SERIES_PAGE_SIZE,
          size: r.image.length,
          intervalMs: args.intervalMs,
          notes: "",
        });
        const layout = source.layout?.();
        if (layout !== undefined) {
          await Deno.writeTextFile(
            `${args.out}/layout.json`,
            JSON.stringify(
              layout.map((l) => ({
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
      const img = r.image;
      held.push(img);
      if (
        free.length === 0 && epoch + 1 < args.epochs &&
        (held.length + 1) * size <= budget
      ) {
        // Touch the next buffer now, so its page faults are not paid while
        // the source is paused.
        free.push(new Uint8Array(img.length).fill(1));
      }
      const late = starts[epoch] - due;
      console.error(
        `epoch ${epoch + 1}/${args.epochs}  ${
          imageFileName(epoch)
        }  ${img.length} bytes  capture ${r.captureMs.toFixed(1)} ms${
          late > 5 && args.intervalMs > 0
            ? `  (started ${late.toFixed(0)} ms late)`
            : ""
        }  (${held.length} in memory)`,
      );
    }
    if (held.length > 0) {
      console.error(`record: writing ${held.length} images to ${args.out}`);
    }
    while (held.length > 0) await writeOldest();
  } catch (e) {
    failure ??= e as Error;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
  }

  if (writer === undefined) {
    throw failure ?? new Error("interrupted before the first capture");
  }
  const gaps = starts.slice(1).map((s, i) => s - starts[i]);
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  const stats = [
    `Recorded by tools/record.ts from ${source.label}: ${what}.`,
    `Epochs ${writer.epochs} of ${args.epochs} requested, interval ${args.intervalMs} ms requested` +
    (gaps.length
      ? `, achieved mean ${mean(gaps).toFixed(0)} ms, max ${
        Math.max(...gaps).toFixed(0)
      } ms`
      : "") +
    `; capture (pause) mean ${mean(captureMs).toFixed(1)} ms, max ${
      Math.max(...captureMs).toFixed(1)
    } ms.`,
  ];
  if (source.layout?.()) {
    stats.push(
      `Image = concatenation of ${
        source.layout()!.length
      } writable ranges of the first capture, see layout.json.`,
    );
  }
  writer.setNotes([args.notes, ...stats].filter((s) => s !== "").join(" "));
  const meta: SeriesMeta = await writer.close();
  console.error(
    `record: wrote ${meta.epochs} images of ${meta.size} bytes to ${args.out}`,
  );
  if (failure !== undefined) {
    console.error(
      `record: error: ${failure.message}; kept the ${meta.epochs} images captured before it`,
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
