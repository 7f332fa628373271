/**
 * `file:PATH`: a regular file, a `/dev/shm` file or a device, whose contents
 * are one image, read whole at every capture.
 * @module
 */

import type { ImageSpec } from "./encoder.ts";
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
