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
 * only pages with bit 55 of `/proc/PID/pagemap` set are read (then the bits
 * are cleared by writing `4` to `/proc/PID/clear_refs`) and passed to the
 * encoder as dirty hints; elsewhere, or with `dirty=scan`, every page is
 * read and the encoder scans. Deno treats `/proc/PID/*` as privileged: run with `-A`.
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
  /** Whether soft-dirty bits are used (false: every page is read each capture). */
  readonly softDirty: boolean;
  #placements: Placement[] = [];
  #captures = 0;
  #note: (line: string) => void;
  #reported = new Set<string>();

  private constructor(
    spec: string,
    process: ProcessHandle,
    arenaId: string,
    size: number,
    softDirty: boolean,
    note: (line: string) => void,
  ) {
    this.name = spec;
    this.process = process;
    this.images = [
      { id: arenaId, size },
      { id: `${arenaId}.layout`, size: LAYOUT_BYTES },
    ];
    this.softDirty = softDirty;
    this.#note = note;
  }

  /**
   * Opens `proc:PID[?size=SIZE&id=NAME&dirty=auto|scan]`; the process must
   * exist and be readable. `dirty=scan` reads every page at every capture
   * even where soft-dirty bits work (default `auto`: use them if they do).
   */
  static async open(
    spec: string,
    note: (line: string) => void = (l) => console.error(l),
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
    return new ProcSource(
      spec,
      process,
      id,
      size,
      dirtyMode === "auto" && softDirtyWorks(),
      note,
    );
  }

  /**
   * Stops the process (unless it is stopped already), reads its writable
   * mappings into their places in the arena, writes the layout, resumes it.
   * Fails, capturing nothing usable, if the process exited or its memory no
   * longer fits the arena.
   */
  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    const [arena, layoutImage] = into;
    const first = this.#captures === 0;
    let wasStopped: boolean;
    try {
      wasStopped = (await this.process.state()) === "T";
    } catch (e) {
      throw new SourceError(`${this.name}: ${(e as Error).message}`);
    }
    const t0 = performance.now();
    let dirty: Uint32Array | null = null;
    try {
      if (!wasStopped) this.process.signal("SIGSTOP");
      try {
        await this.process.waitStopped();
        const maps = writableRanges(
          parseMaps(await this.process.readProc("maps")),
        );
        const previous = this.#placements;
        const next = this.#place(maps, arena.length);
        if (first) arena.fill(0); // the layout image is rewritten whole below
        dirty = await this.#read(arena, previous, next, first);
        // Killed while stopped, every read fails: that is an exit, not zeros.
        await this.process.state();
        this.#placements = next;
        if (dirty) {
          // Soft-dirty: start the next epoch's log now, while still stopped.
          const f = await Deno.open(`/proc/${this.process.pid}/clear_refs`, {
            write: true,
          });
          try {
            f.writeSync(new TextEncoder().encode("4"));
          } finally {
            f.close();
          }
        }
      } finally {
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
    this.#captures++;
    this.#writeLayout(layoutImage);
    return { pauseMs, dirtyPages: dirty ? [dirty, null] : undefined };
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
   * its place. With soft-dirty bits, a mapping that kept its place and size
   * has only its dirty pages read; returns the arena pages written (null:
   * everything was read, no hints).
   */
  async #read(
    arena: Uint8Array,
    previous: Placement[],
    next: Placement[],
    first: boolean,
  ): Promise<Uint32Array | null> {
    const pages = arena.length / PAGE;
    const hints = this.softDirty && !first
      ? new Uint32Array(Math.ceil(pages / 32))
      : null;
    const mark = (at: number, len: number) => {
      if (!hints) return;
      for (let p = at / PAGE; p < (at + len) / PAGE; p++) {
        hints[p >>> 5] |= 1 << (p & 31);
      }
    };
    // Freed space: zero what a previous mapping held and no new one covers.
    const kept = new Map(next.map((p) => [p.at, p]));
    for (const p of previous) {
      const n = kept.get(p.at);
      if (n && n.start === p.start && n.room >= p.room) continue;
      const from = n && n.start === p.start ? p.at + n.room : p.at;
      arena.fill(0, from, p.at + p.room);
      mark(from, p.at + p.room - from);
    }
    const same = new Map(previous.map((p) => [p.start, p]));
    using mem = await this.process.openProc("mem");
    using pagemap = hints ? await this.process.openProc("pagemap") : null;
    for (const p of next) {
      const len = p.end - p.start;
      const dst = arena.subarray(p.at, p.at + len);
      const before = same.get(p.start);
      // Only a mapping read whole last time, still in place, can skip clean pages.
      const stayed = before && before.at === p.at && before.end === p.end &&
        !before.unreadable;
      delete p.unreadable;
      try {
        if (hints && stayed && pagemap) {
          readDirty(
            mem,
            this.process.pid,
            pagemap,
            p.start,
            dst,
            (off, n) => mark(p.at + off, n),
          );
        } else {
          readMemory(mem, this.process.pid, p.start, dst);
          mark(p.at, p.room);
        }
        // The page tail past the mapping's end stays zero.
        if (p.room > len) arena.fill(0, p.at + len, p.at + p.room);
      } catch (e) {
        dst.fill(0);
        mark(p.at, p.room);
        p.unreadable = (e as Error).message;
        const key = `${p.start}:${p.unreadable}`;
        if (!this.#reported.has(key)) {
          this.#reported.add(key);
          this.#note(
            `${this.name}: mapping ${hex(p.start)}-${
              hex(p.end)
            } ${p.perms} ${p.path} cannot be read (${p.unreadable}); replicated as zeros and marked unreadable in the layout`,
          );
        }
      }
    }
    return hints;
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

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Reads only the soft-dirty pages of the mapping at `addr`; `wrote(offset, length)` for each run. */
function readDirty(
  mem: Deno.FsFile,
  pid: number,
  pagemap: Deno.FsFile,
  addr: number,
  dst: Uint8Array,
  wrote: (offset: number, length: number) => void,
): void {
  const pages = Math.ceil(dst.length / PAGE);
  const entries = new BigUint64Array(pages);
  const raw = new Uint8Array(entries.buffer);
  pagemap.seekSync((addr / PAGE) * 8, Deno.SeekMode.Start);
  for (let got = 0; got < raw.length;) {
    const n = pagemap.readSync(raw.subarray(got));
    if (n === null || n === 0) throw new Error("short pagemap read");
    got += n;
  }
  let p = 0;
  while (p < pages) {
    if ((entries[p] & SOFT_DIRTY_BIT) === 0n) {
      p++;
      continue;
    }
    let e = p + 1;
    while (e < pages && (entries[e] & SOFT_DIRTY_BIT) !== 0n) e++;
    const off = p * PAGE, end = Math.min(e * PAGE, dst.length);
    readMemory(mem, pid, addr + off, dst.subarray(off, end));
    wrote(off, end - off);
    p = e;
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
