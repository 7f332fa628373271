/**
 * Capture a live process's writable memory through `/proc/PID/mem`.
 *
 * The process is paused with SIGSTOP around each capture (and always resumed
 * with SIGCONT afterwards, even on error), so every image is consistent. The
 * layout — which address ranges make up the image — is fixed at the first
 * capture: the image is the concatenation of the writable mappings (heap,
 * stack, anonymous and file-backed; not `[vvar]`, `[vsyscall]`, `[vdso]`)
 * present then. At later captures a range that vanished or shrank reads as
 * zeros for its missing part, and each such event is counted and reported;
 * memory mapped after the first capture is not captured (also reported).
 *
 * Deno treats `/proc/PID/*` as privileged: a program using this module must
 * run with `--allow-all` (`-A`).
 *
 * @example Capture a process three times
 * ```ts
 * import { ProcMemoryCapture } from "./proc_memory.ts";
 * const cap = await ProcMemoryCapture.open(1234);
 * let buf: Uint8Array | undefined;
 * for (let i = 0; i < 3; i++) {
 *   const r = await cap.capture(buf);
 *   buf = r.image;
 *   console.log(r.image.length, r.captureMs);
 * }
 * ```
 *
 * @module
 */

import { type MapEntry, parseMaps, writableRanges } from "./_maps.ts";
import { ProcessHandle, readMemory } from "./_process.ts";

/** One range of the image layout. */
export interface LayoutRange {
  /** First process address of the range. */
  start: number;
  /** One past the last process address. */
  end: number;
  /** Permissions at the first capture, e.g. `rw-p`. */
  perms: string;
  /** Mapped file or pseudo name at the first capture; "" if anonymous. */
  path: string;
  /** Byte offset of the range inside the image. */
  imageOffset: number;
}

/** What one capture produced. */
export interface ProcCaptureResult {
  /** The image: exactly `size` bytes (a view of the buffer passed in). */
  image: Uint8Array;
  /** Time the process was paused, SIGSTOP to SIGCONT, in milliseconds. */
  captureMs: number;
  /** Layout ranges that vanished, shrank or became unreadable (zero-filled). */
  missingRanges: number;
  /** Bytes zero-filled because their range is missing. */
  missingBytes: number;
  /** Writable bytes mapped now but outside the layout (not captured). */
  uncapturedBytes: number;
}

/** Options of {@linkcode ProcMemoryCapture.open}. */
export interface ProcMemoryOptions {
  /** Called with each warning; defaults to writing it to stderr. */
  onWarning?: (message: string) => void;
  /** Longest wait for every thread to stop after SIGSTOP (default 5000). */
  stopTimeoutMs?: number;
}

/**
 * Captures a process's writable memory; see the module documentation.
 *
 * @example
 * ```ts
 * import { ProcMemoryCapture } from "./proc_memory.ts";
 * const cap = await ProcMemoryCapture.open(Deno.pid);
 * ```
 */
export class ProcMemoryCapture {
  readonly pid: number;
  #layout: LayoutRange[] | undefined;
  #size = 0;
  #warn: (message: string) => void;
  readonly #process: ProcessHandle;
  #lastUncaptured = 0;

  private constructor(pid: number, opts: ProcMemoryOptions) {
    this.pid = pid;
    this.#warn = opts.onWarning ?? ((m) => console.error(m));
    this.#process = new ProcessHandle(pid, opts.stopTimeoutMs ?? 5000);
  }

  /**
   * Prepare to capture process `pid`; fails with `process PID exited` if it
   * does not exist (or is a zombie).
   */
  static async open(
    pid: number,
    opts: ProcMemoryOptions = {},
  ): Promise<ProcMemoryCapture> {
    if (!Number.isSafeInteger(pid) || pid <= 0) {
      throw new RangeError(`pid must be a positive integer, got ${pid}`);
    }
    const cap = new ProcMemoryCapture(pid, opts);
    try {
      await cap.#process.state();
    } catch (e) {
      if ((e as Error).message === `process ${pid} exited`) {
        throw new Error(
          `process ${pid} does not exist (or has exited); expected a running process`,
        );
      }
      throw e;
    }
    return cap;
  }

