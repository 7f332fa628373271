/**
 * The patch op stream: what one epoch changed in one image, page by page,
 * before batch compression.
 *
 * Grammar (integers are LEB128 uvarints unless a width is given):
 *
 *     ops     := op*
 *     op      := kind:u8 pageDelta body
 *     pageDelta := page - (previous page + 1)        pages strictly increase
 *     body by kind:
 *       0 ZERO                                       page = zeros
 *       1 COPY     ref                               page = reference page, exactly
 *       2 XOR      ref len xzrle[len]                page = reference XOR delta (zero_run.ts)
 *       3 BLOCKS   mask[blocksPerPage/8] blockop*    page = same-address page with the
 *                                                    masked blocks replaced, in order:
 *            blockop := 0 len xzrle[len]             block XOR same-address block
 *                     | 1 slot block                 block = committed block elsewhere
 *       4 LITERAL  byte[pageLength]                  raw bytes (pageLength < pageSize
 *                                                    only for an image's last page)
 *       5 LZ       ref extra:u8 (slot page){extra}   page bytes are the next page of
 *                                                    the chunk's LZ section, compressed
 *                                                    with a prefix made of the pages the
 *                                                    chunk's LZ ops name (ref first,
 *                                                    then the extra pages), each page
 *                                                    once, in the order first named
 *     ref     := 0                                   same address, same image
 *              | 1 slot page                         page `page` of image `slot`
 *              | 2                                   the zero page
 *              | 3 slot page                         (COPY only) page `page` of image
 *                                                    `slot` as this epoch makes it
 *
 * References 0-2 resolve against the receiver's last committed images, so
 * the order of those ops inside an epoch does not matter. Reference 3 lets a
 * page that is new in this epoch in several places (two guests booted from
 * the same kernel, in their first epoch) be sent once: it names a page
 * staged earlier in the epoch (a lower slot, or the same slot and a lower
 * page) by an op other than BLOCKS and other than a reference-3 COPY, so it
 * is whole in the receiver's staging; receivers resolve it at the end of
 * the chunk, once the chunk's LZ pages are in place. Pages are handled as
 * full `pageSize` pages; an image's last, short page is zero-padded on both
 * ends and only its real length is applied.
 * @module
 */

/** Op kinds. */
export const OpKind = {
  ZERO: 0,
  COPY: 1,
  XOR: 2,
  BLOCKS: 3,
  LITERAL: 4,
  LZ: 5,
} as const;
/** An op kind number. */
export type OpKind = typeof OpKind[keyof typeof OpKind];

/** Op kind names, indexed by kind, for stats. */
export const OP_NAMES = [
  "zero",
  "copy",
  "xor",
  "blocks",
  "literal",
  "lz",
] as const;

/** Reference kinds. */
export const RefKind = { SAME: 0, OTHER: 1, ZERO: 2, EPOCH: 3 } as const;

/** Block op kinds inside BLOCKS. */
export const BlockOpKind = { XOR: 0, SHARED: 1 } as const;

/** A growable byte buffer for building op streams without per-op allocation. */
export class ByteWriter {
  bytes: Uint8Array;
  pos = 0;
  constructor(initial = 1 << 16) {
    this.bytes = new Uint8Array(initial);
  }
  /** Ensures `n` more bytes fit, growing by doubling. */
  ensure(n: number): void {
    if (this.pos + n <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.bytes.subarray(0, this.pos));
    this.bytes = next;
  }
  /** Appends bytes. */
  append(src: Uint8Array): void {
    this.ensure(src.length);
    this.bytes.set(src, this.pos);
    this.pos += src.length;
  }
  /** The written bytes (a view, valid until the next write). */
  view(): Uint8Array {
    return this.bytes.subarray(0, this.pos);
  }
  /** Forgets the contents, keeping the memory. */
  reset(): void {
    this.pos = 0;
  }
}
