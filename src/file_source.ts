/**
 * `file:PATH`: a regular file, a `/dev/shm` file or a device, whose contents
 * are one image, copied whole at every capture.
 * @module
 */

import type { ImageSpec } from "./encoder.ts";
import { mapFile, type MappedFile } from "./_mmap.ts";
import { readFileInto } from "./_read_file.ts";
import {
  type CaptureResult,
  checkInto,
  imageIdFor,
  type Source,
  SourceError,
} from "./source.ts";

/** One file or device, read whole at every capture. */
export class FileSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  /** The file's mapping; undefined until the first capture tried, null if mapping is unavailable. */
  #map: MappedFile | null | undefined = undefined;
  #mappedIno: number | null = null;
  #warnedGrowth = false;
  constructor(
    readonly path: string,
    size: number,
    id = imageIdFor(path),
    readonly note: (line: string) => void = (l) => console.error(l),
  ) {
    this.name = `file:${path}`;
    this.images = [{ id, size }];
  }

  /**
   * Opens `path`, taking its current size as the image size. `note` gets
   * warnings (default: stderr).
   */
  static async open(
    path: string,
    id?: string,
    note?: (line: string) => void,
  ): Promise<FileSource> {
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
    return new FileSource(path, size, id, note);
  }

  /**
   * Copies the file into `into[0]`. A regular file is copied from a memory
   * map (FFI), which measured twice as fast as chunked reads (bench
   * qemu_pause: 25 ms against 49 ms for 256 MiB); devices, and hosts without
   * FFI, are read. A file that shrank is an error (checked first: touching a
   * mapped page past the end of the file would kill the process), one that
   * grew is captured at its first size (and reported once), one replaced by
   * another file (a new inode) is mapped again.
   */
  capture(into: Uint8Array[]): Promise<CaptureResult> {
    try {
      return Promise.resolve(this.#capture(into));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  #capture(into: Uint8Array[]): CaptureResult {
    checkInto(this.images, into);
    const t0 = performance.now();
    const buf = into[0];
    let info: Deno.FileInfo;
    try {
      info = Deno.statSync(this.path);
    } catch (e) {
      throw new SourceError(
        `file:${this.path}: cannot stat: ${(e as Error).message}`,
      );
    }
    if (info.isFile) {
      if (info.size < buf.length) {
        throw new SourceError(
          `file:${this.path}: file shrank to ${info.size} bytes, expected ${buf.length}`,
        );
      }
      if (info.size > buf.length && !this.#warnedGrowth) {
        this.#warnedGrowth = true;
        this.note(
          `file:${this.path}: file grew to ${info.size} bytes; only the first ${buf.length} (its size at open) are replicated`,
        );
      }
      if (this.#map && this.#mappedIno !== info.ino) {
        this.#map.close();
        this.#map = undefined;
      }
      if (this.#map === undefined) {
        this.#map = mapFile(this.path, buf.length, { readOnly: true });
        this.#mappedIno = info.ino;
      }
      if (this.#map) {
        buf.set(this.#map.bytes);
        return { pauseMs: performance.now() - t0 };
      }
    }
    try {
      readFileInto(this.path, buf);
    } catch (e) {
      throw new SourceError(`file:${this.path}: ${(e as Error).message}`);
    }
    return { pauseMs: performance.now() - t0 };
  }

  close(): Promise<void> {
    this.#map?.close();
    this.#map = undefined;
    return Promise.resolve();
  }
}
