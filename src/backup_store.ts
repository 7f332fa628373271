/**
 * The backup's image store: each image `ID` lives in `DIR/ID.img`, and the
 * set of files always equals exactly one committed checkpoint, even if the
 * process is killed at any instant (and, with `durable`, across power loss).
 *
 * Files in `DIR`:
 *
 * - `state.json` — the committed epoch and every image's id, size and digest;
 *   replaced only by write-to-temp + rename, so it is always whole.
 * - `ID.img` — image contents, written in place by {@linkcode BackupStore.commitEpoch}
 *   only after the epoch's redo journal is complete.
 * - `journal` — the redo journal of the epoch being committed (empty, or
 *   with a zeroed magic, when idle). It also carries the store's exclusive
 *   lock. Where FFI allows, it is kept at its largest size and mapped into
 *   memory, so an epoch's ranges are copied into it once, with no system
 *   call, instead of being assembled in a buffer and written.
 * - `switch.json`, `ID.img.new` — an in-progress {@linkcode BackupStore.replaceAll}.
 *
 * Journal format (all integers little-endian):
 *
 * ```text
 * 0   "PWJ1"              magic
 * 4   u32 rangeCount
 * 8   u64 baseEpoch       epoch of the state the journal applies to
 * 16  u64 newEpoch
 * 24  u64 dataBytes       sum of the range lengths
 * 32  u32 baseStateHash   xxh32 of the base state.json text
 * 36  u32 stateLength     bytes of the new state's JSON
 * 40  rangeCount × { u32 slot, u32 length, u64 offset, length bytes }
 * ..  stateLength bytes   the new state.json text (UTF-8)
 * ..  u32 xxh32 of every preceding byte
 * ```
 *
 * The magic is written last. A journal without it is idle (or was cut short
 * before anything else could depend on it); one shorter than its header
 * says, or whose checksum fails, is torn: the crash happened while writing
 * it, before any image was touched, so recovery drops it. Bytes after the
 * checksum are left over from earlier, larger journals and are ignored. A whole journal whose base is the current
 * state is redone (writing the same bytes twice is harmless).
 *
 * @example Create a store, commit an epoch, read it back after reopening
 * ```ts
import { BackupStore } from "./backup_store.ts";
 * const dir = await Deno.makeTempDir();
 * const store = BackupStore.open(dir);
 * const img = { id: "vm0", size: 8, digestLo: 0, digestHi: 0 };
 * store.replaceAll({ epoch: 0, images: [img] }, [new Uint8Array(8)], true);
 * store.commitEpoch(
 *   { epoch: 1, images: [{ ...img, digestLo: 1 }] },
 *   [{ slot: 0, offset: 2, bytes: new Uint8Array([7, 7]) }],
 *   true,
 * );
 * store.close();
 * const again = BackupStore.open(dir);
 * const out = new Uint8Array(8);
 * again.readImage(0, out);
 * console.log(again.state?.epoch, out); // 1 Uint8Array [0, 0, 7, 7, 0, 0, 0, 0]
 * again.close();
 * ```
 * @module
 */

import { xxh32 } from "./checksum.ts";
import { mapFile, type MappedFile } from "./_mmap.ts";
import { faultPoint } from "./_fault.ts";

/** One image of a stored checkpoint. */
export interface StoredImage {
  /** File-name-safe identifier: the image lives in `DIR/ID.img`. */
  id: string;
  /** Size in bytes. */
  size: number;
  /**
   * Bytes in use, for a sized image (a guest's device state: contents, then
   * zeros up to `size`); absent when all of `size` is contents. Committed
   * with the epoch like the digest, which covers it.
   */
  length?: number;
  /** Low 32 bits of the image digest (unsigned), as the primary reported it. */
  digestLo: number;
  /** High 32 bits of the image digest (unsigned). */
  digestHi: number;
}

/** A committed checkpoint: its epoch and its images, in slot order. */
export interface StoredState {
  epoch: number;
  images: StoredImage[];
}

/** Bytes to write into image `slot` (an index into `state.images`) at `offset`. */
export interface StoreRange {
  slot: number;
  offset: number;
  bytes: Uint8Array;
}

/** Any failure of the store: bad input, unusable directory, corrupt files, I/O errors. */
export class StoreError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StoreError";
  }
}

/** What {@linkcode BackupStore.open} found and did; for logs and tests. */
export interface StoreRecovery {
  /** The journal of an interrupted `commitEpoch`. */
  journal:
    | "none"
    | "redone"
    | "discarded-torn"
    | "discarded-stale"
    | "already-applied";
  /** An interrupted `replaceAll`: finished if its switch record was written, else undone. */
  replace: "none" | "finished" | "undone";
}

/** Points where tests make a mutation stop as if the process died there. */
export type CrashPoint =
  | "journal"
  | "some-images"
  | "images"
  | "state"
  | "staged"
  | "switch"
  | "renamed";

