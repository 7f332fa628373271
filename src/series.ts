/**
 * Image series: the replay and benchmark format.
 *
 * A series is a directory holding `meta.json` and raw images `0000.img`,
 * `0001.img`, … each exactly `meta.size` bytes: the contents of one memory
 * image at successive checkpoints.
 *
 * @example Write a two-epoch series and read it back
 * ```ts
 * import { openSeries, SeriesWriter } from "./series.ts";
 * const dir = await Deno.makeTempDir();
 * const w = await SeriesWriter.create(dir, {
 *   name: "demo",
 *   source: "synthetic",
 *   pageSize: 4096,
 *   size: 8192,
 *   intervalMs: 100,
 *   notes: "",
 * });
 * await w.append(new Uint8Array(8192));
 * await w.append(new Uint8Array(8192).fill(1));
 * await w.close();
 * const s = await openSeries(dir);
 * const img = await s.readImage(1);
 * console.log(s.meta.epochs, img[0]); // 2 1
 * ```
 *
 * @module
 */

/** The page size every series uses. */
export const SERIES_PAGE_SIZE = 4096;

/** Contents of a series' `meta.json`. */
export interface SeriesMeta {
  /** Short name of the series (e.g. `redis-benchmark`). */
  name: string;
  /** What was captured (e.g. `pid:1234 redis-server`, `file:/dev/shm/vm`). */
  source: string;
  /** Page size in bytes; always 4096. */
  pageSize: number;
  /** Size of every image in bytes. */
  size: number;
  /** Number of images (epochs) in the series. */
  epochs: number;
  /** Interval between captures in milliseconds. */
  intervalMs: number;
  /** Free text: program, version, load command. */
  notes: string;
}

/** An opened, validated image series. */
export interface Series {
  /** Directory holding the series. */
  readonly dir: string;
  /** Validated metadata. */
  readonly meta: SeriesMeta;
  /** Path of the raw image file for `epoch` (0-based). */
  imagePath(epoch: number): string;
  /**
   * Read image `epoch` into `into` (allocated if absent, must be at least
   * `meta.size` bytes long); returns the filled view of exactly `meta.size`
   * bytes.
   */
  readImage(epoch: number, into?: Uint8Array): Promise<Uint8Array>;
}

/**
 * File name of image `epoch`: 4-digit zero-padded, more digits beyond 9999.
 *
 * @example
 * ```ts
 * import { imageFileName } from "./series.ts";
 * console.log(imageFileName(7)); // "0007.img"
 * ```
 */
export function imageFileName(epoch: number): string {
  return `${String(epoch).padStart(4, "0")}.img`;
}

function join(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

function checkMeta(raw: unknown, file: string): SeriesMeta {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new Error(`${file}: expected a JSON object, got ${typeName(raw)}`);
  }
  const o = raw as Record<string, unknown>;
  const str = (k: string): string => {
    const v = o[k];
    if (typeof v !== "string") {
      throw new Error(
        `${file}: field "${k}" must be a string, got ${typeName(v)}`,
      );
    }
    return v;
  };
  const int = (k: string, min: number): number => {
    const v = o[k];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
      throw new Error(
        `${file}: field "${k}" must be an integer >= ${min}, got ${
          JSON.stringify(v) ?? "undefined"
        }`,
      );
    }
    return v;
  };
  const meta: SeriesMeta = {
    name: str("name"),
    source: str("source"),
    pageSize: int("pageSize", 1),
    size: int("size", 1),
    epochs: int("epochs", 1),
    intervalMs: int("intervalMs", 0),
    notes: str("notes"),
  };
  if (meta.pageSize !== SERIES_PAGE_SIZE) {
    throw new Error(
      `${file}: field "pageSize" must be ${SERIES_PAGE_SIZE}, got ${meta.pageSize}`,
    );
  }
  return meta;
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return v === undefined ? "nothing (field missing)" : typeof v;
}

class OpenedSeries implements Series {
  constructor(readonly dir: string, readonly meta: SeriesMeta) {}

