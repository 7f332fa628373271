/**
 * `proc:PID[?size=SIZE&id=NAME&dirty=auto|scan]`: a live process's writable memory, read
 * through `/proc/PID/mem` while the process is stopped (SIGSTOP, then
 * SIGCONT; a process that was already stopped is left stopped).
 *
 * A process's mappings appear, grow, shrink and vanish, but an image has a
 * fixed size, so the source gives two images:
 *
 * - `ID` (default `proc-PID`), the arena: `size` bytes (default twice the
 *   writable memory at open, rounded up to 16 MiB, at least 64 MiB) where
 *   every writable mapping has a page-aligned place. A mapping keeps its
 *   place while it exists (identified by its start address), grows in place
 *   when the space after it is free and moves otherwise (the codec sends
 *   moved pages as references, not as new data); space that is freed is
 *   zeroed.
 * - `ID.layout`, {@linkcode LAYOUT_BYTES} bytes: the layout as JSON (then
 *   zeros): for each mapping, in address order, its address range,
 *   permissions, path, place in the arena, and whether it could not be read.
 *
 * Together they are enough to rebuild the process's layout and contents at
 * every committed epoch ({@linkcode rebuildProcMemory}). Memory that no
 * longer fits the arena fails the capture with an error naming the size to
 * use; nothing is dropped silently. A writable mapping that cannot be read
 * (a file mapping past the end of its truncated file, for instance) is
 * zero-filled, marked `unreadable` in the layout, and reported.
 *
 * Dirty pages: where the kernel has soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY`),
 * a capture reads, of each mapping that kept its place and size, only the
 * pages the process's {@linkcode SoftDirtyLog} reports written since the
 * previous capture (bit 55 of `/proc/PID/pagemap`), passes the pages it
 * wrote to the encoder as dirty hints, and clears the log (writing `4` to
 * `/proc/PID/clear_refs`) before the process resumes. The first capture,
 * and the one after a failed capture or a failed clear, reads every page. A
 * mapping whose log entries cannot be read is read whole. Elsewhere, or with
 * `dirty=scan`, every page is read and the encoder scans. Deno treats
 * `/proc/PID/*` as privileged: run with `-A`.
 * @module
 */

import type { ImageSpec } from "./encoder.ts";
import { parseSize } from "./synthetic.ts";
import {
  type CaptureResult,
  checkInto,
  parseSourceSpec,
  type Source,
  SourceError,
} from "./source.ts";
import { type MapEntry, parseMaps, writableRanges } from "./record/_maps.ts";
import { ProcessHandle, readMemory } from "./record/_process.ts";

/** Size of the layout image. */
export const LAYOUT_BYTES = 1 << 20;
const PAGE = 4096;
const LAYOUT_FORMAT = "patchwire-proc-layout/1";
const SOFT_DIRTY_BIT = 1n << 55n;
/** Bit 55 of a pagemap entry is this bit of its high 32-bit word. */
const SOFT_DIRTY_HIGH_BIT = 1 << (55 - 32);
/** Which 32-bit word of a native-endian 64-bit entry is the high one. */
const HIGH_WORD = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1 ? 1 : 0;
const CLEAR_SOFT_DIRTY = new TextEncoder().encode("4");

/**
 * A process's log of the pages written since it was last cleared, in the
 * kernel's soft-dirty format. The default is the kernel's own:
 * `/proc/PID/pagemap` and `/proc/PID/clear_refs`; another can be given to
 * {@linkcode ProcSource.open} ({@linkcode ProcSourceOptions.dirtyLog}).
 *
 * The source calls it only while the process is stopped, and trusts it: a
 * page whose entry says clean is not read, so its copy in the image stays
 * what it was at the previous epoch. A log must therefore never report a
 * page clean unless it knows the page was not written.
 */
