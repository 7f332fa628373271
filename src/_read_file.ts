/**
 * Reads a whole file into a buffer with positioned reads in large chunks:
 * the fallback where a memory map (FFI) is unavailable.
 * @module
 */

/** Reads `into.length` bytes from the start of `path`; throws if it cannot be opened or is shorter. */
export function readFileInto(path: string, into: Uint8Array): void {
  let f: Deno.FsFile;
  try {
    f = Deno.openSync(path, { read: true });
  } catch (e) {
    throw new Error(`cannot open for reading: ${(e as Error).message}`);
  }
  try {
    let pos = 0;
    while (pos < into.length) {
      const n = f.readSync(
        into.subarray(pos, Math.min(into.length, pos + CHUNK_BYTES)),
      );
      if (n === null) {
        throw new Error(`shrank to ${pos} bytes, expected ${into.length}`);
      }
      pos += n;
    }
  } finally {
    f.close();
  }
}

/** Bytes per read: large enough that system calls do not show. */
const CHUNK_BYTES = 8 << 20;
