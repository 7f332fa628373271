/**
 * The match + XOR stages for one dirty page (memory-contents patching):
 * choose the reference the receiver already holds that gives the smallest
 * encoding, and write the page's op.
 *
 * Candidates, each measured by the bytes it would write:
 * - ZERO: the page is all zero (hashes say so, bytes confirm);
 * - BLOCKS: only the dirty blocks, each as XOR against the same-address block
 *   or as a reference to an identical committed block anywhere (content index);
 * - XOR against the same-address page, against a *similar* page found through
 *   the content index of sampled blocks (COPY when identical), or the zero page;
 * - LITERAL;
 * - LZ: the page compressed with the chosen reference page (and, with the
 *   anchor index, pages holding some of its content elsewhere) as zstd
 *   prefix, which catches content shifted or moved by any number of bytes.
 *   `max` decides per page by compressing both LZ and the best XOR encoding;
 *   `fast` sends pages whose best XOR encoding is large as LZ without a trial.
 *   At both, pages with three quarters of their blocks dirty go LZ directly.
 *
 * Works on preallocated scratch buffers; nothing is allocated per page.
 * @module
 */

import type { AnchorIndex } from "./anchor_index.ts";
import type { ContentIndex } from "./content_index.ts";
import type { ImageState } from "./image_state.ts";
import { PAGE_SIZE } from "./image_state.ts";
import type { LevelParams } from "./level.ts";
import { BlockOpKind, ByteWriter, OpKind, RefKind } from "./patch.ts";
import { writeUvarint } from "./_varint.ts";
import { encodeXorZeroRun } from "./zero_run.ts";
import type { Zstd } from "./compress/zstd.ts";

const WORDS = PAGE_SIZE / 4;
const SCRATCH = PAGE_SIZE + 1024;
/** Further LZ reference pages per page, found through the anchor index. */
export const MAX_EXTRA_REFS = 2;

/** The op chosen for a page, for stats and for the LZ section. */
export interface PageChoice {
  kind: number;
  /** Reference kind used (RefKind), or -1. */
  refKind: number;
  /** For LZ: the reference page's slot and page (or -1 for the zero page). */
  refSlot: number;
  refPage: number;
  /** Blocks sent as shared references (BLOCKS). */
  sharedBlocks: number;
  /** For LZ: further reference pages (found through anchors), slots and pages. */
  lzExtra: number;
  lzExtraSlot: Uint32Array;
  lzExtraPage: Uint32Array;
  /** Bytes written to the op stream. */
  bytes: number;
}

/** Encodes dirty pages; one per encoder. */
export class PageEncoder {
  #trial: Uint8Array = new Uint8Array(SCRATCH);
  #best: Uint8Array = new Uint8Array(SCRATCH);
  #bestLen = 0;
  #bestKind = 0;
  #bestRefKind = -1;
  #bestRefSlot = -1;
  #bestRefPage = -1;
  #bestShared = 0;
  #zeroWords = new Uint32Array(WORDS);
  #zeroPage = new Uint8Array(PAGE_SIZE);
  readonly choice: PageChoice = {
    kind: 0,
    refKind: -1,
    refSlot: -1,
    refPage: -1,
    sharedBlocks: 0,
    lzExtra: 0,
    lzExtraSlot: new Uint32Array(MAX_EXTRA_REFS),
    lzExtraPage: new Uint32Array(MAX_EXTRA_REFS),
    bytes: 0,
  };
  #lzExtra = 0;
  /** Pages new in this epoch, by a key of their block hashes → global page (see {@linkcode beginEpoch}). */
  #epochPages = new Map<number, number>();
  /** Word views of this epoch's images (null where a buffer is not 4-byte aligned). */
  #epochWords: (Uint32Array | null)[] = [];
  #candidates = new Uint32Array(MAX_EXTRA_REFS);
  #prefix = new Uint8Array((1 + MAX_EXTRA_REFS) * PAGE_SIZE);
  #pageBases: number[] = [];