export interface SoftDirtyLog {
  /**
   * Reads the pagemap entries of `entries.length` consecutive pages, from
   * the page at address `addr` (page-aligned): `entries[i]` is the entry of
   * the page at `addr + i * 4096`, bit 55 set if the page was written since
   * the last {@linkcode clear}. Returns how many entries it read.
   *
   * A throw or a short read (fewer than `entries.length`) means the log
   * cannot say which of these pages were written: the source then reads
   * the whole mapping, and notes the first time it does.
   */
  read(addr: number, entries: BigUint64Array): number;
  /**
   * Clears every page's soft-dirty bit, so the log of the next epoch starts
   * now: called at the end of every capture, after its pages were read and
   * before the process resumes. A throw means the log's state is unknown:
   * the capture still succeeds (its pages were read), the source notes it,
   * and its next capture reads every page.
   */
  clear(): void;
  /**
   * Releases what {@linkcode read} opened; called at the end of every
   * capture that used the log, and must not throw. Reads may follow (the
   * next capture's).
   */
  close(): void;
}

/** Options of {@linkcode ProcSource.open} that a spec cannot carry. */
export interface ProcSourceOptions {
  /**
   * The process's dirty page log, used instead of the kernel's soft-dirty
   * bits (and whether or not this kernel keeps them); ignored with
   * `dirty=scan`.
   */
  dirtyLog?: SoftDirtyLog;
}

/** One mapping of the layout image. */
export interface ProcMapping {
  /** Address range in the process, as hex strings (addresses exceed 2^53 in principle). */
  start: string;
  end: string;
  perms: string;
  path: string;
  /** Byte offset of the mapping's contents in the arena image. */
  at: number;
  /** Why it could not be read (its place is zero-filled); absent if read. */
  unreadable?: string;
}

/** The layout image's contents. */
export interface ProcLayout {
  format: string;
  pid: number;
  /** How many captures have written this layout. */
  capture: number;
  mappings: ProcMapping[];
}

interface Placement {
  start: number;
  end: number;
  perms: string;
  path: string;
  at: number;
  /** Arena bytes reserved: the length rounded up to pages. */
  room: number;
  unreadable?: string;
}

/** The layout a layout image holds. Throws if it is not one. */
export function parseProcLayout(bytes: Uint8Array): ProcLayout {
  let end = bytes.indexOf(0);
  if (end < 0) end = bytes.length;
  let layout: ProcLayout;
  try {
    layout = JSON.parse(new TextDecoder().decode(bytes.subarray(0, end)));
  } catch (e) {
    throw new SourceError(
      `not a proc layout image: ${(e as Error).message}`,
    );
  }
  if (layout?.format !== LAYOUT_FORMAT) {
    throw new SourceError(
      `not a proc layout image: format ${
        JSON.stringify(layout?.format)
      }, expected "${LAYOUT_FORMAT}"`,
    );
  }
  return layout;
}

/**
 * The process memory a pair of images holds: each mapping with its bytes
 * (a view of `arena`).
 * @example
 * ```ts ignore
 * const layout = await Deno.readFile("store/proc-42.layout.img");
 * const arena = await Deno.readFile("store/proc-42.img");
 * for (const m of rebuildProcMemory(layout, arena)) console.log(m.start, m.bytes.length);
 * ```
 */
export function rebuildProcMemory(
  layoutImage: Uint8Array,
  arena: Uint8Array,
): (ProcMapping & { bytes: Uint8Array })[] {
  return parseProcLayout(layoutImage).mappings.map((m) => {
    const length = Number(BigInt("0x" + m.end) - BigInt("0x" + m.start));
    return { ...m, bytes: arena.subarray(m.at, m.at + length) };
  });
}

