/**
 * The backup's codec: deframe → verify → decompress → un-XOR → stage →
 * apply.
 *
 * An epoch is staged in full beside the committed images (references resolve
 * against the committed state, so op order does not matter), its digests are
 * checked, and only then is it applied. Any failure rejects the whole epoch
 * with a {@linkcode DecodeError} that says what was wrong, and leaves every
 * image exactly as it was.
 * @module
 */

import { type BlockHasher, createBlockHasher } from "./hash/block_hash.ts";
import {
  type CommitBody,
  decodeFrame,
  type Frame,
  FrameError,
  FrameType,
  type PatchBody,
  SectionCodec,
} from "./frame.ts";
import { ImageState, PAGE_SIZE } from "./image_state.ts";
import type { Level } from "./level.ts";
import { BlockOpKind, ByteWriter, OpKind, RefKind } from "./patch.ts";
import { ByteReader } from "./_varint.ts";
import { applyXorZeroRun } from "./zero_run.ts";
import { createCodecZstd, type Zstd } from "./compress/zstd.ts";
import { createLzma, type Lzma } from "./compress/lzma.ts";
import { bindLength, DigestAccumulator, type ImageDigest } from "./digest.ts";
import { U32List } from "./_u32_list.ts";
import type { ImageSpec } from "./encoder.ts";

const WORDS = PAGE_SIZE / 4;

/**
 * The largest op a page can take in a patch (a LITERAL page or a BLOCKS op
 * whose every block's xzrle runs long is about one page; twice that, plus a
 * header, bounds them all).
 */
const MAX_OP_BYTES_PER_PAGE = 2 * PAGE_SIZE + 64;
/** An epoch was rejected; nothing of it was applied. */
export class DecodeError extends Error {
  override name = "DecodeError";
}

/** Options of {@linkcode EpochDecoder}. */
export interface DecoderOptions {
  /** Block size; must match the encoder's (checked on every commit). Default 64. */
  blockSize?: number;
  hasher?: BlockHasher;
  zstd?: Zstd;
}

/** One staged piece of an epoch: new bytes for `bytes.length` bytes of image `slot` at `offset`. */
export interface StagedRange {
  slot: number;
  offset: number;
  bytes: Uint8Array;
}

/**
 * Called once an epoch is verified and before anything is applied, with every
 * range it writes (views valid during the call): a durable backup journals
 * them here. If it throws, the epoch is rejected and nothing is applied.
 */
export type OnStaged = (
  epoch: number,
  ranges: StagedRange[],
  digests: { lo: number; hi: number; length?: number }[],
) => void;

/** What applying one epoch did. */
export interface AppliedEpoch {
  epoch: number;
  level: Level;
  /** Pages written. */
  pages: number;
  /** Frame bytes received for the epoch. */
  wireBytes: number;
  /** Digest of each image after the epoch, by id. */
  digests: Record<string, ImageDigest>;
  /** Decode (verify, decompress, stage, check digests) and apply times. */
  decodeMs: number;
  applyMs: number;
}

/**
 * Receives framed epochs and applies them atomically to its images.
 *
 * @example
 * ```ts
 * const decoder = new EpochDecoder([{ id: "vm1", size: 1 << 20 }]);
 * for (const frame of frames) {
 *   const applied = decoder.receive(frame); // non-null once the epoch's COMMIT arrives
 * }
 * decoder.images[0].committed; // equals the primary's image at that epoch
 * ```
 */
export class EpochDecoder {
  readonly hasher: BlockHasher;
  readonly images: ImageState[];
  readonly zstd: Zstd;
  /** Opened on the first LZMA2 section, so receivers of zstd-only streams never need liblzma. */
  #lzma: Lzma | null = null;