  /**
   * Bytes of writable memory mapped now (read without pausing): an estimate
   * of the image size before the first capture fixes it.
   */
  async writableBytes(): Promise<number> {
    const maps = writableRanges(
      parseMaps(await this.#process.readProc("maps")),
    );
    return maps.reduce((n, m) => n + m.end - m.start, 0);
  }

  /** Layout fixed at the first capture (undefined before it). */
  get layout(): readonly LayoutRange[] | undefined {
    return this.#layout;
  }

  /** Image size in bytes (0 before the first capture). */
  get size(): number {
    return this.#size;
  }

  /**
   * Pause the process, read its writable memory into `into` (allocated if
   * absent or too small), resume it. The first capture fixes the layout.
   */
  async capture(into?: Uint8Array): Promise<ProcCaptureResult> {
    const pid = this.pid;
    const wasStopped = (await this.#process.state()) === "T";
    let result: ProcCaptureResult;
    let resumeError: Error | undefined;
    const t0 = performance.now();
    this.#process.signal("SIGSTOP");
    try {
      await this.#process.waitStopped();
      const maps = parseMaps(await this.#process.readProc("maps"));
      const first = this.#layout === undefined;
      if (first) {
        const layout: LayoutRange[] = [];
        let off = 0;
        for (const m of writableRanges(maps)) {
          layout.push({
            start: m.start,
            end: m.end,
            perms: m.perms,
            path: m.path,
            imageOffset: off,
          });
          off += m.end - m.start;
        }
        if (off === 0) {
          throw new Error(
            `process ${pid} has no writable mappings, expected at least one`,
          );
        }
        this.#layout = layout;
        this.#size = off;
      }
      const size = this.#size;
      const buf = into !== undefined && into.length >= size
        ? into.subarray(0, size)
        : new Uint8Array(size);
      const r = await this.#readAll(buf, maps, first);
      result = { image: buf, captureMs: 0, ...r };
    } finally {
      if (!wasStopped) {
        try {
          Deno.kill(pid, "SIGCONT");
        } catch (e) {
          if (!(e instanceof Deno.errors.NotFound)) resumeError = e as Error;
        }
      }
    }
    if (resumeError !== undefined) {
      throw new Error(
        `could not resume process ${pid} with SIGCONT: ${resumeError.message}`,
      );
    }
    result.captureMs = performance.now() - t0;
    return result;
  }

  async #readAll(
    buf: Uint8Array,
    maps: MapEntry[],
    first: boolean,
  ): Promise<Omit<ProcCaptureResult, "image" | "captureMs">> {
    const layout = this.#layout!;
    const pid = this.pid;
    let missingRanges = 0;
    let missingBytes = 0;
    const examples: string[] = [];
    using mem = await this.#process.openProc("mem");
    const read = (addr: number, dst: Uint8Array) =>
      readMemory(mem, this.pid, addr, dst);
    let j = 0; // index into maps (sorted by start)
    for (const r of layout) {
      const dst = buf.subarray(r.imageOffset, r.imageOffset + r.end - r.start);
      let missing = 0;
      let missingWhy = "unmapped";
      let cur = r.start;
      while (j < maps.length && maps[j].end <= r.start) j++;
      for (let k = j; k < maps.length && maps[k].start < r.end; k++) {
        const s = Math.max(maps[k].start, r.start);
        const e = Math.min(maps[k].end, r.end);
        if (s > cur) {
          dst.fill(0, cur - r.start, s - r.start);
          missing += s - cur;
        }
        const part = dst.subarray(s - r.start, e - r.start);
        try {
          read(s, part);
        } catch (err) {
          if (first) {
            throw new Error(
              `cannot read writable range ${describe(r)} of process ${pid}: ${
                (err as Error).message
              }; expected readable memory`,
            );
          }
          part.fill(0);
          missing += e - s;
          missingWhy = `unreadable (${(err as Error).message})`;
        }
        cur = e;
      }
      if (cur < r.end) {
        dst.fill(0, cur - r.start);
        missing += r.end - cur;
      }
      if (missing > 0) {
        if (first) {
          throw new Error(
            `writable range ${
              describe(r)
            } of process ${pid} changed while stopped; expected a stable layout`,
          );
        }
        missingRanges++;
        missingBytes += missing;
        if (examples.length < 3) {
          examples.push(`${describe(r)} (${missing} bytes ${missingWhy})`);
        }
      }
    }
    if (missingRanges > 0) {
      this.#warn(
        `pid ${pid}: ${missingRanges} ranges vanished or shrank since the first capture, ${missingBytes} bytes read as zeros; e.g. ${
          examples.join(", ")
        }`,
      );
    }
    // Writable memory outside the fixed layout.
    let uncapturedBytes = 0;
    for (const m of writableRanges(maps)) {
      let inside = 0;
      for (const r of layout) {
        const s = Math.max(m.start, r.start);
        const e = Math.min(m.end, r.end);
        if (e > s) inside += e - s;
      }
      uncapturedBytes += m.end - m.start - inside;
    }
    if (uncapturedBytes !== this.#lastUncaptured) {
      this.#warn(
        `pid ${pid}: ${uncapturedBytes} bytes of writable memory mapped outside the layout fixed at the first capture (not captured)`,
      );
      this.#lastUncaptured = uncapturedBytes;
    }
    return { missingRanges, missingBytes, uncapturedBytes };
  }
}

function hex(n: number): string {
  return n.toString(16);
}

function describe(r: LayoutRange): string {
  return `${hex(r.start)}-${hex(r.end)} ${r.perms}${
    r.path === "" ? "" : " " + r.path
  }`;
}