function hex(n: number): string {
  return n.toString(16);
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** A live process's writable memory as an arena image and a layout image. */
export class ProcSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  readonly process: ProcessHandle;
  /**
   * Whether a soft-dirty log is used (the kernel's, or the one given to
   * {@linkcode ProcSource.open}); false: every page is read each capture.
   */
  readonly softDirty: boolean;
  #placements: Placement[] = [];
  #captures = 0;
  /** The next capture reads every page: the first, and any after a failed capture or clear. */
  #whole = true;
  #log: SoftDirtyLog | null;
  /** One mapping's pagemap entries, and the same bytes as 32-bit words. */
  #entries = new BigUint64Array(0);
  #entryWords = new Uint32Array(0);
  #note: (line: string) => void;
  #reported = new Set<string>();

  private constructor(
    spec: string,
    process: ProcessHandle,
    arenaId: string,
    size: number,
    log: SoftDirtyLog | null,
    note: (line: string) => void,
  ) {
    this.name = spec;
    this.process = process;
    this.images = [
      { id: arenaId, size },
      { id: `${arenaId}.layout`, size: LAYOUT_BYTES },
    ];
    this.softDirty = log !== null;
    this.#log = log;
    this.#note = note;
  }

  /**
   * Opens `proc:PID[?size=SIZE&id=NAME&dirty=auto|scan]`; the process must
   * exist and be readable. `dirty=scan` reads every page at every capture
   * even where soft-dirty bits work (default `auto`: use them if they do,
   * or `options.dirtyLog` if given).
   */
  static async open(
    spec: string,
    note: (line: string) => void = (l) => console.error(l),
    options: ProcSourceOptions = {},
  ): Promise<ProcSource> {
    const { target: pidText, params, fail } = parseSourceSpec(spec, {
      size: "SIZE",
      id: "NAME",
      dirty: "auto|scan",
    });
    const dirtyMode = params.get("dirty") ?? "auto";
    if (dirtyMode !== "auto" && dirtyMode !== "scan") {
      fail(`dirty=${dirtyMode}: expected dirty=auto or dirty=scan`);
    }
    const pid = Number(pidText);
    if (!/^\d+$/.test(pidText) || !Number.isSafeInteger(pid) || pid <= 0) {
      fail(`"${pidText}" is not a process id; expected proc:PID`);
    }
    const process = new ProcessHandle(pid);
    let writable: number;
    try {
      await process.state();
      writable = writableRanges(parseMaps(await process.readProc("maps")))
        .reduce((n, m) => n + roundUp(m.end - m.start, PAGE), 0);
      // Reading needs ptrace rights: find out now, not at the first capture.
      (await process.openProc("mem")).close();
    } catch (e) {
      const msg = (e as Error).message;
      return fail(
        msg === `process ${pid} exited`
          ? `process ${pid} does not exist (or has exited); expected a running process`
          : msg,
      );
    }
    let size: number;
    try {
      size = params.has("size")
        ? roundUp(parseSize(params.get("size")!, "size"), PAGE)
        : Math.max(64 << 20, roundUp(2 * writable, 16 << 20));
    } catch (e) {
      return fail((e as Error).message);
    }
    if (size < writable) {
      fail(
        `size=${
          params.get("size")
        } is smaller than the process's ${writable} bytes of writable memory`,
      );
    }
    const id = params.get("id") ?? `proc-${pid}`;
    const log = dirtyMode === "scan" ? null : options.dirtyLog ??
      (softDirtyWorks() ? new KernelSoftDirtyLog(pid) : null);
    return new ProcSource(spec, process, id, size, log, note);
  }

  /**
   * Stops the process (unless it is stopped already), reads its writable
   * mappings into their places in the arena, writes the layout, resumes it.
   * Fails, capturing nothing usable, if the process exited or its memory no
   * longer fits the arena; the next capture then reads every page.
   */
  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    const [arena, layoutImage] = into;
    // Until this capture succeeds, the arena may hold part of it: the next
    // one must not build on it.
    const whole = this.#whole;
    this.#whole = true;
    let wasStopped: boolean;
    try {
      wasStopped = (await this.process.state()) === "T";
    } catch (e) {
      throw new SourceError(`${this.name}: ${(e as Error).message}`);
    }
    const t0 = performance.now();
    let dirty: Uint32Array | null = null;
    let placements: Placement[];
    let cleared = true;
    try {
      if (!wasStopped) this.process.signal("SIGSTOP");
      try {
        await this.process.waitStopped();
        const maps = writableRanges(
          parseMaps(await this.process.readProc("maps")),
        );
        placements = this.#place(maps, arena.length);
        if (whole) arena.fill(0); // the layout image is rewritten whole below
        dirty = await this.#read(arena, this.#placements, placements, whole);
        // Killed while stopped, every read fails: that is an exit, not zeros.
        await this.process.state();
        // Start the next epoch's log now, while still stopped.
        if (this.#log) cleared = this.#clearLog(this.#log);
      } finally {
        this.#log?.close();
        if (!wasStopped) {
          try {
            this.process.signal("SIGCONT");
          } catch {
            // gone: the error that follows (or came first) says so
          }
        }
      }
    } catch (e) {
      if (e instanceof SourceError) throw e;
      throw new SourceError(`${this.name}: ${(e as Error).message}`);
    }
    const pauseMs = wasStopped ? 0 : performance.now() - t0;
    this.#placements = placements;
    this.#captures++;
    this.#writeLayout(layoutImage);
    this.#whole = !cleared;
    return { pauseMs, dirtyPages: dirty ? [dirty, null] : undefined };
  }

  /** Clears the dirty page log; false (and noted) if that failed. */
  #clearLog(log: SoftDirtyLog): boolean {
    try {
      log.clear();
      return true;
    } catch (e) {
      this.#noteOnce(
        `clear:${(e as Error).message}`,
        `${this.name}: the soft-dirty log cannot be cleared (${
          (e as Error).message
        }); the next capture reads every page`,
      );
      return false;
    }
  }

  #noteOnce(key: string, line: string): void {
    if (this.#reported.has(key)) return;
    this.#reported.add(key);
    this.#note(line);
  }

  /**
   * Places every mapping in the arena: the same place as before where it
   * still fits, else the first free space. Throws before anything is
   * written if they do not fit.
   */
  #place(maps: MapEntry[], size: number): Placement[] {
    const old = new Map(this.#placements.map((p) => [p.start, p]));
    const placed: Placement[] = [];
    const homeless: MapEntry[] = [];
    // Keep places, growing in place only into space no one else keeps.
    const keepers = maps.filter((m) => old.has(m.start))
      .sort((a, b) => old.get(a.start)!.at - old.get(b.start)!.at);
    for (let i = 0; i < keepers.length; i++) {
      const m = keepers[i];
      const p = old.get(m.start)!;
      const need = roundUp(m.end - m.start, PAGE);
      const limit = i + 1 < keepers.length
        ? old.get(keepers[i + 1].start)!.at
        : size;
      if (p.at + need <= limit) {
        placed.push({ ...m, at: p.at, room: need });
      } else {
        homeless.push(m);
      }
    }
    for (const m of maps) if (!old.has(m.start)) homeless.push(m);
    placed.sort((a, b) => a.at - b.at);
    for (const m of homeless) {
      const need = roundUp(m.end - m.start, PAGE);
      let at = 0, i = 0;
      for (; i < placed.length; i++) {
        if (placed[i].at - at >= need) break;
        at = placed[i].at + placed[i].room;
      }
      if (at + need > size) {
        const total = maps.reduce(
          (n, x) => n + roundUp(x.end - x.start, PAGE),
          0,
        );
        const why = total <= size
          ? " in one piece (its free space is fragmented)"
          : "";
        throw new SourceError(
          `${this.name}: the process's ${total} bytes of writable memory no longer fit the ${size}-byte image${why}; restart the primary with proc:${this.process.pid}?size=${
            roundUp(2 * total, 16 << 20)
          } (or more)`,
        );
      }
      placed.splice(i, 0, { ...m, at, room: need });
    }
    return placed;
  }

  /**
   * Zeroes space that no mapping keeps any more, reads every mapping into
   * its place. With a dirty page log and not `whole`, a mapping that kept
   * its place and size has only its dirty pages read; returns the arena
   * pages written (null: everything was read, no hints).
   */
  async #read(
    arena: Uint8Array,
    previous: Placement[],
    next: Placement[],
    whole: boolean,
  ): Promise<Uint32Array | null> {
    const log = whole ? null : this.#log;
    const hints = log
      ? new Uint32Array(Math.ceil(arena.length / PAGE / 32))
      : null;
    // Freed space: zero what a previous mapping held and no new one covers.
    const kept = new Map(next.map((p) => [p.at, p]));
    for (const p of previous) {
      const n = kept.get(p.at);
      if (n && n.start === p.start && n.room >= p.room) continue;
      const from = n && n.start === p.start ? p.at + n.room : p.at;
      arena.fill(0, from, p.at + p.room);
      if (hints) markPages(hints, from, p.at + p.room);
    }
    const same = new Map(previous.map((p) => [p.start, p]));
    using mem = await this.process.openProc("mem");
    for (const p of next) {
      const len = p.end - p.start;
      const dst = arena.subarray(p.at, p.at + len);
      const before = same.get(p.start);
      // Only a mapping read whole last time, still in place, can skip clean pages.
      const stayed = before && before.at === p.at && before.end === p.end &&
        !before.unreadable;
      delete p.unreadable;
      try {
        if (!(log && stayed && this.#readDirty(mem, log, p, dst, hints!))) {
          readMemory(mem, this.process.pid, p.start, dst);
          if (hints) markPages(hints, p.at, p.at + p.room);
        }
        // The page tail past the mapping's end stays zero.
        if (p.room > len) arena.fill(0, p.at + len, p.at + p.room);
      } catch (e) {
        dst.fill(0);
        if (hints) markPages(hints, p.at, p.at + p.room);
        p.unreadable = (e as Error).message;
        this.#noteOnce(
          `${p.start}:${p.unreadable}`,
          `${this.name}: mapping ${hex(p.start)}-${
            hex(p.end)
          } ${p.perms} ${p.path} cannot be read (${p.unreadable}); replicated as zeros and marked unreadable in the layout`,
        );
      }
    }
    return hints;
  }

  /**
   * Reads into `dst` the pages of mapping `p` that `log` reports written,
   * marking them in `hints`. Returns false, having read nothing, if the log
   * cannot say which pages were written (noted once).
   */
  #readDirty(
    mem: Deno.FsFile,
    log: SoftDirtyLog,
    p: Placement,
    dst: Uint8Array,
    hints: Uint32Array,
  ): boolean {
    const pages = dst.length / PAGE; // mappings are whole pages
    if (this.#entries.length < pages) {
      this.#entries = new BigUint64Array(pages);
      this.#entryWords = new Uint32Array(this.#entries.buffer);
    }
    let why = "", kind = "";
    try {
      const n = log.read(p.start, this.#entries.subarray(0, pages));
      if (n < pages) {
        why = `short read: ${n} of ${pages} pages' entries`;
        kind = "short read";
      }
    } catch (e) {
      why = kind = (e as Error).message || String(e);
    }
    if (why) {
      this.#noteOnce(
        `log:${kind}`,
        `${this.name}: the soft-dirty log of mapping ${hex(p.start)}-${
          hex(p.end)
        } ${p.perms} ${p.path} cannot be read (${why}); the mapping is read whole`,
      );
      return false;
    }
    // Bit 55 of entry i, tested in its high word: no BigInt per page.
    const words = this.#entryWords;
    const dirty = (page: number) =>
      (words[2 * page + HIGH_WORD] & SOFT_DIRTY_HIGH_BIT) !== 0;
    for (let page = 0; page < pages;) {
      if (!dirty(page)) {
        page++;
        continue;
      }
      let end = page + 1;
      while (end < pages && dirty(end)) end++;
      const from = page * PAGE, to = end * PAGE;
      readMemory(mem, this.process.pid, p.start + from, dst.subarray(from, to));
      markPages(hints, p.at + from, p.at + to);
      page = end;
    }
    return true;
  }

  #writeLayout(image: Uint8Array): void {
    const layout: ProcLayout = {
      format: LAYOUT_FORMAT,
      pid: this.process.pid,
      capture: this.#captures,
      mappings: [...this.#placements].sort((a, b) => a.start - b.start).map((
        p,
      ) => ({
        start: hex(p.start),
        end: hex(p.end),
        perms: p.perms,
        path: p.path,
        at: p.at,
        ...(p.unreadable ? { unreadable: p.unreadable } : {}),
      })),
    };
    const bytes = new TextEncoder().encode(JSON.stringify(layout));
    if (bytes.length >= image.length) {
      throw new SourceError(
        `${this.name}: the layout of ${layout.mappings.length} mappings needs ${bytes.length} bytes, more than the ${image.length}-byte layout image`,
      );
    }
    image.set(bytes);
    image.fill(0, bytes.length);
  }

  /** Stops the process (SIGSTOP) for good: a newer primary runs its workload. */
  halt(): Promise<void> {
    try {
      this.process.signal("SIGSTOP");
    } catch {
      // already gone
    }
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Sets the bits of pages `[from, to)` (byte offsets, page-aligned) in `hints`. */
function markPages(hints: Uint32Array, from: number, to: number): void {
  for (let p = from / PAGE; p < to / PAGE; p++) hints[p >>> 5] |= 1 << (p & 31);
}

/**
 * The kernel's soft-dirty log of process `pid`: reads `/proc/PID/pagemap`,
 * clears by writing `4` to `/proc/PID/clear_refs` (the default of
 * {@linkcode ProcSource.open} where {@linkcode softDirtyWorks}). Needs `-A`.
 */
export class KernelSoftDirtyLog implements SoftDirtyLog {
  #pagemap: Deno.FsFile | null = null;
  #process: ProcessHandle;

  constructor(pid: number) {
    this.#process = new ProcessHandle(pid);
  }

  read(addr: number, entries: BigUint64Array): number {
    const raw = new Uint8Array(
      entries.buffer,
      entries.byteOffset,
      entries.byteLength,
    );
    let got = 0;
    try {
      this.#pagemap ??= Deno.openSync(`/proc/${this.#process.pid}/pagemap`, {
        read: true,
      });
      this.#pagemap.seekSync((addr / PAGE) * 8, Deno.SeekMode.Start);
      while (got < raw.length) {
        const n = this.#pagemap.readSync(raw.subarray(got));
        if (n === null || n === 0) break;
        got += n;
      }
    } catch (e) {
      throw this.#process.procError(e, "pagemap");
    }
    return Math.floor(got / 8);
  }

  clear(): void {
    try {
      const f = Deno.openSync(`/proc/${this.#process.pid}/clear_refs`, {
        write: true,
      });
      try {
        if (f.writeSync(CLEAR_SOFT_DIRTY) !== CLEAR_SOFT_DIRTY.length) {
          throw new Error(
            `short write to /proc/${this.#process.pid}/clear_refs`,
          );
        }
      } finally {
        f.close();
      }
    } catch (e) {
      throw this.#process.procError(e, "clear_refs");
    }
  }

  close(): void {
    this.#pagemap?.close();
    this.#pagemap = null;
  }
}