  imagePath(epoch: number): string {
    if (
      !Number.isSafeInteger(epoch) || epoch < 0 || epoch >= this.meta.epochs
    ) {
      throw new RangeError(
        `series ${this.dir}: epoch ${epoch} out of range, expected an integer in 0..${
          this.meta.epochs - 1
        }`,
      );
    }
    return join(this.dir, imageFileName(epoch));
  }

  async readImage(epoch: number, into?: Uint8Array): Promise<Uint8Array> {
    const size = this.meta.size;
    const path = this.imagePath(epoch);
    if (into !== undefined && into.length < size) {
      throw new RangeError(
        `readImage: buffer of ${into.length} bytes is too small, expected at least ${size}`,
      );
    }
    const buf = into === undefined ? new Uint8Array(size) : into;
    const view = buf.subarray(0, size);
    using f = await Deno.open(path, { read: true });
    let off = 0;
    while (off < size) {
      const n = await f.read(view.subarray(off));
      if (n === null) {
        throw new Error(
          `${path}: file ended after ${off} bytes, expected ${size}`,
        );
      }
      off += n;
    }
    return view;
  }
}

/**
 * Open and validate an image series: `meta.json` fields (types, `pageSize`
 * 4096, `size` > 0, `epochs` >= 1) and that every image file exists with
 * exactly `size` bytes.
 *
 * @example
 * ```ts
 * import { openSeries } from "./series.ts";
 * const s = await openSeries("/work/data/series/redis");
 * console.log(s.meta.epochs, s.imagePath(0));
 * ```
 */
export async function openSeries(dir: string): Promise<Series> {
  const metaPath = join(dir, "meta.json");
  let text: string;
  try {
    text = await Deno.readTextFile(metaPath);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        `${metaPath}: not found, expected an image series directory with meta.json`,
      );
    }
    throw e;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(
      `${metaPath}: invalid JSON (${
        (e as Error).message
      }), expected a meta object`,
    );
  }
  const meta = checkMeta(raw, metaPath);
  for (let i = 0; i < meta.epochs; i++) {
    const p = join(dir, imageFileName(i));
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(p);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(
          `${p}: missing, expected ${meta.epochs} images of ${meta.size} bytes`,
        );
      }
      throw e;
    }
    if (!st.isFile || st.size !== meta.size) {
      throw new Error(
        `${p}: ${
          st.isFile ? `${st.size} bytes` : "not a regular file"
        }, expected exactly ${meta.size} bytes (meta.json "size")`,
      );
    }
  }
  return new OpenedSeries(dir, meta);
}

/**
 * Opens a recording: `dir` itself when it is a series (one image), otherwise
 * every subdirectory of `dir` that is a series, in name order (one image
 * each, named after its subdirectory: what `record` writes for a source with
 * several images). The series of a set must have the same number of epochs.
 *
 * @example
 * ```ts
 * import { openSeriesSet } from "./series.ts";
 * const set = await openSeriesSet("/work/data/recordings/proc");
 * console.log(set.map((s) => s.dir));
 * ```
 */
export async function openSeriesSet(dir: string): Promise<Series[]> {
  if (await isSeriesDir(dir)) return [await openSeries(dir)];
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isDirectory && await isSeriesDir(join(dir, e.name))) {
        names.push(e.name);
      }
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        `${dir}: not found, expected an image series directory (meta.json) or a directory of them`,
      );
    }
    throw e;
  }
  if (names.length === 0) {
    throw new Error(
      `${dir}: holds no meta.json and no subdirectory with one, expected an image series or a directory of them`,
    );
  }
  names.sort();
  const set: Series[] = [];
  for (const n of names) set.push(await openSeries(join(dir, n)));
  const epochs = set[0].meta.epochs;
  for (const s of set) {
    if (s.meta.epochs !== epochs) {
      throw new Error(
        `${s.dir}: ${s.meta.epochs} epochs, expected ${epochs} like ${
          set[0].dir
        } (the series of a recording are captured together)`,
      );
    }
  }
  return set;
}

