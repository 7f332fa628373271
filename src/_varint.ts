/**
 * LEB128 unsigned varints (7 bits a byte, low group first), the integer
 * encoding of every length, count and index inside a patch.
 *
 * Values up to 2^53 are supported so that byte offsets of large images fit.
 * @module
 */

/** Bytes `writeUvarint` needs for `value`. */
export function uvarintSize(value: number): number {
  let n = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    n++;
  }
  return n;
}

/** Writes `value` at `pos`; returns the position after it. The caller ensures room (10 bytes at most). */
export function writeUvarint(
  out: Uint8Array,
  pos: number,
  value: number,
): number {
  while (value >= 0x80) {
    out[pos++] = (value & 0x7f) | 0x80;
    value = Math.floor(value / 128);
  }
  out[pos++] = value;
  return pos;
}

/** A cursor over encoded bytes; every read checks the end so that a truncated patch is an error, not garbage. */
export class ByteReader {
  pos: number;
  constructor(
    readonly bytes: Uint8Array,
    pos = 0,
    readonly end = bytes.length,
  ) {
    this.pos = pos;
  }

  /** Reads one unsigned varint; throws if it runs past the end or past 2^53. */
  uvarint(what: string): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      if (this.pos >= this.end) {
        throw new RangeError(
          `truncated patch: ${what} runs past the end at byte ${this.pos}`,
        );
      }
      const b = this.bytes[this.pos++];
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 128;
    }
    throw new RangeError(
      `malformed patch: ${what} varint longer than 8 bytes at byte ${this.pos}`,
    );
  }

  /** Reads one byte. */
  u8(what: string): number {
    if (this.pos >= this.end) {
      throw new RangeError(
        `truncated patch: ${what} runs past the end at byte ${this.pos}`,
      );
    }
    return this.bytes[this.pos++];
  }

  /** Returns a view of the next `n` bytes and skips them. */
  take(n: number, what: string): Uint8Array {
    if (this.pos + n > this.end) {
      throw new RangeError(
        `truncated patch: ${what} needs ${n} bytes at byte ${this.pos}, only ${
          this.end - this.pos
        } left`,
      );
    }
    const view = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return view;
  }
}
