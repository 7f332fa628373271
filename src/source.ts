/**
 * Sources: what a primary replicates. Each gives a fixed set of images and
 * captures their current contents once per epoch.
 *
 * - `file:PATH` — a file or device whose contents are one image (id: its base name)
 * - `series:DIR` — an image series, one image per epoch (holds at the last one)
 * - `synthetic:SPEC` — the seeded synthetic workload (`images=3,size=16M,seed=1,dirty=0.02`)
 * @module
 */

import type { ImageSpec } from "./encoder.ts";
import { openSeries, type Series } from "./series.ts";
import { parseSyntheticSpec, SyntheticWorkload } from "./synthetic.ts";

/** What one capture did. */
export interface CaptureResult {
  /** How long the source was paused (or read, if it is not paused), ms. */
  pauseMs: number;
  /**
   * Per image, a bitmap of the pages that may have changed since the last
   * capture (bit `p & 31` of word `p >>> 5`), when the source keeps a dirty
   * log; null or absent: unknown, the encoder scans the whole image.
   */
  dirtyPages?: (Uint32Array | null)[];
}

/** Something with images to replicate. */
export interface Source {
  /** What it is, for logs: the spec it was opened from. */
  readonly name: string;
  readonly images: ImageSpec[];
  /**
   * Writes each image's current contents into `into[i]` (exactly
   * `images[i].size` bytes). Callers pass the same buffers every time, so a
   * source with a dirty log may write only the pages it reports in
   * `dirtyPages`.
   */
  capture(into: Uint8Array[]): Promise<CaptureResult>;
  close(): Promise<void>;
}

/** A source spec was bad or its target unusable. */
export class SourceError extends Error {
  override name = "SourceError";
}

function checkInto(images: ImageSpec[], into: Uint8Array[]): void {
  if (into.length !== images.length) {
    throw new RangeError(
      `capture into ${into.length} buffers, expected ${images.length}`,
    );
  }
  images.forEach((s, i) => {
    if (into[i].length !== s.size) {
      throw new RangeError(
        `capture buffer for "${s.id}" is ${
          into[i].length
        } bytes, expected ${s.size}`,
      );
    }
  });
}

/** An image id from a file name (without a `.img` suffix): the characters image ids allow. */
export function imageIdFor(path: string): string {
  const base = (path.split("/").filter(Boolean).at(-1) ?? "image").replace(
    /\.img$/,
    "",
  );
  const id = base.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 128);
  return id === "." || id === ".." || id === "" ? "image" : id;
}

/** One file or device, read whole at every capture. */
export class FileSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  constructor(readonly path: string, size: number, id = imageIdFor(path)) {
    this.name = `file:${path}`;
    this.images = [{ id, size }];
  }

  /** Opens `path`, taking its current size as the image size. */
  static async open(path: string, id?: string): Promise<FileSource> {
    let size: number;
    try {
      const f = await Deno.open(path, { read: true });
      try {
        size = (await f.stat()).isFile
          ? (await f.stat()).size
          : await f.seek(0, Deno.SeekMode.End);
      } finally {
        f.close();
      }
    } catch (e) {
      throw new SourceError(
        `file:${path}: cannot open for reading: ${(e as Error).message}`,
      );
    }
    if (size === 0) {
      throw new SourceError(`file:${path}: is empty, expected an image`);
    }
    return new FileSource(path, size, id);
  }

  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    const t0 = performance.now();
    const buf = into[0];
    let f: Deno.FsFile;
    try {
      f = await Deno.open(this.path, { read: true });
    } catch (e) {
      throw new SourceError(
        `file:${this.path}: cannot open for reading: ${(e as Error).message}`,
      );
    }
    try {
      let pos = 0;
      while (pos < buf.length) {
        const n = await f.read(buf.subarray(pos));
        if (n === null) {
          throw new SourceError(
            `file:${this.path}: shrank to ${pos} bytes, expected ${buf.length}`,
          );
        }
        pos += n;
      }
    } finally {
      f.close();
    }
    return { pauseMs: performance.now() - t0 };
  }

  async close(): Promise<void> {}
}