  constructor(
    readonly images: ImageState[],
    readonly index: ContentIndex,
    public params: LevelParams,
    public zstd: Zstd | null,
    readonly zeroHash: { lo: number; hi: number },
    readonly anchors: AnchorIndex | null = null,
  ) {
    let base = 0;
    for (const image of images) {
      this.#pageBases.push(base);
      base += image.pages;
    }
  }

  /**
   * Starts an epoch whose images are `images` (the capture buffers): pages
   * encoded from now on may be sent as a reference to an identical page
   * encoded earlier in the epoch (RefKind.EPOCH).
   */
  beginEpoch(images: Uint8Array[]): void {
    this.#epochPages.clear();
    this.#epochWords = images.map((b) =>
      (b.byteOffset & 3) === 0
        ? new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2)
        : null
    );
  }

  /** Global page number (across images), as the anchor index counts pages. */
  globalPage(slot: number, page: number): number {
    return this.#pageBases[slot] + page;
  }

  #slotOfGlobalPage(global: number): number {
    let s = this.#pageBases.length - 1;
    while (this.#pageBases[s] > global) s--;
    return s;
  }

  #offer(
    buf: Uint8Array,
    len: number,
    kind: number,
    refKind: number,
    refSlot: number,
    refPage: number,
    shared: number,
  ) {
    if (len >= this.#bestLen) return;
    // Swap buffers so the winner keeps its bytes and the loser's buffer becomes scratch.
    if (buf === this.#trial) {
      this.#trial = this.#best;
      this.#best = buf;
    } else {
      this.#best.set(buf.subarray(0, len));
    }
    this.#bestLen = len;
    this.#bestKind = kind;
    this.#bestRefKind = refKind;
    this.#bestRefSlot = refSlot;
    this.#bestRefPage = refPage;
    this.#bestShared = shared;
  }

  /**
   * Chooses and writes the op for dirty page `page` of image `slot` to `out`.
   * `cur`/`curWords` hold the page's new contents at byte `curOff` (word
   * `curOff/4`), zero-padded to a full page. `pageDelta` is the op's page delta.
   */
  encode(
    slot: number,
    page: number,
    cur: Uint8Array,
    curWords: Uint32Array,
    curOff: number,
    dirty: Uint32Array,
    pageDelta: number,
    out: ByteWriter,
  ): PageChoice {
    const image = this.images[slot];
    const bs = image.hasher.blockSize;
    const bpp = image.blocksPerPage;
    const wpb = bs / 4;
    const hashes = image.hashes;
    const firstBlock = page * bpp;
    const blockEnd = Math.min(firstBlock + bpp, image.blocks);
    const pageLen = image.pageLength(page);
    const cw = curOff >>> 2;
    const refWord = page * WORDS;
    const zeroLo = this.zeroHash.lo, zeroHi = this.zeroHash.hi;

    this.#bestLen = Infinity;
    this.#bestKind = -1;
    this.#lzExtra = 0;
    this.#bestShared = 0;

    // ZERO: every block hashes like zeros, and the bytes agree.
    let zeroBlocks = 0;
    let dirtyBlocks = 0;
    for (let b = firstBlock; b < blockEnd; b++) {
      if (hashes[2 * b] === zeroLo && hashes[2 * b + 1] === zeroHi) {
        zeroBlocks++;
      }
      if ((dirty[b >>> 5] >>> (b & 31)) & 1) dirtyBlocks++;
    }
    if (zeroBlocks === blockEnd - firstBlock && isZero(curWords, cw, WORDS)) {
      return this.#emit(
        out,
        pageDelta,
        OpKind.ZERO,
        this.#best,
        0,
        -1,
        -1,
        -1,
        0,
      );
    }

    // Identical to a page new earlier in this epoch: send it once.
    let epochKey = 0;
    const whole = pageLen === PAGE_SIZE;
    if (whole) {
      for (let b = firstBlock; b < blockEnd; b++) {
        epochKey = Math.imul(epochKey ^ hashes[2 * b], 0x9e3779b1) ^
          hashes[2 * b + 1];
      }
      const earlier = this.#epochPages.get(epochKey);
      if (earlier !== undefined) {
        const s2 = this.#slotOfGlobalPage(earlier);
        const p2 = earlier - this.#pageBases[s2];
        const words = this.#epochWords[s2];
        if (words && sameWords(curWords, cw, words, p2 * WORDS)) {
          return this.#emit(
            out,
            pageDelta,
            OpKind.COPY,
            this.#best,
            0,
            RefKind.EPOCH,
            s2,
            p2,
            0,
          );
        }
      }
    }

    // A heavily rewritten page skips the XOR trials: LZ against its reference
    // takes it in one batch call, and XOR rarely wins there (measured).
    const heavy = dirtyBlocks * 4 >= bpp * 3 && this.params.heavyDirectLz &&
      this.params.lzThreshold !== Infinity;

    // BLOCKS: the dirty blocks only, each XOR vs same address or shared.
    if (!heavy) {
      const t = this.#trial;
      const maskBytes = bpp >>> 3;
      t.fill(0, 0, maskBytes);
      let pos = maskBytes;
      let shared = 0;
      // Per-block lookups pay on pages with a few changed blocks; a rewritten
      // page is matched as a whole (similar page, LZ) instead.
      const lookups = this.params.blockLookups && dirtyBlocks * 4 < bpp * 3;
      let fits = true;
      for (let b = firstBlock; b < blockEnd && fits; b++) {
        if (((dirty[b >>> 5] >>> (b & 31)) & 1) === 0) continue;
        const k = b - firstBlock;
        t[k >>> 3] |= 1 << (k & 7);
        const lo = hashes[2 * b], hi = hashes[2 * b + 1];
        if (lookups && this.index.isIndexed(lo, hi)) {
          const id = this.index.find(
            lo,
            hi,
            cur,
            curOff + k * bs,
            this.index.idOf(slot, b),
          );
          if (id >= 0) {
            t[pos++] = BlockOpKind.SHARED;
            const s2 = this.index.slotOf(id);
            pos = writeUvarint(t, pos, s2);
            pos = writeUvarint(t, pos, id - this.index.idOf(s2, 0));
            shared++;
            continue;
          }
        }
        t[pos++] = BlockOpKind.XOR;
        // Length first: encode after a 2-byte gap, then move if the varint is shorter.
        const start = pos + 2;
        const end = encodeXorZeroRun(
          curWords,
          cw + k * wpb,
          image.words,
          refWord + k * wpb,
          wpb,
          t,
          start,
          SCRATCH,
        );
        if (end < 0) {
          fits = false;
          break;
        }
        pos = placeLength(t, pos, start, end);
      }
      if (fits) {
        this.#offer(t, pos, OpKind.BLOCKS, RefKind.SAME, slot, page, shared);
      }
    }

    // XOR against the whole same-address page (no per-block framing): worth it when much changed.
    if (!heavy && dirtyBlocks * 4 > bpp) {
      this.#tryXor(
        curWords,
        cw,
        image.words,
        refWord,
        RefKind.SAME,
        slot,
        page,
      );
    }

    // Similar or identical page elsewhere, through the content index.
    if (this.#bestLen > this.params.similarThreshold) {
      let tried = 0;
      let budget = this.params.pageLookups;
      let lastSlot = -1, lastPage = -1;
      const maxTries = this.params.similarCandidates;
      for (
        let b = firstBlock;
        b < blockEnd && tried < maxTries && budget > 0;
        b++
      ) {
        const lo = hashes[2 * b], hi = hashes[2 * b + 1];
        if (!this.index.isIndexed(lo, hi)) continue;
        budget--;
        const k = b - firstBlock;
        const id = this.index.find(
          lo,
          hi,
          cur,
          curOff + k * bs,
          this.index.idOf(slot, b),
        );
        if (id < 0) continue;
        const s2 = this.index.slotOf(id);
        const b2 = id - this.index.idOf(s2, 0);
        const other = this.images[s2];
        if (b2 % other.blocksPerPage !== k) continue; // found at another offset: not a page match
        const p2 = (b2 / other.blocksPerPage) | 0;
        if (
          (s2 === slot && p2 === page) || (s2 === lastSlot && p2 === lastPage)
        ) continue;
        lastSlot = s2;
        lastPage = p2;
        tried++;
        const len = this.#tryXor(
          curWords,
          cw,
          other.words,
          p2 * WORDS,
          RefKind.OTHER,
          s2,
          p2,
        );
        if (len === 0) break; // identical: COPY, nothing can beat it
      }
    }

    // The zero page as reference: for pages now mostly zero (fresh allocations).
    if (!heavy && zeroBlocks * 4 >= bpp && this.#bestLen > 256) {
      this.#tryXor(curWords, cw, this.#zeroWords, 0, RefKind.ZERO, -1, -1);
    }

    // LITERAL: never worse than the raw bytes.
    if (this.#bestLen > pageLen) {
      this.#trial.set(cur.subarray(curOff, curOff + pageLen));
      this.#offer(this.#trial, pageLen, OpKind.LITERAL, -1, -1, -1, 0);
    }

    // LZ with the reference page as prefix: catches content shifted or moved inside the page.
    if (
      this.zstd && this.#bestLen > this.params.lzThreshold &&
      this.#bestKind !== OpKind.COPY
    ) {
      const refSlot = this.#bestRefKind === RefKind.OTHER
        ? this.#bestRefSlot
        : slot;
      const refPage = this.#bestRefKind === RefKind.OTHER
        ? this.#bestRefPage
        : page;
      let prefix = this.#bestRefKind === RefKind.ZERO
        ? this.#zeroPage
        : this.images[refSlot].committed.subarray(
          refPage * PAGE_SIZE,
          (refPage + 1) * PAGE_SIZE,
        );
      // Pages that hold some of this content at other offsets join the prefix.
      let extra = 0;
      if (this.anchors) {
        const primary = this.#bestRefKind === RefKind.ZERO
          ? -1
          : this.globalPage(refSlot, refPage);
        const n = this.anchors.candidates(
          curWords,
          cw,
          primary,
          this.#candidates,
          MAX_EXTRA_REFS,
        );
        if (n > 0) {
          this.#prefix.set(prefix);
          for (let i = 0; i < n; i++) {
            const g = this.#candidates[i];
            const s2 = this.#slotOfGlobalPage(g);
            const p2 = g - this.#pageBases[s2];
            this.choice.lzExtraSlot[extra] = s2;
            this.choice.lzExtraPage[extra] = p2;
            this.#prefix.set(
              this.images[s2].committed.subarray(
                p2 * PAGE_SIZE,
                (p2 + 1) * PAGE_SIZE,
              ),
              (1 + extra) * PAGE_SIZE,
            );
            extra++;
          }
          prefix = this.#prefix.subarray(0, (1 + extra) * PAGE_SIZE);
        }
      }
      const curPage = cur.subarray(curOff, curOff + PAGE_SIZE);
      const level = heavy ? 0 : this.params.lzTrialLevel;
      let lzSize = 0, bestSize = 1;
      if (level !== 0) {
        lzSize = this.zstd.compressInto(curPage, this.#trial, 0, {
          level,
          prefix,
          checksum: false,
        });
        bestSize = this.zstd.compressInto(
          this.#best.subarray(0, this.#bestLen),
          this.#trial,
          0,
          {
            level,
            checksum: false,
          },
        );
        lzSize += 4; // the LZ op costs a little framing of its own
      }
      if (lzSize < bestSize) {
        const isZeroRef = this.#bestRefKind === RefKind.ZERO;
        this.#bestKind = OpKind.LZ;
        this.#bestRefKind = isZeroRef
          ? RefKind.ZERO
          : refSlot === slot && refPage === page
          ? RefKind.SAME
          : RefKind.OTHER;
        this.#bestRefSlot = isZeroRef ? -1 : refSlot;
        this.#bestRefPage = isZeroRef ? -1 : refPage;
        this.#bestLen = 0;
        this.#bestShared = 0;
        this.#lzExtra = extra;
      }
    }

    // Whole in the receiver's staging (not BLOCKS): later copies may name it.
    if (
      whole && this.#bestKind !== OpKind.BLOCKS &&
      !this.#epochPages.has(epochKey)
    ) {
      this.#epochPages.set(epochKey, this.#pageBases[slot] + page);
    }
    return this.#emit(
      out,
      pageDelta,
      this.#bestKind,
      this.#best,
      this.#bestLen,
      this.#bestRefKind,
      this.#bestRefSlot,
      this.#bestRefPage,
      this.#bestShared,
    );
  }

  /** XOR trial against a reference; offers it (as COPY when empty) and returns its xzrle length or -1. */
  #tryXor(
    curWords: Uint32Array,
    cw: number,
    refWords: Uint32Array,
    rw: number,
    refKind: number,
    refSlot: number,
    refPage: number,
  ): number {
    const t = this.#trial;
    const end = encodeXorZeroRun(
      curWords,
      cw,
      refWords,
      rw,
      WORDS,
      t,
      4,
      SCRATCH,
    );
    if (end < 0) return -1;
    const len = end - 4;
    if (len === 0 && refKind !== RefKind.SAME) {
      this.#offer(
        t,
        0,
        refKind === RefKind.ZERO ? OpKind.ZERO : OpKind.COPY,
        refKind,
        refSlot,
        refPage,
        0,
      );
      return 0;
    }
    const pos = placeLength(t, 0, 4, end);
    this.#offer(t, pos, OpKind.XOR, refKind, refSlot, refPage, 0);
    return len;
  }

  #emit(
    out: ByteWriter,
    pageDelta: number,
    kind: number,
    body: Uint8Array,
    bodyLen: number,
    refKind: number,
    refSlot: number,
    refPage: number,
    shared: number,
  ): PageChoice {
    out.ensure(bodyLen + 32);
    const o = out.bytes;
    const start = out.pos;
    let pos = start;
    o[pos++] = kind;
    pos = writeUvarint(o, pos, pageDelta);
    if (kind === OpKind.COPY || kind === OpKind.XOR || kind === OpKind.LZ) {
      o[pos++] = refKind;
      if (refKind === RefKind.OTHER || refKind === RefKind.EPOCH) {
        pos = writeUvarint(o, pos, refSlot);
        pos = writeUvarint(o, pos, refPage);
      }
    }
    const extra = kind === OpKind.LZ ? this.#lzExtra : 0;
    if (kind === OpKind.LZ) {
      o[pos++] = extra;
      for (let i = 0; i < extra; i++) {
        pos = writeUvarint(o, pos, this.choice.lzExtraSlot[i]);
        pos = writeUvarint(o, pos, this.choice.lzExtraPage[i]);
      }
    }
    if (bodyLen > 0) {
      o.set(body.subarray(0, bodyLen), pos);
      pos += bodyLen;
    }
    out.pos = pos;
    const c = this.choice;
    c.kind = kind;
    c.refKind = refKind;
    c.refSlot = refSlot;
    c.refPage = refPage;
    c.sharedBlocks = shared;
    c.lzExtra = extra;
    c.bytes = pos - start;
    return c;
  }
}

/** True if `words[from..from+n)` are all zero. */
export function isZero(words: Uint32Array, from: number, n: number): boolean {
  for (let i = from, end = from + n; i < end; i++) {
    if (words[i] !== 0) return false;
  }
  return true;
}

/**
 * The xzrle bytes were written at `start..end`; writes their length as a
 * uvarint at `pos` and moves them right behind it. Returns the new end.
 */
function placeLength(
  t: Uint8Array,
  pos: number,
  start: number,
  end: number,
): number {
  const len = end - start;
  const after = writeUvarint(t, pos, len);
  if (after !== start) t.copyWithin(after, start, end);
  return after + len;
}

/** True if the page-sized word runs at `a[aw]` and `b[bw]` are equal. */
function sameWords(
  a: Uint32Array,
  aw: number,
  b: Uint32Array,
  bw: number,
): boolean {
  if (bw + WORDS > b.length) return false;
  for (let i = 0; i < WORDS; i++) if (a[aw + i] !== b[bw + i]) return false;
  return true;
}