/** Thrown at a {@linkcode CrashPoint}; only ever raised when a test sets one. */
class SimulatedCrash extends Error {
  constructor(point: CrashPoint) {
    super(`simulated crash after ${point}`);
    this.name = "SimulatedCrash";
  }
}

/** Test hooks. Not part of the API. */
export const _testing: {
  crashAfter: CrashPoint | null;
  SimulatedCrash: typeof SimulatedCrash;
} = { crashAfter: null, SimulatedCrash };

function crashPoint(point: CrashPoint): void {
  if (_testing.crashAfter === point) throw new SimulatedCrash(point);
}

const FORMAT = "patchwire-store/1";
const STATE = "state.json";
const SWITCH = "switch.json";
const JOURNAL = "journal";
const MAGIC = [0x50, 0x57, 0x4a, 0x31]; // "PWJ1"
const HEADER = 40;
const RECORD = 16;
/** The mapped journal grows in steps of this many bytes. */
const JOURNAL_GROWTH = 1 << 20;
const MAX_ID_BYTES = 200; // keeps "ID.img.new" well under NAME_MAX (255)
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

function cause(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Runs an fs call, turning its failure into a StoreError naming the path. */
function io<T>(what: string, path: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof StoreError || e instanceof SimulatedCrash) throw e;
    throw new StoreError(`${what} ${path}: ${cause(e)}`, { cause: e });
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw new StoreError(`cannot stat ${path}: ${cause(e)}`, { cause: e });
  }
}

function removeIfExists(path: string): boolean {
  try {
    Deno.removeSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw new StoreError(`cannot remove ${path}: ${cause(e)}`, { cause: e });
  }
}

function writeAll(f: Deno.FsFile, bytes: Uint8Array): void {
  let p = 0;
  while (p < bytes.length) p += f.writeSync(bytes.subarray(p));
}

/** Writes `size` zero bytes from the start of `f`, so its blocks are allocated. */
function writeZeros(f: Deno.FsFile, size: number): void {
  const zeros = new Uint8Array(Math.min(size, JOURNAL_GROWTH));
  f.seekSync(0, Deno.SeekMode.Start);
  for (let p = 0; p < size; p += zeros.length) {
    writeAll(f, zeros.subarray(0, Math.min(zeros.length, size - p)));
  }
}

function writeAt(f: Deno.FsFile, offset: number, bytes: Uint8Array): void {
  f.seekSync(offset, Deno.SeekMode.Start);
  writeAll(f, bytes);
}

function readAt(f: Deno.FsFile, offset: number, into: Uint8Array): void {
  f.seekSync(offset, Deno.SeekMode.Start);
  let p = 0;
  while (p < into.length) {
    const n = f.readSync(into.subarray(p));
    if (n === null) {
      throw new Error(`unexpected end of file at ${offset + p}`);
    }
    p += n;
  }
}

function syncDirPath(dir: string): void {
  io("cannot fsync directory", dir, () => {
    const d = Deno.openSync(dir, { read: true });
    try {
      d.syncSync();
    } finally {
      d.close();
    }
  });
}

function dirname(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  const i = trimmed.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : trimmed.slice(0, i);
}

/** Throws unless `id` can be used as a file name inside DIR. */
export function checkImageId(id: unknown): asserts id is string {
  if (typeof id !== "string" || id.length === 0) {
    throw new StoreError(
      `bad image id ${JSON.stringify(id)}: expected a non-empty string`,
    );
  }
  if (
    id.includes("/") || id.includes("\0") || id.includes("..") ||
    id === "."
  ) {
    throw new StoreError(
      `bad image id ${
        JSON.stringify(id)
      }: must not contain "/", "..", NUL or be "."`,
    );
  }
  if (enc.encode(id).length > MAX_ID_BYTES) {
    throw new StoreError(
      `bad image id ${
        JSON.stringify(id.slice(0, 40))
      }…: longer than ${MAX_ID_BYTES} bytes`,
    );
  }
}

function isU32(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) >= 0 &&
    (v as number) <= 0xffffffff;
}

function isCount(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}

