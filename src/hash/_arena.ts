// Bump allocator over one preallocated buffer: the arena behind
// BlockHasher.alloc(). Nothing is ever freed or moved, and the buffer is
// never resized, so every view handed out stays valid for the buffer's life.

/** Alignment of every allocation, in bytes (a cache line). */
export const ARENA_ALIGN = 64;

/** Throws unless `n` is a non-negative safe integer. */
export function checkByteCount(what: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(
      `${what}: invalid byte count ${n}: expected a non-negative integer`,
    );
  }
}

/** Hands out zeroed, 64-byte-aligned views of `[start, end)` of `buffer`. */
export class BumpArena {
  readonly buffer: ArrayBuffer;
  readonly start: number;
  readonly end: number;
  #next: number;

  /** `start` must be a multiple of {@linkcode ARENA_ALIGN}. */
  constructor(buffer: ArrayBuffer, start: number, end: number) {
    if (start % ARENA_ALIGN !== 0 || end < start || end > buffer.byteLength) {
      throw new RangeError(`BumpArena: bad range [${start}, ${end})`);
    }
    this.buffer = buffer;
    this.start = start;
    this.end = end;
    this.#next = start;
  }

  /** Bytes still available to one allocation. */
  get free(): number {
    return Math.max(0, this.end - this.#aligned());
  }

  #aligned(): number {
    return Math.ceil(this.#next / ARENA_ALIGN) * ARENA_ALIGN;
  }

  /** `byteLength` zeroed bytes at a 64-aligned offset, or null if full. */
  alloc(byteLength: number): Uint8Array | null {
    checkByteCount("alloc", byteLength);
    const at = this.#aligned();
    if (at + byteLength > this.end) return null;
    this.#next = at + byteLength;
    return new Uint8Array(this.buffer, at, byteLength);
  }
}