let softDirtyCache: boolean | undefined;

/**
 * Whether this kernel keeps soft-dirty bits: clears this process's bits,
 * writes a page of its own, and looks for bit 55 on it.
 */
export function softDirtyWorks(): boolean {
  if (softDirtyCache !== undefined) return softDirtyCache;
  softDirtyCache = false;
  try {
    const buf = new Uint8Array(4 * PAGE);
    const ptr = Deno.UnsafePointer.of(buf);
    if (!ptr) return false;
    const addr = Number(Deno.UnsafePointer.value(ptr));
    const page = Math.ceil(addr / PAGE) * PAGE; // a whole page inside buf
    const f = Deno.openSync("/proc/self/clear_refs", { write: true });
    try {
      f.writeSync(new TextEncoder().encode("4"));
    } finally {
      f.close();
    }
    buf[page - addr] ^= 1;
    const entry = new BigUint64Array(1);
    const pm = Deno.openSync("/proc/self/pagemap", { read: true });
    try {
      pm.seekSync((page / PAGE) * 8, Deno.SeekMode.Start);
      pm.readSync(new Uint8Array(entry.buffer));
    } finally {
      pm.close();
    }
    softDirtyCache = (entry[0] & SOFT_DIRTY_BIT) !== 0n;
  } catch {
    // no FFI, no /proc: no soft-dirty
  }
  return softDirtyCache;
}