/** Validates a state's shape; `where` prefixes messages (a file path or "state"). */
function checkState(s: unknown, where: string): StoredState {
  const bad = (what: string) => new StoreError(`${where}: ${what}`);
  if (typeof s !== "object" || s === null) throw bad("expected an object");
  const { epoch, images } = s as Record<string, unknown>;
  if (!isCount(epoch)) {
    throw bad(`epoch ${epoch} is not a non-negative safe integer`);
  }
  if (!Array.isArray(images)) throw bad("images is not an array");
  const seen = new Set<string>();
  const out: StoredImage[] = [];
  images.forEach((im: unknown, i) => {
    if (typeof im !== "object" || im === null) {
      throw bad(`images[${i}] is not an object`);
    }
    const { id, size, length, digestLo, digestHi } = im as Record<
      string,
      unknown
    >;
    try {
      checkImageId(id);
    } catch (e) {
      throw bad(`images[${i}]: ${cause(e)}`);
    }
    if (seen.has(id)) throw bad(`image id "${id}" appears twice`);
    seen.add(id);
    if (!isCount(size)) {
      throw bad(`image "${id}" size ${size} is not a non-negative integer`);
    }
    if (!isU32(digestLo) || !isU32(digestHi)) {
      throw bad(`image "${id}" digest is not two unsigned 32-bit integers`);
    }
    if (length !== undefined && (!isCount(length) || length > size)) {
      throw bad(
        `image "${id}" length ${length} is not a byte count within its size ${size}`,
      );
    }
    out.push({
      id,
      size,
      ...(length !== undefined ? { length: length as number } : {}),
      digestLo,
      digestHi,
    });
  });
  return { epoch, images: out };
}

/** The canonical state.json text (fixed key order, so equal states give equal text). */
function stateText(s: StoredState): string {
  return JSON.stringify({
    format: FORMAT,
    epoch: s.epoch,
    images: s.images.map((i) => ({
      id: i.id,
      size: i.size,
      ...(i.length !== undefined ? { length: i.length } : {}),
      digestLo: i.digestLo,
      digestHi: i.digestHi,
    })),
  }) + "\n";
}

function parseStateText(text: string, where: string): StoredState {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new StoreError(`${where} is corrupt: not JSON (${cause(e)})`);
  }
  if ((raw as { format?: unknown } | null)?.format !== FORMAT) {
    throw new StoreError(
      `${where} is corrupt: expected format "${FORMAT}", found ${
        JSON.stringify((raw as { format?: unknown } | null)?.format)
      }`,
    );
  }
  return checkState(raw, `${where} is corrupt`);
}

function freeze(s: StoredState): StoredState {
  return Object.freeze({
    epoch: s.epoch,
    images: Object.freeze(s.images.map((i) => Object.freeze({ ...i }))),
  }) as StoredState;
}

interface ParsedJournal {
  baseEpoch: number;
  baseHash: number;
  text: string;
  ranges: StoreRange[];
}

/** True if the journal holds no record: empty, or its magic is zeroed. */
function journalIdle(b: Uint8Array): boolean {
  return b.length === 0 ||
    (b.length >= 4 && (b[0] | b[1] | b[2] | b[3]) === 0);
}

/** Parses a journal; null if it is torn (incomplete or failing its checksum). */
function parseJournal(b: Uint8Array): ParsedJournal | null {
  if (b.length < HEADER + 4) return null;
  for (let i = 0; i < 4; i++) if (b[i] !== MAGIC[i]) return null;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const count = v.getUint32(4, true);
  const baseEpoch = Number(v.getBigUint64(8, true));
  const dataBytes = Number(v.getBigUint64(24, true));
  const baseHash = v.getUint32(32, true);
  const stateLen = v.getUint32(36, true);
  const total = HEADER + count * RECORD + dataBytes + stateLen + 4;
  if (total > b.length) return null;
  if (xxh32(b.subarray(0, total - 4)) !== v.getUint32(total - 4, true)) {
    return null;
  }
  const ranges: StoreRange[] = [];
  let p = HEADER;
  for (let i = 0; i < count; i++) {
    const slot = v.getUint32(p, true);
    const len = v.getUint32(p + 4, true);
    const offset = Number(v.getBigUint64(p + 8, true));
    p += RECORD;
    if (p + len > total - 4 - stateLen) return null;
    ranges.push({ slot, offset, bytes: b.subarray(p, p + len) });
    p += len;
  }
  if (p !== total - 4 - stateLen) return null;
  let text: string;
  try {
    text = dec.decode(b.subarray(p, p + stateLen));
  } catch {
    return null;
  }
  return { baseEpoch, baseHash, text, ranges };
}

interface SwitchRecord {
  state: StoredState;
  remove: string[];
}

/**
 * A backup's crash-atomic image store. Synchronous: every call returns only
 * once its files are in the state it promises.
 *
 * @example
 * ```ts
 * import { BackupStore } from "./backup_store.ts";
 * const store = BackupStore.open(await Deno.makeTempDir());
 * console.log(store.state); // null: a new store is empty
 * store.replaceAll(
 *   { epoch: 5, images: [{ id: "a", size: 4, digestLo: 0, digestHi: 0 }] },
 *   [new Uint8Array([1, 2, 3, 4])],
 *   false,
 * );
 * console.log(store.state?.epoch); // 5
 * store.close();
 * ```
 */
