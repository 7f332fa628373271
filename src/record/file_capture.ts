/**
 * Capture a file's full contents, e.g. the shared-memory file of a QEMU guest
 * (`-object memory-backend-file,...,share=on`) or any large file that changes.
 *
 * The size is fixed at the first capture. A file that later shrinks is an
 * error; one that grows is captured up to the fixed size, with a warning.
 * Files are read without pausing their writer, so an image is consistent only
 * if the writer is paused by other means.
 *
 * @example
 * ```ts
 * import { FileCapture } from "./file_capture.ts";
 * const cap = await FileCapture.open("/dev/shm/guest-ram");
 * const { image, captureMs } = await cap.capture();
 * console.log(image.length, captureMs);
 * ```
 *
 * @module
 */

/** What one file capture produced. */
export interface FileCaptureResult {
  /** The image: exactly `size` bytes (a view of the buffer passed in). */
  image: Uint8Array;
  /** Time spent reading the file, in milliseconds. */
  captureMs: number;
}

/** Options of {@linkcode FileCapture.open}. */
export interface FileCaptureOptions {
  /** Called with each warning; defaults to writing it to stderr. */
  onWarning?: (message: string) => void;
}

const CHUNK = 16 << 20;

/**
 * Captures a regular file's contents; see the module documentation.
 *
 * @example
 * ```ts
 * import { FileCapture } from "./file_capture.ts";
 * const cap = await FileCapture.open("/tmp/image.bin");
 * ```
 */
export class FileCapture {
  readonly path: string;
  #size = 0;
  #warn: (message: string) => void;

  private constructor(path: string, opts: FileCaptureOptions) {
    this.path = path;
    this.#warn = opts.onWarning ?? ((m) => console.error(m));
  }

  /** Prepare to capture `path`; it must be an existing regular file. */
  static async open(
    path: string,
    opts: FileCaptureOptions = {},
  ): Promise<FileCapture> {
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(`${path}: not found, expected a file to capture`);
      }
      throw e;
    }
    if (!st.isFile) {
      throw new Error(
        `${path}: not a regular file, expected a file to capture`,
      );
    }
    return new FileCapture(path, opts);
  }

  /** Image size in bytes (0 before the first capture). */
  get size(): number {
    return this.#size;
  }

  /**
   * Read the file into `into` (allocated if absent or too small). The first
   * capture fixes the size; the file must not be empty.
   */
  async capture(into?: Uint8Array): Promise<FileCaptureResult> {
    const t0 = performance.now();
    using f = await Deno.open(this.path, { read: true });
    const actual = (await f.stat()).size;
    if (this.#size === 0) {
      if (actual === 0) {
        throw new Error(
          `${this.path}: file is empty, expected at least 1 byte`,
        );
      }
      this.#size = actual;
    }
    const size = this.#size;
    if (actual < size) {
      throw new Error(
        `${this.path}: file shrank to ${actual} bytes, expected ${size} (the size at the first capture)`,
      );
    }
    const buf = into !== undefined && into.length >= size
      ? into.subarray(0, size)
      : new Uint8Array(size);
    for (let off = 0; off < size;) {
      const n = await f.read(buf.subarray(off, Math.min(size, off + CHUNK)));
      if (n === null) {
        throw new Error(
          `${this.path}: file shrank to ${off} bytes while being read, expected ${size}`,
        );
      }
      off += n;
    }
    if (actual > size) {
      this.#warn(
        `${this.path}: file grew to ${actual} bytes; only the first ${size} (the size at the first capture) are recorded`,
      );
    }
    return { image: buf, captureMs: performance.now() - t0 };
  }
}
