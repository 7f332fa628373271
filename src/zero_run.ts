/**
 * The XOR zero-run kernel (XBZRLE-like): encodes the XOR difference of a
 * section against its reference as runs of unchanged and changed 32-bit words.
 *
 * Encoding grammar (all integers are LEB128 uvarints, words little-endian):
 *
 *     xzrle := run*                  decoding stops after `words` words
 *     run   := zeros count word{count}
 *     zeros := uvarint               words whose XOR is zero (unchanged), skipped
 *     count := uvarint  (>= 1)       changed words that follow
 *     word  := 4 bytes               the XOR of new and reference word
 *
 * A trailing zero run is implicit: words not covered by a run are unchanged.
 * An unchanged section therefore encodes to zero bytes.
 *
 * The kernels are pure and allocation-free: they work on word views of
 * preallocated buffers and report output overflow instead of growing.
 * @module
 */

import { ByteReader, writeUvarint } from "./_varint.ts";

/**
 * Encodes `cur[curWord..+words] XOR ref[refWord..+words]` into `out` from
 * `outPos`, never writing at or past `outLimit`.
 *
 * @returns the position after the encoding, or -1 if it would not fit below `outLimit`.
 * @example
 * ```ts
 * const a = new Uint32Array(1024), b = new Uint32Array(1024);
 * b[7] = 1;
 * const out = new Uint8Array(64);
 * encodeXorZeroRun(b, 0, a, 0, 1024, out, 0, out.length); // 6: zeros=7, count=1, 4 bytes
 * ```
 */
export function encodeXorZeroRun(
  cur: Uint32Array,
  curWord: number,
  ref: Uint32Array,
  refWord: number,
  words: number,
  out: Uint8Array,
  outPos: number,
  outLimit: number,
): number {
  let i = 0;
  let pos = outPos;
  while (i < words) {
    const zeroStart = i;
    while (i < words && cur[curWord + i] === ref[refWord + i]) i++;
    if (i === words) break; // trailing zero run is implicit
    const changedStart = i;
    while (i < words && cur[curWord + i] !== ref[refWord + i]) i++;
    const count = i - changedStart;
    // Worst case header: two 5-byte varints (words < 2^35).
    if (pos + 10 + count * 4 > outLimit) return -1;
    pos = writeUvarint(out, pos, changedStart - zeroStart);
    pos = writeUvarint(out, pos, count);
    for (let k = changedStart; k < i; k++) {
      const x = cur[curWord + k] ^ ref[refWord + k];
      out[pos] = x;
      out[pos + 1] = x >>> 8;
      out[pos + 2] = x >>> 16;
      out[pos + 3] = x >>> 24;
      pos += 4;
    }
  }
  return pos;
}

/**
 * Applies an xzrle encoding read from `reader` to `dst[dstWord..+words]` in
 * place: `dst` must already hold the reference; changed words are XORed in.
 * Throws a RangeError naming the problem if the encoding is truncated or
 * describes more than `words` words.
 */
export function applyXorZeroRun(
  reader: ByteReader,
  end: number,
  dst: Uint32Array,
  dstWord: number,
  words: number,
): void {
  const bytes = reader.bytes;
  let i = 0;
  while (reader.pos < end) {
    i += reader.uvarint("zero-run length");
    const count = reader.uvarint("changed-word count");
    if (count === 0) {
      throw new RangeError(
        `malformed patch: empty changed run at byte ${reader.pos}`,
      );
    }
    if (i + count > words) {
      throw new RangeError(
        `malformed patch: xor run reaches word ${
          i + count
        }, section has ${words} words`,
      );
    }
    let pos = reader.pos;
    if (pos + count * 4 > end) {
      throw new RangeError(
        `truncated patch: ${count} changed words need ${
          count * 4
        } bytes at byte ${pos}, only ${end - pos} left`,
      );
    }
    for (let k = 0; k < count; k++) {
      dst[dstWord + i + k] ^= bytes[pos] | (bytes[pos + 1] << 8) |
        (bytes[pos + 2] << 16) |
        (bytes[pos + 3] << 24);
      pos += 4;
    }
    reader.pos = pos;
    i += count;
  }
}