/** An image series replayed one image per epoch; after the last it stays there. */
export class SeriesSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  #next = 0;
  constructor(readonly series: Series) {
    this.name = `series:${series.dir}`;
    this.images = [{
      id: imageIdFor(series.meta.name || series.dir),
      size: series.meta.size,
    }];
  }

  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    const t0 = performance.now();
    const k = Math.min(this.#next, this.series.meta.epochs - 1);
    await this.series.readImage(k, into[0]);
    this.#next++;
    return { pauseMs: performance.now() - t0 };
  }

  async close(): Promise<void> {}
}

/**
 * The synthetic workload: every capture after the first moves it one step and
 * reports the pages the step wrote (a hypervisor's dirty log), copying only those.
 */
export class SyntheticSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  #last: Uint8Array[] | null = null;
  constructor(readonly workload: SyntheticWorkload, spec = "") {
    this.name = `synthetic:${spec}`;
    this.images = workload.specs;
  }

  capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    const t0 = performance.now();
    const same = this.#last !== null &&
      this.#last.every((b, i) => b === into[i]);
    if (this.#last) this.workload.step();
    if (!same) {
      this.workload.images.forEach((img, i) => into[i].set(img));
      this.#last = into.slice();
      return Promise.resolve({ pauseMs: performance.now() - t0 });
    }
    this.workload.images.forEach((img, i) => {
      const touched = this.workload.touched[i];
      for (let w = 0; w < touched.length; w++) {
        let bits = touched[w];
        while (bits !== 0) {
          const p = (w << 5) + 31 - Math.clz32(bits & -bits);
          bits &= bits - 1;
          const off = p * 4096;
          into[i].set(img.subarray(off, Math.min(off + 4096, img.length)), off);
        }
      }
    });
    return Promise.resolve({
      pauseMs: performance.now() - t0,
      dirtyPages: this.workload.touched,
    });
  }

  async close(): Promise<void> {}
}

/** Several sources as one: their images side by side, captured together. */
export class MultiSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  constructor(readonly parts: Source[]) {
    this.name = parts.map((p) => p.name).join(" ");
    this.images = parts.flatMap((p) => p.images);
    const ids = new Set<string>();
    for (const s of this.images) {
      if (ids.has(s.id)) {
        throw new SourceError(
          `two sources give an image named "${s.id}"; image ids must differ`,
        );
      }
      ids.add(s.id);
    }
  }

  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    let at = 0, pauseMs = 0;
    const dirtyPages: (Uint32Array | null)[] = [];
    for (const p of this.parts) {
      const n = p.images.length;
      const r = await p.capture(into.slice(at, at + n));
      pauseMs += r.pauseMs;
      for (let i = 0; i < n; i++) dirtyPages.push(r.dirtyPages?.[i] ?? null);
      at += n;
    }
    return { pauseMs, dirtyPages };
  }

  async close(): Promise<void> {
    for (const p of this.parts) await p.close();
  }
}

/**
 * Opens a source from its spec.
 * @example
 * ```ts
 * const source = await openSource("synthetic:images=2,size=4M");
 * source.images; // [{ id: "img0", size: 4194304 }, { id: "img1", ... }]
 * ```
 */
export async function openSource(spec: string): Promise<Source> {
  const colon = spec.indexOf(":");
  const kind = colon < 0 ? "" : spec.slice(0, colon);
  const rest = colon < 0 ? spec : spec.slice(colon + 1);
  switch (kind) {
    case "file":
      if (!rest) throw new SourceError(`"${spec}": expected file:PATH`);
      return await FileSource.open(rest);
    case "series":
      if (!rest) throw new SourceError(`"${spec}": expected series:DIR`);
      try {
        return new SeriesSource(await openSeries(rest));
      } catch (e) {
        throw new SourceError(`${spec}: ${(e as Error).message}`);
      }
    case "synthetic":
      try {
        return new SyntheticSource(
          new SyntheticWorkload(parseSyntheticSpec(rest)),
          rest,
        );
      } catch (e) {
        throw new SourceError(`${spec}: ${(e as Error).message}`);
      }
    default:
      throw new SourceError(
        `unknown source "${spec}": expected file:PATH, series:DIR or synthetic:SPEC`,
      );
  }
}

/** Opens every spec; several become one {@linkcode MultiSource}. */
export async function openSources(specs: string[]): Promise<Source> {
  if (specs.length === 0) {
    throw new SourceError("no --source given: expected at least one");
  }
  const parts: Source[] = [];
  for (const s of specs) parts.push(await openSource(s));
  return parts.length === 1 ? parts[0] : new MultiSource(parts);
}