export class BackupStore {
  /** The store directory, as given to `open`. */
  readonly dir: string;
  /** What `open` recovered. */
  readonly recovery: StoreRecovery;
  #state: StoredState | null = null;
  /** state.json text of #state; the base identity a journal is tied to. */
  #stateText: string | null = null;
  #files: Deno.FsFile[] = [];
  /** The image files mapped into memory where FFI allows (else null: plain writes). */
  #maps: (MappedFile | null)[] = [];
  /** Open for the store's lifetime: holds the lock and is reused every epoch. */
  #journal: Deno.FsFile;
  /** The journal file mapped at its current size, once a commit needed it (null: plain writes). */
  #journalMap: MappedFile | null = null;
  /** Mapping the journal failed once (no FFI): plain writes from then on. */
  #journalUnmappable = false;
  #closed = false;
  /** Set when a mutation failed midway: in-memory and on-disk state may differ until reopened. */
  #broken: string | null = null;

  private constructor(dir: string, journal: Deno.FsFile) {
    this.dir = dir;
    this.#journal = journal;
    this.recovery = { journal: "none", replace: "none" };
  }

  /**
   * Opens (creating `dir` if missing) and recovers: a complete journal is
   * redone, a torn one discarded; a `replaceAll` whose switch record was
   * written is finished, an earlier one undone. Throws StoreError naming the
   * path and the cause: `dir` is a file or cannot be created, is not
   * writable, is open elsewhere, state.json is corrupt, an image file is
   * missing or its size differs from the state.
   * @example
   * ```ts
   * import { BackupStore } from "./backup_store.ts";
   * const store = BackupStore.open(await Deno.makeTempDir());
   * console.log(store.state?.epoch ?? "empty", store.recovery.journal); // empty none
   * store.close();
   * ```
   */
  static open(dir: string): BackupStore {
    let info: Deno.FileInfo | null = null;
    try {
      info = Deno.statSync(dir);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new StoreError(
          `cannot use store directory ${dir}: ${cause(e)}`,
          { cause: e },
        );
      }
    }
    if (info && !info.isDirectory) {
      throw new StoreError(
        `store directory ${dir} is not a directory (it is a file); expected a directory or a missing path`,
      );
    }
    if (!info) {
      io(
        "cannot create store directory",
        dir,
        () => Deno.mkdirSync(dir, { recursive: true }),
      );
    }
    const jpath = `${dir}/${JOURNAL}`;
    const journal = io(
      "store directory is not writable: cannot open",
      jpath,
      () =>
        Deno.openSync(jpath, {
          read: true,
          write: true,
          create: true,
        }),
    );
    let locked = false;
    try {
      locked = journal.tryLockSync(true);
    } catch (e) {
      journal.close();
      throw new StoreError(`cannot lock ${jpath}: ${cause(e)}`, { cause: e });
    }
    if (!locked) {
      journal.close();
      throw new StoreError(
        `store ${dir} is already open (${jpath} is locked by another BackupStore)`,
      );
    }
    const store = new BackupStore(dir, journal);
    try {
      // The journal may have just been created: its name must survive power
      // loss before any image is written on its strength. So must a new DIR.
      store.#syncDir();
      if (!info) syncDirPath(dirname(dir));
      store.#recover();
    } catch (e) {
      store.close();
      throw e;
    }
    return store;
  }

  /** The committed state (frozen); null for an empty (new) store. */
  get state(): StoredState | null {
    return this.#state;
  }

  /**
   * Reads image `slot` into `into`, which must be exactly its size.
   * @example
   * ```ts
   * import { BackupStore } from "./backup_store.ts";
   * const store = BackupStore.open(await Deno.makeTempDir());
   * const im = { id: "vm0", size: 3, digestLo: 0, digestHi: 0 };
   * store.replaceAll({ epoch: 1, images: [im] }, [new Uint8Array([1, 2, 3])], false);
   * const img = new Uint8Array(store.state!.images[0].size);
   * store.readImage(0, img);
   * console.log(img); // Uint8Array(3) [1, 2, 3]
   * store.close();
   * ```
   */
  readImage(slot: number, into: Uint8Array): void {
    const state = this.#usable("readImage");
    const im = this.#image(state, slot);
    if (into.length !== im.size) {
      throw new StoreError(
        `readImage: buffer is ${into.length} bytes, image "${im.id}" (slot ${slot}) is ${im.size}`,
      );
    }
    io("cannot read", this.#imagePath(im.id), () => {
      readAt(this.#files[slot], 0, into);
    });
  }

  /**
   * Reads `into.length` bytes of image `slot` from `offset` (online verify
   * reads the store a region at a time).
   */
  readRange(slot: number, offset: number, into: Uint8Array): void {
    const state = this.#usable("readRange");
    const im = this.#image(state, slot);
    if (
      !Number.isSafeInteger(offset) || offset < 0 ||
      offset + into.length > im.size
    ) {
      throw new StoreError(
        `readRange: ${into.length} bytes at ${offset} run past image "${im.id}" (slot ${slot}) of ${im.size} bytes`,
      );
    }
    io("cannot read", this.#imagePath(im.id), () => {
      readAt(this.#files[slot], offset, into);
    });
  }

  /**
   * Atomically moves the store from its current epoch to `state.epoch`
   * (which must be greater, unless `options.rejoin`: a rejoin by block
   * hashes writes only the pages that differ from another history, whose
   * epoch may be any) by writing `ranges` into the image files, in
   * order (a later overlapping range wins). `state.images` must list the
   * current ids and sizes in the same order; digests may change. If
   * `durable`, everything is fsynced before returning (journal before
   * images, images before the state); otherwise data reaches the OS page
   * cache only (safe against process crashes, not power loss).
   * @example
   * ```ts
   * import { BackupStore } from "./backup_store.ts";
   * const store = BackupStore.open(await Deno.makeTempDir());
   * const im = { id: "vm0", size: 8192, digestLo: 0, digestHi: 0 };
   * store.replaceAll({ epoch: 1, images: [im] }, [new Uint8Array(8192)], true);
   * const cur = store.state!;
   * store.commitEpoch(
   *   { epoch: cur.epoch + 1, images: cur.images },
   *   [{ slot: 0, offset: 4096, bytes: new Uint8Array(64).fill(1) }],
   *   true,
   * );
   * store.close();
   * ```
   */
  commitEpoch(
    state: StoredState,
    ranges: StoreRange[],
    durable: boolean,
    options: { rejoin?: boolean } = {},
  ): void {
    const cur = this.#usable("commitEpoch");
    const next = checkState(state, "commitEpoch: state");
    // A rejoin moves the store to another history's epoch, which may be any
    // number; recovery tells states apart by their text's hash, not epochs.
    if (!options.rejoin && next.epoch <= cur.epoch) {
      throw new StoreError(
        `commitEpoch: epoch ${next.epoch} does not follow the stored epoch ${cur.epoch}; expected a greater epoch`,
      );
    }
    if (next.images.length !== cur.images.length) {
      throw new StoreError(
        `commitEpoch: state lists ${next.images.length} images, the store holds ${cur.images.length}; use replaceAll to change the image set`,
      );
    }
    next.images.forEach((im, i) => {
      const was = cur.images[i];
      if (im.id !== was.id || im.size !== was.size) {
        throw new StoreError(
          `commitEpoch: slot ${i} is "${im.id}" (${im.size} bytes), the store holds "${was.id}" (${was.size} bytes); use replaceAll to change images`,
        );
      }
    });
    let dataBytes = 0;
    ranges.forEach((r, i) => {
      const im = this.#image(cur, r.slot, `commitEpoch: range ${i}`);
      if (!(r.bytes instanceof Uint8Array)) {
        throw new StoreError(
          `commitEpoch: range ${i} bytes is not a Uint8Array`,
        );
      }
      if (
        !isCount(r.offset) || r.offset + r.bytes.length > im.size ||
        r.bytes.length > 0xffffffff
      ) {
        throw new StoreError(
          `commitEpoch: range ${i} (slot ${r.slot}, offset ${r.offset}, length ${r.bytes.length}) lies outside image "${im.id}" of ${im.size} bytes`,
        );
      }
      dataBytes += r.bytes.length;
    });
    const text = stateText(next);
    const textBytes = enc.encode(text);
    const total = HEADER + ranges.length * RECORD + dataBytes +
      textBytes.length + 4;
    const jpath = this.#path(JOURNAL);
    const map = io(
      "cannot map journal",
      jpath,
      () => this.#mapJournal(total),
    );
    // Mapped: the record is built in the file itself. The magic stays zero
    // until the rest is written, so a crash before it leaves an idle journal
    // (and one before the checksum, a torn one).
    const j = map ? map.bytes.subarray(0, total) : new Uint8Array(total);
    const v = new DataView(j.buffer, j.byteOffset, total);
    v.setUint32(0, 0);
    v.setUint32(4, ranges.length, true);
    v.setBigUint64(8, BigInt(cur.epoch), true);
    v.setBigUint64(16, BigInt(next.epoch), true);
    v.setBigUint64(24, BigInt(dataBytes), true);
    v.setUint32(32, xxh32(enc.encode(this.#stateText!)), true);
    v.setUint32(36, textBytes.length, true);
    let p = HEADER;
    for (const r of ranges) {
      v.setUint32(p, r.slot, true);
      v.setUint32(p + 4, r.bytes.length, true);
      v.setBigUint64(p + 8, BigInt(r.offset), true);
      j.set(r.bytes, p + RECORD);
      p += RECORD + r.bytes.length;
    }
    j.set(textBytes, p);
    j.set(MAGIC, 0);
    faultPoint("store.journal.unsealed");
    v.setUint32(total - 4, xxh32(j.subarray(0, total - 4)), true);

    this.#mutate("commitEpoch", () => {
      io("cannot write journal", jpath, () => {
        if (map) {
          if (durable) map.sync();
        } else {
          writeAt(this.#journal, 0, j);
          this.#journal.truncateSync(total); // normally already empty; never leave a tail
          if (durable) this.#journal.syncDataSync();
        }
      });
      crashPoint("journal");
      faultPoint("store.journal.written");
      this.#applyRanges(cur, ranges, durable);
      this.#writeState(next, text, durable);
      crashPoint("state");
      faultPoint("store.state.renamed");
      io("cannot clear journal", jpath, () => this.#clearJournal(false));
    });
  }

  /**
   * Replaces every image (base sync, first sync), possibly with different
   * ids and sizes: `contents[i]` is image i's full bytes. Atomic: the new
   * files are written as `ID.img.new` (fsynced if `durable`), then a switch
   * record (`switch.json`) commits the change, the files are renamed into
   * place, state.json is written, and images no longer listed are removed.
   * A crash before the switch record leaves the old checkpoint; after it,
   * `open` finishes the switch.
   * @example
   * ```ts
   * import { BackupStore } from "./backup_store.ts";
   * const store = BackupStore.open(await Deno.makeTempDir());
   * const a = new Uint8Array(4096), b = new Uint8Array(8192);
   * store.replaceAll({
   *   epoch: 10,
   *   images: [
   *     { id: "vm0", size: a.length, digestLo: 1, digestHi: 2 },
   *     { id: "vm1", size: b.length, digestLo: 3, digestHi: 4 },
   *   ],
   * }, [a, b], true);
   * store.close();
   * ```
   */
  replaceAll(
    state: StoredState,
    contents: Uint8Array[],
    durable: boolean,
  ): void {
    this.#open("replaceAll");
    const next = checkState(state, "replaceAll: state");
    if (contents.length !== next.images.length) {
      throw new StoreError(
        `replaceAll: ${contents.length} contents for ${next.images.length} images; expected one per image`,
      );
    }
    next.images.forEach((im, i) => {
      if (!(contents[i] instanceof Uint8Array)) {
        throw new StoreError(`replaceAll: contents[${i}] is not a Uint8Array`);
      }
      if (contents[i].length !== im.size) {
        throw new StoreError(
          `replaceAll: image "${im.id}" is declared ${im.size} bytes, contents[${i}] is ${
            contents[i].length
          }`,
        );
      }
    });
    const old = this.#state;
    this.#mutate("replaceAll", () => {
      // A journal must never outlive the base it was written against.
      io(
        "cannot clear journal",
        this.#path(JOURNAL),
        () => this.#clearJournal(durable),
      );
      next.images.forEach((im, i) => {
        const p = this.#imagePath(im.id) + ".new";
        io("cannot write", p, () => {
          const f = Deno.openSync(p, {
            write: true,
            create: true,
            truncate: true,
          });
          try {
            writeAll(f, contents[i]);
            if (durable) f.syncSync();
          } finally {
            f.close();
          }
        });
      });
      crashPoint("staged");
      faultPoint("store.replace.staged");
      const record: SwitchRecord = {
        state: next,
        remove: old ? old.images.map((i) => i.id) : [],
      };
      this.#writeFileAtomic(
        SWITCH,
        JSON.stringify({
          format: FORMAT,
          state: JSON.parse(stateText(next)),
          remove: record.remove,
        }) + "\n",
        durable,
      );
      crashPoint("switch");
      faultPoint("store.replace.switched");
      this.#closeImages();
      this.#finishSwitch(record, durable);
      this.#openImages(next);
    });
  }

  /**
   * Makes the current state durable: fsyncs every image, the state file and
   * the directory (for an epoch committed without `durable`, before acking it
   * as durable).
   */
  sync(): void {
    const state = this.#usable("sync");
    this.#files.forEach((f, s) =>
      io(
        "cannot fsync",
        this.#imagePath(state.images[s].id),
        () => f.syncSync(),
      )
    );
    this.#writeFileAtomic(STATE, this.#stateText!, true);
  }

  /** Closes the files and releases the lock; further calls throw. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeImages();
    this.#journalMap?.close();
    this.#journalMap = null;
    try {
      this.#journal.close();
    } catch {
      // already closed: nothing left to release
    }
  }

  // ---- internals ----

  #path(name: string): string {
    return `${this.dir}/${name}`;
  }

  #imagePath(id: string): string {
    return `${this.dir}/${id}.img`;
  }

  #open(op: string): void {
    if (this.#closed) {
      throw new StoreError(`${op}: store ${this.dir} is closed`);
    }
    if (this.#broken) {
      throw new StoreError(
        `${op}: store ${this.dir} needs to be reopened to recover: ${this.#broken}`,
      );
    }
  }

  /** Checks the store is open, usable and non-empty; returns the state. */
  #usable(op: string): StoredState {
    this.#open(op);
    if (!this.#state) {
      throw new StoreError(
        `${op}: store ${this.dir} is empty; expected replaceAll first`,
      );
    }
    return this.#state;
  }

  #image(state: StoredState, slot: number, who = "slot"): StoredImage {
    if (!Number.isInteger(slot) || slot < 0 || slot >= state.images.length) {
      throw new StoreError(
        `${who}: slot ${slot} out of range; the store holds ${state.images.length} images`,
      );
    }
    return state.images[slot];
  }

  /** Runs a mutation; if it fails midway, the store refuses further use until reopened. */
  #mutate(op: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.#broken = `${op} failed: ${cause(e)}`;
      throw e;
    }
  }

  #applyRanges(state: StoredState, ranges: StoreRange[], sync: boolean): void {
    const touched = new Set<number>();
    const half = ranges.length >> 1;
    ranges.forEach((r, i) => {
      if (i === half) crashPoint("some-images");
      if (i === half) faultPoint("store.apply.mid");
      const path = this.#imagePath(state.images[r.slot].id);
      const map = this.#maps[r.slot];
      if (map) map.bytes.set(r.bytes, r.offset);
      else {
        io(
          "cannot write",
          path,
          () => writeAt(this.#files[r.slot], r.offset, r.bytes),
        );
      }
      touched.add(r.slot);
    });
    if (sync) {
      faultPoint("store.images.fsync");
      for (const s of touched) {
        io(
          "cannot fsync",
          this.#imagePath(state.images[s].id),
          () => {
            this.#maps[s]?.sync();
            this.#files[s].syncDataSync();
          },
        );
      }
    }
    crashPoint("images");
  }

  /**
   * The journal mapped with room for `total` bytes, growing the file (to
   * whole MiB, at least doubling) when it is too small; null where mapping
   * is unavailable.
   */
  #mapJournal(total: number): MappedFile | null {
    const map = this.#journalMap;
    if (map && map.size >= total) return map;
    if (!map && this.#journalUnmappable) return null;
    const size = Math.max(
      Math.ceil(total / JOURNAL_GROWTH) * JOURNAL_GROWTH,
      2 * (map?.size ?? 0),
    );
    map?.close();
    this.#journalMap = null;
    // Idle (its magic is zero, or it is empty), so it may be overwritten.
    // Written, not extended with truncate: a hole stored into through the
    // mapping on a full disk kills the process with SIGBUS, where a write
    // fails with ENOSPC, which the backup reports.
    writeZeros(this.#journal, size);
    this.#journalMap = mapFile(this.#path(JOURNAL), size);
    if (!this.#journalMap) {
      this.#journalUnmappable = true;
      this.#journal.truncateSync(0);
    }
    return this.#journalMap;
  }

  /** Marks the journal idle: zeroes a mapped journal's magic, else empties the file. */
  #clearJournal(durable: boolean): void {
    const map = this.#journalMap;
    if (map) {
      map.bytes.fill(0, 0, 4);
      if (durable) map.sync();
    } else {
      this.#journal.truncateSync(0);
      if (durable) this.#journal.syncSync();
    }
  }

  #syncDir(): void {
    syncDirPath(this.dir);
  }

  /** Write-to-temp then rename, so the file is always either old or new. */
  #writeFileAtomic(name: string, text: string, durable: boolean): void {
    const dst = this.#path(name);
    const tmp = dst + ".tmp";
    io("cannot write", tmp, () => {
      const f = Deno.openSync(tmp, {
        write: true,
        create: true,
        truncate: true,
      });
      try {
        writeAll(f, enc.encode(text));
        if (durable) f.syncSync();
      } finally {
        f.close();
      }
    });
    faultPoint("store.rename.before");
    io("cannot rename into place", dst, () => Deno.renameSync(tmp, dst));
    // The rename (and earlier renames in DIR) must be on disk before anything depends on it.
    if (durable) this.#syncDir();
  }

  #writeState(state: StoredState, text: string, durable: boolean): void {
    this.#writeFileAtomic(STATE, text, durable);
    this.#state = freeze(state);
    this.#stateText = text;
  }

  /** Completes a committed switch; idempotent, so recovery can repeat it. */
  #finishSwitch(rec: SwitchRecord, durable: boolean): void {
    for (const im of rec.state.images) {
      const dst = this.#imagePath(im.id);
      const src = dst + ".new";
      if (exists(src)) {
        io("cannot rename into place", src, () => Deno.renameSync(src, dst));
        continue;
      }
      // Already renamed by the interrupted run: it must be the new file.
      const size = exists(dst) ? Deno.statSync(dst).size : -1;
      if (size !== im.size) {
        throw new StoreError(
          `${
            this.#path(SWITCH)
          }: image "${im.id}" has neither ${src} nor a ${im.size}-byte ${dst} (found ${
            size < 0 ? "none" : `${size} bytes`
          })`,
        );
      }
    }
    crashPoint("renamed");
    this.#writeState(rec.state, stateText(rec.state), durable);
    const keep = new Set(rec.state.images.map((i) => i.id));
    for (const id of rec.remove) {
      if (!keep.has(id)) removeIfExists(this.#imagePath(id));
    }
    removeIfExists(this.#path(SWITCH));
    // A switch record that reappeared after power loss would be replayed over later epochs.
    if (durable) this.#syncDir();
  }

  #openImages(state: StoredState): void {
    this.#closeImages();
    for (const im of state.images) {
      const p = this.#imagePath(im.id);
      const f = io(
        "cannot open image file",
        p,
        () => Deno.openSync(p, { read: true, write: true }),
      );
      this.#files.push(f);
      const size = io("cannot stat", p, () => f.statSync().size);
      if (size !== im.size) {
        throw new StoreError(
          `image file ${p} is ${size} bytes; ${
            this.#path(STATE)
          } says ${im.size}`,
        );
      }
      this.#maps.push(mapFile(p, size));
    }
  }

  #closeImages(): void {
    for (const m of this.#maps) m?.close();
    this.#maps = [];
    for (const f of this.#files) {
      try {
        f.close();
      } catch {
        // already closed
      }
    }
    this.#files = [];
  }

  #recover(): void {
    for (const name of [STATE + ".tmp", SWITCH + ".tmp"]) {
      removeIfExists(this.#path(name));
    }
    const swPath = this.#path(SWITCH);
    if (exists(swPath)) {
      const text = io(
        "cannot read",
        swPath,
        () => Deno.readTextFileSync(swPath),
      );
      let raw: { format?: unknown; state?: unknown; remove?: unknown };
      try {
        raw = JSON.parse(text);
      } catch (e) {
        throw new StoreError(`${swPath} is corrupt: not JSON (${cause(e)})`);
      }
      if (raw?.format !== FORMAT) {
        throw new StoreError(
          `${swPath} is corrupt: expected format "${FORMAT}"`,
        );
      }
      const state = checkState(raw.state, `${swPath} is corrupt: state`);
      const remove = raw.remove;
      if (!Array.isArray(remove)) {
        throw new StoreError(`${swPath} is corrupt: remove is not an array`);
      }
      for (const id of remove) {
        try {
          checkImageId(id);
        } catch (e) {
          throw new StoreError(`${swPath} is corrupt: remove: ${cause(e)}`);
        }
      }
      // Recovery always syncs: it cannot know whether the interrupted call was durable.
      this.#finishSwitch({ state, remove: remove as string[] }, true);
      this.recovery.replace = "finished";
    } else {
      // Staged files of a replaceAll that never committed its switch.
      const names = io(
        "cannot list",
        this.dir,
        () => [...Deno.readDirSync(this.dir)].map((e) => e.name),
      );
      for (const n of names) {
        if (n.endsWith(".img.new")) {
          removeIfExists(this.#path(n));
          this.recovery.replace = "undone";
        }
      }
    }

    const sPath = this.#path(STATE);
    if (exists(sPath)) {
      const text = io("cannot read", sPath, () => Deno.readTextFileSync(sPath));
      this.#state = freeze(parseStateText(text, sPath));
      this.#stateText = text;
      this.#openImages(this.#state);
    }

    const jPath = this.#path(JOURNAL);
    const jlen = io("cannot stat", jPath, () => this.#journal.statSync().size);
    if (jlen === 0) return;
    const bytes = new Uint8Array(jlen);
    io("cannot read", jPath, () => readAt(this.#journal, 0, bytes));
    if (journalIdle(bytes)) return;
    const j = parseJournal(bytes);
    if (!j) {
      this.recovery.journal = "discarded-torn";
    } else if (
      this.#state && j.baseEpoch === this.#state.epoch &&
      j.baseHash === xxh32(enc.encode(this.#stateText!))
    ) {
      const next = parseStateText(j.text, `${jPath} (state)`);
      const cur = this.#state;
      const fits = next.images.length === cur.images.length &&
        next.images.every((im, i) =>
          im.id === cur.images[i].id && im.size === cur.images[i].size
        ) &&
        j.ranges.every((r) =>
          r.slot < cur.images.length &&
          r.offset + r.bytes.length <= cur.images[r.slot].size
        );
      if (!fits) {
        throw new StoreError(
          `${jPath} is corrupt: its checksum holds but its images or ranges do not match ${sPath}`,
        );
      }
      this.#applyRanges(cur, j.ranges, true);
      this.#writeState(next, j.text, true);
      this.recovery.journal = "redone";
    } else if (this.#stateText === j.text) {
      this.recovery.journal = "already-applied";
    } else {
      this.recovery.journal = "discarded-stale";
    }
    io("cannot clear journal", jPath, () => {
      this.#journal.truncateSync(0);
      this.#journal.syncSync();
    });
  }
}