/**
 * Test whether `dir` already holds an image series (has a `meta.json`).
 *
 * @example
 * ```ts
 * import { isSeriesDir } from "./series.ts";
 * console.log(await isSeriesDir("/tmp")); // false
 * ```
 */
export async function isSeriesDir(dir: string): Promise<boolean> {
  try {
    await Deno.stat(join(dir, "meta.json"));
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Writes an image series one image at a time; `close()` writes `meta.json`
 * with the final epoch count (so a series without `meta.json` is incomplete).
 *
 * @example
 * ```ts
 * import { SeriesWriter } from "./series.ts";
 * const w = await SeriesWriter.create(await Deno.makeTempDir(), {
 *   name: "x", source: "synthetic", pageSize: 4096, size: 4096,
 *   intervalMs: 0, notes: "",
 * });
 * const epoch = await w.append(new Uint8Array(4096)); // 0
 * const meta = await w.close(); // meta.epochs === 1
 * ```
 */
export class SeriesWriter {
  #dir: string;
  #meta: Omit<SeriesMeta, "epochs">;
  #epochs = 0;
  #closed = false;
  #pending: Promise<number>[] = [];

  private constructor(dir: string, meta: Omit<SeriesMeta, "epochs">) {
    this.#dir = dir;
    this.#meta = meta;
  }

  /**
   * Create `dir` (and parents) and prepare to write images into it. Removes a
   * stale `meta.json` so an interrupted rewrite never looks complete.
   */
  static async create(
    dir: string,
    meta: Omit<SeriesMeta, "epochs">,
  ): Promise<SeriesWriter> {
    checkMeta({ ...meta, epochs: 1 }, `series ${dir}`);
    await Deno.mkdir(dir, { recursive: true });
    try {
      await Deno.remove(join(dir, "meta.json"));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return new SeriesWriter(dir, { ...meta });
  }

  /** Directory being written. */
  get dir(): string {
    return this.#dir;
  }

  /** Number of images appended so far. */
  get epochs(): number {
    return this.#epochs;
  }

  /** Replace the notes that `close()` writes (e.g. with stats known only at the end). */
  setNotes(notes: string): void {
    this.#meta = { ...this.#meta, notes };
  }

  /**
   * Append one image (exactly `size` bytes); returns its epoch index. The
   * index is reserved at the call, so appends may overlap; `close()` waits
   * for every one of them.
   */
  append(image: Uint8Array): Promise<number> {
    if (this.#closed) {
      return Promise.reject(new Error(`series ${this.#dir}: writer is closed`));
    }
    if (image.length !== this.#meta.size) {
      return Promise.reject(
        new RangeError(
          `series ${this.#dir}: image of ${image.length} bytes, expected exactly ${this.#meta.size}`,
        ),
      );
    }
    const epoch = this.#epochs++;
    const p = Deno.writeFile(join(this.#dir, imageFileName(epoch)), image)
      .then(() => epoch);
    this.#pending.push(p);
    return p;
  }

  /** Write `meta.json` with the final epoch count and return the meta. */
  async close(): Promise<SeriesMeta> {
    if (this.#closed) throw new Error(`series ${this.#dir}: writer is closed`);
    if (this.#epochs < 1) {
      throw new Error(
        `series ${this.#dir}: no images appended, expected at least 1 before close()`,
      );
    }
    this.#closed = true;
    for (const r of await Promise.allSettled(this.#pending)) {
      if (r.status === "rejected") throw r.reason;
    }
    const m = this.#meta;
    const meta: SeriesMeta = {
      name: m.name,
      source: m.source,
      pageSize: m.pageSize,
      size: m.size,
      epochs: this.#epochs,
      intervalMs: m.intervalMs,
      notes: m.notes,
    };
    const tmp = join(this.#dir, "meta.json.tmp");
    await Deno.writeTextFile(tmp, JSON.stringify(meta, null, 2) + "\n");
    await Deno.rename(tmp, join(this.#dir, "meta.json"));
    return meta;
  }
}