  #lzmaCodec(): Lzma {
    return this.#lzma ??= createLzma();
  }
  #epoch = 0;
  #pending: Frame[] = [];
  #pendingBytes = 0;
  #staging = new ByteWriter(1 << 20);
  // Staged units: a whole page, or one block of a BLOCKS op (most dirty pages
  // change a few blocks, so staging, hashing and applying stay that small).
  #unitSlot = new U32List();
  #unitBlock = new U32List();
  #unitBlocks = new U32List();
  #unitPos = new U32List();
  #lzPrefix = new ByteWriter(1 << 16);
  #lzPages = new U32List();
  /** This chunk's copies of pages staged earlier in the epoch: (to, from) staging offsets. */
  #epochCopies = new U32List();
  #stagingWords: Uint32Array = new Uint32Array(0);
  #zeroRef = new Uint8Array(PAGE_SIZE);
  #ownsZstd: boolean;
  #lzSeen = new Set<number>();
  #lzOut = new Uint8Array(0);
  #pageBases: number[] = [];

  constructor(specs: ImageSpec[], options: DecoderOptions = {}) {
    this.hasher = options.hasher ??
      createBlockHasher({ blockSize: options.blockSize ?? 64 });
    this.#ownsZstd = !options.zstd;
    this.zstd = options.zstd ?? createCodecZstd();
    this.images = specs.map((s) => new ImageState(s.id, s.size, this.hasher));
    let base = 0;
    for (const image of this.images) {
      this.#pageBases.push(base);
      base += image.pages;
    }
  }

  /** The last epoch applied (0: the all-zero start). */
  get epoch(): number {
    return this.#epoch;
  }

  /** Called with the staged ranges of each verified epoch before it is applied. */
  onStaged: OnStaged | null = null;

  /**
   * Replaces every image with `contents` as the committed state of `epoch`
   * (a stored replica, or a base sync) and drops any pending frames.
   */
  load(epoch: number, contents: Uint8Array[], lengths?: number[]): void {
    if (contents.length !== this.images.length) {
      throw new RangeError(
        `expected ${this.images.length} images, got ${contents.length}`,
      );
    }
    this.images.forEach((image, s) => image.reset(contents[s], lengths?.[s]));
    this.#epoch = epoch;
    this.#drop();
  }

  /**
   * Takes one frame. PATCH frames are held until their epoch's COMMIT frame
   * arrives; then the epoch is verified and applied and its figures returned.
   * Throws {@linkcode DecodeError} (the pending epoch is dropped, images are untouched).
   */
  receive(bytes: Uint8Array): AppliedEpoch | null {
    let frame: Frame;
    try {
      frame = decodeFrame(bytes);
    } catch (e) {
      this.#drop();
      if (e instanceof FrameError) {
        throw new DecodeError(
          `epoch ${this.#epoch + 1} rejected: ${e.message}`,
        );
      }
      throw e;
    }
    this.#pendingBytes += bytes.length;
    if (frame.epoch !== this.#epoch + 1) {
      this.#drop();
      throw new DecodeError(
        `frame for epoch ${frame.epoch} rejected: this receiver has committed epoch ${this.#epoch}, expected epoch ${
          this.#epoch + 1
        }`,
      );
    }
    if (frame.type === FrameType.PATCH) {
      // An epoch rewrites each page at most once; frames beyond what whole
      // images can take, still without their COMMIT, are not a patch.
      const limit = this.maxEpochBytes;
      if (this.#pendingBytes > limit) {
        const held = this.#pendingBytes;
        this.#drop();
        throw new DecodeError(
          `epoch ${frame.epoch} rejected: ${held} bytes of PATCH frames without a COMMIT, more than the ${limit} an epoch of these images can take`,
        );
      }
      this.#pending.push(frame);
      return null;
    }
    try {
      return this.#applyEpoch(frame.epoch, frame.level, frame.body);
    } finally {
      this.#drop();
    }
  }

  /** Applies all frames of one epoch; throws if they do not end with its COMMIT. */
  applyEpoch(frames: Uint8Array[]): AppliedEpoch {
    let result: AppliedEpoch | null = null;
    for (const f of frames) result = this.receive(f);
    if (!result) {
      this.#drop();
      throw new DecodeError(
        `epoch ${
          this.#epoch + 1
        } incomplete: no COMMIT frame among ${frames.length} frames`,
      );
    }
    return result;
  }

  /**
   * Forgets the PATCH frames of an epoch whose COMMIT has not arrived (its
   * sender is gone: a new session starts from whole epochs).
   */
  discardPending(): void {
    this.#drop();
  }

  /** The most an epoch's frames can hold: every page as its largest op, plus framing. */
  get maxEpochBytes(): number {
    let pages = 0;
    for (const image of this.images) pages += image.pages;
    return pages * MAX_OP_BYTES_PER_PAGE + (16 << 20);
  }

  #drop(): void {
    this.#pending = [];
    this.#pendingBytes = 0;
  }

  #applyEpoch(epoch: number, level: Level, commit: CommitBody): AppliedEpoch {
    const t0 = performance.now();
    const fail = (msg: string): never => {
      throw new DecodeError(`epoch ${epoch} rejected: ${msg}`);
    };
    if (commit.base !== this.#epoch) {
      fail(
        `it applies on top of epoch ${commit.base}, this receiver has ${this.#epoch}`,
      );
    }
    if (commit.pageSize !== PAGE_SIZE) {
      fail(`page size ${commit.pageSize}, expected ${PAGE_SIZE}`);
    }
    if (commit.blockSize !== this.hasher.blockSize) {
      fail(`block size ${commit.blockSize}, expected ${this.hasher.blockSize}`);
    }
    if (commit.images.length !== this.images.length) {
      fail(
        `commit lists ${commit.images.length} images, expected ${this.images.length}`,
      );
    }
    commit.images.forEach((ci, s) => {
      const image = this.images[s];
      if (ci.id !== image.id || ci.size !== image.size) {
        fail(
          `image ${s} is "${ci.id}" of ${ci.size} bytes, expected "${image.id}" of ${image.size} bytes`,
        );
      }
    });
    // Order chunks and check that each image's are all there, once.
    const chunks: PatchBody[][] = this.images.map(() => []);
    for (const f of this.#pending) {
      const body = f.body as PatchBody;
      if (body.base !== this.#epoch) {
        fail(
          `patch chunk based on epoch ${body.base}, expected ${this.#epoch}`,
        );
      }
      if (body.slot >= this.images.length) {
        fail(
          `patch for image slot ${body.slot}, only ${this.images.length} images`,
        );
      }
      if (f.imageId !== this.images[body.slot].id) {
        fail(
          `patch frame names image "${f.imageId}", slot ${body.slot} is "${
            this.images[body.slot].id
          }"`,
        );
      }
      if (chunks[body.slot][body.chunk]) {
        fail(`chunk ${body.chunk} of image "${f.imageId}" received twice`);
      }
      chunks[body.slot][body.chunk] = body;
    }
    commit.images.forEach((ci, s) => {
      for (let c = 0; c < ci.chunks; c++) {
        if (!chunks[s][c]) {
          fail(`chunk ${c} of ${ci.chunks} for image "${ci.id}" is missing`);
        }
      }
      if (chunks[s].length !== ci.chunks) {
        fail(
          `image "${ci.id}" has ${
            chunks[s].length
          } chunks, commit says ${ci.chunks}`,
        );
      }
    });

    // Stage every page (or block).
    this.#staging.reset();
    this.#unitSlot.clear();
    this.#unitBlock.clear();
    this.#unitBlocks.clear();
    this.#unitPos.clear();
    for (let s = 0; s < this.images.length; s++) {
      let lastPage = -1;
      for (const body of chunks[s]) {
        lastPage = this.#stageChunk(s, body, lastPage, fail);
      }
    }

    // Verify digests on the staged result before touching anything.
    const digests = this.images.map((i) => {
      const d = new DigestAccumulator();
      d.lo = i.digest.lo;
      d.hi = i.digest.hi;
      return d;
    });
    const staged = this.#staging.bytes;
    const bs = this.hasher.blockSize;
    const units = this.#unitPos.length;
    const uSlot = this.#unitSlot.data, uBlock = this.#unitBlock.data;
    const uBlocks = this.#unitBlocks.data, uPos = this.#unitPos.data;
    let totalBlocks = 0;
    for (let i = 0; i < units; i++) totalBlocks += uBlocks[i];
    const fresh = new Uint32Array(2 * totalBlocks);
    // Bytes past the image end hash as zeros on the primary: make them so.
    for (let i = 0; i < units; i++) {
      const image = this.images[uSlot[i]];
      const n = uBlocks[i], pos = uPos[i];
      const real = Math.min(n * bs, image.size - uBlock[i] * bs);
      if (real < n * bs) staged.fill(0, pos + real, pos + n * bs);
    }
    // Units lie back to back in staging, whole blocks each: one kernel call
    // hashes them all, unit i's blocks at fresh[2 * uPos[i] / bs].
    this.hasher.hashAll(staged.subarray(0, this.#staging.pos), fresh);
    for (let i = 0; i < units; i++) {
      const image = this.images[uSlot[i]];
      const first = uBlock[i], n = uBlocks[i];
      const end = Math.min(first + n, image.blocks);
      const d = digests[uSlot[i]];
      const hashes = image.hashes;
      for (let b = first, k = 2 * ((uPos[i] / bs) | 0); b < end; b++, k += 2) {
        const lo = fresh[k], hi = fresh[k + 1];
        // Unchanged blocks contribute the same term before and after.
        if (lo === hashes[2 * b] && hi === hashes[2 * b + 1]) continue;
        d.remove(b, hashes[2 * b], hashes[2 * b + 1]);
        d.add(b, lo, hi);
      }
    }
    commit.images.forEach((ci, s) => {
      const size = this.images[s].size;
      const d = bindLength(
        digests[s].lo,
        digests[s].hi,
        size,
        ci.length ?? size,
      );
      if (d.lo !== ci.digestLo || d.hi !== ci.digestHi) {
        fail(
          `digest mismatch for image "${ci.id}": staged contents hash to ${
            hex(d.hi, d.lo)
          }, the primary's is ${hex(ci.digestHi, ci.digestLo)}`,
        );
      }
    });
    if (this.onStaged) {
      const ranges: StagedRange[] = [];
      for (let i = 0; i < units; i++) {
        const image = this.images[uSlot[i]];
        const off = uBlock[i] * bs, pos = uPos[i];
        const real = Math.min(uBlocks[i] * bs, image.size - off);
        const last = ranges[ranges.length - 1];
        // Units staged back to back for adjacent bytes become one range.
        if (
          last && last.slot === uSlot[i] &&
          last.offset + last.bytes.length === off &&
          last.bytes.byteOffset + last.bytes.length === pos
        ) {
          ranges[ranges.length - 1] = {
            slot: last.slot,
            offset: last.offset,
            bytes: staged.subarray(pos - last.bytes.length, pos + real),
          };
          continue;
        }
        ranges.push({
          slot: uSlot[i],
          offset: off,
          bytes: staged.subarray(pos, pos + real),
        });
      }
      try {
        this.onStaged(
          epoch,
          ranges,
          commit.images.map((ci) => ({
            lo: ci.digestLo,
            hi: ci.digestHi,
            length: ci.length,
          })),
        );
      } catch (e) {
        fail(`the staged epoch could not be stored: ${(e as Error).message}`);
      }
    }
    const t1 = performance.now();

    // Apply: nothing below can fail.
    const stagedWords = this.#stagingWordsView();
    for (let i = 0; i < units; i++) {
      const image = this.images[uSlot[i]];
      const first = uBlock[i], n = uBlocks[i], pos = uPos[i];
      const h = 2 * ((pos / bs) | 0);
      const off = first * bs;
      const real = Math.min(n * bs, image.size - off);
      const hashes = image.hashes;
      if (n === 1 && real === bs) {
        // A single block: word loops beat subarray + memcpy calls.
        const words = image.words;
        for (
          let k = 0, w = off >>> 2, sw = pos >>> 2, e = real >>> 2;
          k < e;
          k++
        ) {
          words[w + k] = stagedWords[sw + k];
        }
        hashes[2 * first] = fresh[h];
        hashes[2 * first + 1] = fresh[h + 1];
      } else {
        image.committed.set(staged.subarray(pos, pos + real), off);
        const count = Math.min(n, image.blocks - first);
        hashes.set(fresh.subarray(h, h + 2 * count), 2 * first);
      }
    }
    const result: AppliedEpoch = {
      epoch,
      level,
      pages: units,
      wireBytes: this.#pendingBytes,
      digests: {},
      decodeMs: t1 - t0,
      applyMs: 0,
    };
    this.images.forEach((image, s) => {
      image.digest.lo = digests[s].lo;
      image.digest.hi = digests[s].hi;
      image.length = commit.images[s].length ?? image.size;
      result.digests[image.id] = image.digestValue();
    });
    this.#epoch = epoch;
    result.applyMs = performance.now() - t1;
    return result;
  }

  /** Reference page bytes: committed page of an image, or zeros. */
  #refPage(slot: number, page: number, fail: (m: string) => never): Uint8Array {
    if (slot >= this.images.length) {
      fail(
        `reference to image slot ${slot}, only ${this.images.length} images`,
      );
    }
    const image = this.images[slot];
    if (page >= image.pages) {
      fail(
        `reference to page ${page} of image "${image.id}", it has ${image.pages} pages`,
      );
    }
    return image.committed.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  }

  /** Reserves staging room for a unit of `blocks` blocks starting at block `first`; returns its staging offset. */
  #pushUnit(
    slot: number,
    first: number,
    blocks: number,
    bytes: number,
  ): number {
    const staging = this.#staging;
    staging.ensure(bytes);
    const at = staging.pos;
    staging.pos += bytes;
    this.#unitSlot.push(slot);
    this.#unitBlock.push(first);
    this.#unitBlocks.push(blocks);
    this.#unitPos.push(at);
    return at;
  }

  /** Stages the masked blocks of a BLOCKS op, each as a unit of its own. */
  #stageBlocks(
    reader: ByteReader,
    slot: number,
    page: number,
    maskBytes: number,
    fail: (m: string) => never,
  ): void {
    const image = this.images[slot];
    const bs = this.hasher.blockSize;
    const wpb = bs >>> 2;
    const bpp = image.blocksPerPage;
    const mask = reader.take(maskBytes, "block mask");
    for (let k = 0; k < bpp; k++) {
      if (((mask[k >>> 3] >>> (k & 7)) & 1) === 0) continue;
      const b = page * bpp + k;
      if (b >= image.blocks) {
        fail(`block mask of page ${page} names block ${k} past the image end`);
      }
      const at = this.#pushUnit(slot, b, 1, bs);
      const dst = this.#staging.bytes;
      const dstWords = this.#stagingWordsView();
      const bk = reader.u8("block op");
      if (bk === BlockOpKind.XOR) {
        const len = reader.uvarint("block xor length");
        const end = reader.pos + len;
        if (end > reader.end) {
          fail(`block xor data of page ${page} runs past the op stream`);
        }
        const words = image.words;
        for (let i = 0, w = b * wpb, d = at >>> 2; i < wpb; i++) {
          dstWords[d + i] = words[w + i];
        }
        applyXorZeroRun(reader, end, dstWords, at >>> 2, wpb);
      } else if (bk === BlockOpKind.SHARED) {
        const s2 = reader.uvarint("shared block slot");
        const b2 = reader.uvarint("shared block");
        if (s2 >= this.images.length) {
          fail(
            `shared block from image slot ${s2}, only ${this.images.length}`,
          );
        }
        const other = this.images[s2];
        if (b2 >= other.blocks) {
          fail(
            `shared block ${b2} of image "${other.id}", it has ${other.blocks} blocks`,
          );
        }
        dst.set(other.committed.subarray(b2 * bs, b2 * bs + bs), at);
      } else {
        fail(`unknown block op ${bk} in page ${page}, expected 0 or 1`);
      }
    }
  }

  #addLzRef(slot: number, page: number, fail: (m: string) => never): void {
    const bytes = slot < 0 ? this.#zeroRef : this.#refPage(slot, page, fail);
    const key = slot < 0 ? -1 : this.#pageBases[slot] + page;
    if (this.#lzSeen.has(key)) return;
    this.#lzSeen.add(key);
    this.#lzPrefix.append(bytes);
  }

  #stagingWordsView(): Uint32Array {
    const buffer = this.#staging.bytes.buffer;
    if (this.#stagingWords.buffer !== buffer) {
      this.#stagingWords = new Uint32Array(buffer);
    }
    return this.#stagingWords;
  }

  #readRef(
    reader: ByteReader,
    slot: number,
    page: number,
    fail: (m: string) => never,
  ): Uint8Array {
    const rk = reader.u8("reference kind");
    if (rk === RefKind.SAME) return this.#refPage(slot, page, fail);
    if (rk === RefKind.OTHER) {
      const s2 = reader.uvarint("reference image slot");
      return this.#refPage(s2, reader.uvarint("reference page"), fail);
    }
    if (rk === RefKind.ZERO) return this.#zeroRef;
    return fail(
      `unknown reference kind ${rk} at byte ${
        reader.pos - 1
      }, expected 0, 1 or 2`,
    );
  }

  #stageChunk(
    slot: number,
    body: PatchBody,
    lastPage: number,
    fail: (m: string) => never,
  ): number {
    const image = this.images[slot];
    // Bounds from the chunk's own page count, checked before anything is
    // decompressed: a frame claiming a huge op stream is a bomb, not a patch.
    if (body.pages > image.pages) {
      fail(
        `chunk ${body.chunk} of image "${image.id}" claims ${body.pages} page ops, the image has ${image.pages} pages`,
      );
    }
    const maxOps = body.pages * MAX_OP_BYTES_PER_PAGE;
    if (body.opsSize > maxOps) {
      fail(
        `chunk ${body.chunk} of image "${image.id}" claims a ${body.opsSize}-byte op stream, at most ${maxOps} for ${body.pages} page ops`,
      );
    }
    let ops: Uint8Array;
    if (body.opsCodec === SectionCodec.LZMA2) {
      try {
        ops = this.#lzmaCodec().decompress(body.ops, body.opsSize);
      } catch (e) {
        fail(
          `op stream of image "${image.id}" chunk ${body.chunk} does not decompress: ${
            (e as Error).message
          }`,
        );
      }
    } else if (body.opsCodec === SectionCodec.ZSTD) {
      try {
        ops = this.zstd.decompress(body.ops, body.opsSize);
      } catch (e) {
        fail(
          `op stream of image "${image.id}" chunk ${body.chunk} does not decompress: ${
            (e as Error).message
          }`,
        );
      }
    } else {
      ops = body.ops;
      if (ops.length !== body.opsSize) {
        fail(`raw op stream is ${ops.length} bytes, expected ${body.opsSize}`);
      }
    }
    const reader = new ByteReader(ops!);
    const staging = this.#staging;
    this.#lzPrefix.reset();
    this.#lzSeen.clear();
    this.#lzPages.clear();
    this.#epochCopies.clear();
    // Page deltas restart in every chunk; chunks of an image cover increasing pages.
    let page = -1;
    let count = 0;
    const bpp = image.blocksPerPage;
    const maskBytes = bpp >>> 3;
    try {
      while (reader.pos < reader.end) {
        const kind = reader.u8("op kind");
        page = page + 1 + reader.uvarint("page delta");
        if (page >= image.pages) {
          fail(
            `op for page ${page} of image "${image.id}", it has ${image.pages} pages`,
          );
        }
        if (count === 0 && page <= lastPage) {
          fail(
            `chunk ${body.chunk} of image "${image.id}" starts at page ${page}, the previous chunk ended at ${lastPage}`,
          );
        }
        count++;
        if (kind === OpKind.BLOCKS) {
          this.#stageBlocks(reader, slot, page, maskBytes, fail);
          continue;
        }
        const at = this.#pushUnit(slot, page * bpp, bpp, PAGE_SIZE);
        const dst = staging.bytes;
        const dstWords = this.#stagingWordsView();
        const atWord = at >>> 2;
        switch (kind) {
          case OpKind.ZERO:
            dst.fill(0, at, at + PAGE_SIZE);
            break;
          case OpKind.COPY:
            if (
              reader.pos < reader.end &&
              reader.bytes[reader.pos] === RefKind.EPOCH
            ) {
              reader.pos++;
              const s2 = reader.uvarint("reference image slot");
              const p2 = reader.uvarint("reference page");
              this.#epochCopies.push(at);
              this.#epochCopies.push(
                this.#stagedPage(s2, p2, slot, page, fail),
              );
            } else {
              dst.set(this.#readRef(reader, slot, page, fail), at);
            }
            break;
          case OpKind.XOR: {
            dst.set(this.#readRef(reader, slot, page, fail), at);
            const len = reader.uvarint("xor length");
            const end = reader.pos + len;
            if (end > reader.end) {
              fail(`xor data of page ${page} runs past the op stream`);
            }
            applyXorZeroRun(reader, end, dstWords, atWord, WORDS);
            break;
          }
          case OpKind.LITERAL: {
            const len = image.pageLength(page);
            dst.set(reader.take(len, "literal page"), at);
            if (len < PAGE_SIZE) dst.fill(0, at + len, at + PAGE_SIZE);
            break;
          }
          case OpKind.LZ: {
            // The chunk's prefix holds each named page once, in the order first named.
            const rk = reader.u8("reference kind");
            if (rk === RefKind.ZERO) this.#addLzRef(-1, 0, fail);
            else if (rk === RefKind.SAME) this.#addLzRef(slot, page, fail);
            else if (rk === RefKind.OTHER) {
              const s2 = reader.uvarint("reference image slot");
              this.#addLzRef(s2, reader.uvarint("reference page"), fail);
            } else {
              fail(
                `unknown reference kind ${rk} at byte ${
                  reader.pos - 1
                }, expected 0, 1 or 2`,
              );
            }
            const extra = reader.u8("extra reference count");
            for (let i = 0; i < extra; i++) {
              const s2 = reader.uvarint("extra reference slot");
              this.#addLzRef(s2, reader.uvarint("extra reference page"), fail);
            }
            this.#lzPages.push(at);
            break;
          }
          default:
            fail(
              `unknown op kind ${kind} at byte ${
                reader.pos - 1
              } of image "${image.id}", expected 0-5`,
            );
        }
      }
    } catch (e) {
      if (e instanceof DecodeError) throw e;
      fail(`image "${image.id}" chunk ${body.chunk}: ${(e as Error).message}`);
    }
    if (count !== body.pages) {
      fail(
        `image "${image.id}" chunk ${body.chunk} has ${count} ops, frame says ${body.pages}`,
      );
    }
    const lzPages = this.#lzPages.length;
    if (lzPages > 0 || body.lz) {
      if (!body.lz || body.lzSize !== lzPages * PAGE_SIZE) {
        fail(
          `chunk ${body.chunk} has ${lzPages} LZ pages but an LZ section of ${
            body.lzSize ?? 0
          } bytes`,
        );
      }
      if (this.#lzOut.length < body.lzSize!) {
        this.#lzOut = new Uint8Array(body.lzSize!);
      }
      const pages = this.#lzOut;
      try {
        if (body.lzCodec === SectionCodec.LZMA2) {
          this.#lzmaCodec().decompressInto(
            body.lz!,
            pages.subarray(0, body.lzSize!),
            this.#lzPrefix.view(),
          );
        } else {
          this.zstd.decompressInto(
            body.lz!,
            pages,
            0,
            body.lzSize!,
            this.#lzPrefix.view(),
          );
        }
      } catch (e) {
        fail(
          `LZ section of image "${image.id}" chunk ${body.chunk} does not decompress: ${
            (e as Error).message
          }`,
        );
      }
      for (let i = 0; i < lzPages; i++) {
        this.#staging.bytes.set(
          pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE),
          this.#lzPages.data[i],
        );
      }
    }
    // Now every page this chunk names is whole (its LZ pages included).
    const copies = this.#epochCopies.data;
    for (let i = 0; i < this.#epochCopies.length; i += 2) {
      this.#staging.bytes.copyWithin(
        copies[i],
        copies[i + 1],
        copies[i + 1] + PAGE_SIZE,
      );
    }
    return page;
  }

  /**
   * Staging offset of page `page` of image `slot` as staged earlier in this
   * epoch by an op that made it whole (not BLOCKS); fails otherwise.
   */
  #stagedPage(
    slot: number,
    page: number,
    curSlot: number,
    curPage: number,
    fail: (m: string) => never,
  ): number {
    const image = this.images[slot];
    const where =
      `page ${curPage} of image slot ${curSlot} copies page ${page} of slot ${slot} of this epoch`;
    if (!image || slot > curSlot || (slot === curSlot && page >= curPage)) {
      fail(`${where}, which is not staged before it`);
    }
    const block = page * image.blocksPerPage;
    const uSlot = this.#unitSlot.data, uBlock = this.#unitBlock.data;
    // Units are in (slot, block) order; the last one is the copying page.
    let lo = 0, hi = this.#unitPos.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (
        uSlot[mid] < slot || (uSlot[mid] === slot && uBlock[mid] < block)
      ) lo = mid + 1;
      else hi = mid;
    }
    if (
      lo >= this.#unitPos.length - 1 || uSlot[lo] !== slot ||
      uBlock[lo] !== block ||
      this.#unitBlocks.data[lo] !== image.blocksPerPage
    ) {
      fail(`${where}, which this epoch did not stage as a whole page`);
    }
    return this.#unitPos.data[lo];
  }

  /** Releases native resources the decoder created. */
  close(): void {
    if (this.#ownsZstd) this.zstd.close();
  }
}

function hex(hi: number, lo: number): string {
  return (hi >>> 0).toString(16).padStart(8, "0") +
    (lo >>> 0).toString(16).padStart(8, "0");
}
