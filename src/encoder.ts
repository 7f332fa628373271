/**
 * The primary's codec: hash → match → XOR → compress → frame, one epoch at a
 * time, over one or more images with sharing across them.
 *
 * The encoder keeps a model of what the receiver has committed (contents,
 * block hashes, digests, content index) and advances it after every epoch:
 * it assumes the receiver applies every epoch it produces, in order.
 * @module
 */

import {
  type BlockHasher,
  createBlockHasher,
  hashBlockInto,
} from "./hash/block_hash.ts";
import { AnchorIndex } from "./anchor_index.ts";
import { ContentIndex } from "./content_index.ts";
import {
  type CommitImage,
  encodeFrame,
  FrameType,
  type PatchBody,
  SectionCodec,
} from "./frame.ts";
import { checkLength, ImageState, PAGE_SIZE } from "./image_state.ts";
import { type Level, type LevelParams, levelParams } from "./level.ts";
import { PageEncoder } from "./page_encoder.ts";
import { ByteWriter, OP_NAMES, OpKind, RefKind } from "./patch.ts";
import { createCodecZstd, type Zstd } from "./compress/zstd.ts";
import {
  createLzma,
  type Lzma,
  type LzmaCompressOptions,
} from "./compress/lzma.ts";
import { U32List } from "./_u32_list.ts";

/** An image the encoder replicates. */
export interface ImageSpec {
  /** Stable id (the backup stores it as `ID.img`). */
  id: string;
  /** Size in bytes (for a sized image, its capacity). */
  size: number;
  /**
   * A sized image: its contents are the first `length` bytes, reported by
   * each capture (`CaptureResult.lengths`), and zeros up to `size`. The
   * length is committed with every epoch. Default false: every byte is
   * contents.
   */
  sized?: boolean;
}

/** Options of {@linkcode EpochEncoder}. */
export interface EncoderOptions {
  /** Operating point; default "fast". */
  level?: Level;
  /** Block size for hashing; default 64. */
  blockSize?: number;
  /** Block hasher to use (default: the WebAssembly one). */
  hasher?: BlockHasher;
  /** zstd instance (default: created, FFI where available). */
  zstd?: Zstd;
  /** Content index sampling (power of two); default 8 at fast, 1 at max. */
  indexSampling?: number;
  /** Test hook: weakens content-index keys to force hash collisions. */
  indexKeyMask?: number;
  /** Overrides of the level's tunables (benchmarks and experiments). */
  tuning?: Partial<LevelParams>;
  /** Uncompressed op bytes per PATCH frame before a new chunk starts; default 4 MiB. */
  chunkBytes?: number;
}

/** Figures for one encoded epoch. */
export interface EpochStats {
  epoch: number;
  imageBytes: number;
  dirtyPages: number;
  dirtyBlocks: number;
  sharedBlocks: number;
  /** Extra LZ reference pages found through anchors. */
  lzExtraRefs: number;
  /** Pages per op kind. */
  ops: Record<string, number>;
  /** Pages per reference kind (same address, other page, zero page, a page new earlier in this epoch). */
  refs: { same: number; other: number; zero: number; epoch: number };
  /** Op stream + LZ section bytes before compression. */
  rawBytes: number;
  /** Every byte of every frame. */
  wireBytes: number;
  frames: number;
  /** Dirty-detection scan, page matching and encoding, compression and framing, and the commit of the model. */
  scanMs: number;
  matchMs: number;
  compressMs: number;
  commitMs: number;
  totalMs: number;
}

/** The frames of one epoch (PATCH frames then one COMMIT frame) and its figures. */
export interface EncodedEpoch {
  epoch: number;
  frames: Uint8Array[];
  stats: EpochStats;
}

interface SlotWork {
  dirty: Uint32Array;
  dirtyPages: U32List;
  chunks: number;
}

/**
 * Encodes checkpoints of a fixed set of images into framed patches.
 *
 * @example
 * ```ts
 * const encoder = new EpochEncoder([{ id: "vm1", size: 1 << 20 }], { level: "fast" });
 * const image = new Uint8Array(1 << 20);
 * image[5000] = 1;
 * const { frames, stats } = encoder.encode([image]);
 * // send frames; stats.wireBytes is what crossed the wire
 * ```
 */
export class EpochEncoder {
  #level: Level;
  /** Tunables given at construction, kept over every level set later. */
  #tuning: Partial<LevelParams>;
  readonly hasher: BlockHasher;
  readonly images: ImageState[];
  readonly index: ContentIndex;
  readonly zstd: Zstd;
  readonly chunkBytes: number;
  /**
   * One buffer per image, in the order given, that a source can capture
   * checkpoints into: passing them to {@linkcode encode} scans them in place.
   * Any other arrays work too, through a copying scan.
   */
  readonly captureBuffers: Uint8Array[];
  #epoch = 0;
  #pages: PageEncoder;
  #work: SlotWork[];
  #ops = new ByteWriter(1 << 20);
  #lz = new ByteWriter(1 << 16);
  #lzPrefix = new ByteWriter(1 << 16);
  #padded = new Uint8Array(PAGE_SIZE);
  #paddedWords = new Uint32Array(this.#padded.buffer);
  #oldHashes: Uint32Array;
  #zeroHash: { lo: number; hi: number };
  #ownsZstd: boolean;
  #params: LevelParams;
  #anchors: AnchorIndex | null = null;
  #lzSeen = new Set<number>();
  /** LZMA2 codec and its options, when the level's sections use it. */
  #lzma: Lzma | null = null;
  #lzmaOptions: LzmaCompressOptions = {};
  /** LZ pages of the current chunk, and how many of them have only the zero page as reference. */
  #lzPages = 0;
  #lzZeroPages = 0;

  constructor(specs: ImageSpec[], options: EncoderOptions = {}) {
    if (specs.length === 0) {
      throw new RangeError("the encoder needs at least one image");
    }
    const ids = new Set<string>();
    for (const s of specs) {
      if (ids.has(s.id)) throw new RangeError(`duplicate image id "${s.id}"`);
      ids.add(s.id);
    }
    this.#level = options.level ?? "fast";
    this.#tuning = options.tuning ?? {};
    const blockSize = options.blockSize ?? 64;
    // Capture buffers, hashes and dirty bits live in the hasher's arena so
    // the scan reads them in place (about 30% faster than copying through).
    let arenaBytes = 0;
    for (const s of specs) {
      const blocks = Math.ceil(s.size / blockSize);
      arenaBytes += align64(s.size) + align64(blocks * 8) +
        align64(Math.ceil(blocks / 32) * 4);
    }
    this.hasher = options.hasher ??
      createBlockHasher({ blockSize, arenaBytes });
    const allocWords = (n: number) => {
      const bytes = this.hasher.alloc(n * 4);
      return bytes
        ? new Uint32Array(bytes.buffer, bytes.byteOffset, n)
        : new Uint32Array(n);
    };
    this.#ownsZstd = !options.zstd;
    this.zstd = options.zstd ?? createCodecZstd();
    this.chunkBytes = options.chunkBytes ?? 4 << 20;
    this.images = specs.map((s) =>
      new ImageState(s.id, s.size, this.hasher, {
        hashes: allocWords(2 * this.hasher.blockCount(s.size)),
      })
    );
    this.captureBuffers = specs.map((s) =>
      this.hasher.alloc(s.size) ?? new Uint8Array(s.size)
    );
    const zh = new Uint32Array(2);
    hashBlockInto(
      new Uint8Array(this.hasher.blockSize),
      0,
      this.hasher.blockSize,
      zh,
      0,
    );
    this.#zeroHash = { lo: zh[0], hi: zh[1] };
    this.index = new ContentIndex(
      this.images.map((i) => ({
        committed: i.committed,
        hashes: i.hashes,
        blocks: i.blocks,
      })),
      this.hasher.blockSize,
      this.#zeroHash,
      // max indexes every block (identical blocks anywhere); fast one in 8, enough
      // to find whole identical pages, at an eighth of the inserts and memory.
      {
        sampling: options.indexSampling ?? (this.level === "max" ? 1 : 8),
        keyMask: options.indexKeyMask,
      },
    );
    this.index.rebuild();
    const params = { ...levelParams(this.level), ...this.#tuning };
    this.#params = params;
    this.#openLzma();
    if (params.anchors) {
      this.#anchors = new AnchorIndex(
        this.images.reduce((n, i) => n + i.pages, 0),
      );
    }
    this.#pages = new PageEncoder(
      this.images,
      this.index,
      params,
      params.lzThreshold === Infinity ? null : this.zstd,
      this.#zeroHash,
      this.#anchors,
    );
    this.#work = this.images.map((i) => ({
      dirty: allocWords(Math.ceil(i.blocks / 32)),
      dirtyPages: new U32List(),
      chunks: 0,
    }));
    this.#oldHashes = new Uint32Array(2 * (PAGE_SIZE / this.hasher.blockSize));
  }

  /** The operating point of the next epoch (frames carry it). */
  get level(): Level {
    return this.#level;
  }

  /**
   * Encodes the next epochs at `level` (`--level auto` sets it per epoch).
   * The content index keeps the sampling of the level the encoder was made
   * with: make it at `max` to index every block for both.
   */
  setLevel(level: Level): void {
    if (level === this.#level) return;
    this.#level = level;
    this.#params = { ...levelParams(level), ...this.#tuning };
    this.#pages.params = this.#params;
    this.#pages.zstd = this.#params.lzThreshold === Infinity ? null : this.zstd;
    this.#openLzma();
  }

  #openLzma(): void {
    const params = this.#params;
    if (params.sectionCodec !== "lzma2") return;
    this.#lzma ??= createLzma();
    // The LZ section is memory pages, i.e. words: literals predicted from
    // their place in a 4-byte word (lp 2, pb 2), not the byte before (lc 0).
    this.#lzmaOptions = {
      preset: params.lzmaLzPreset,
      literalContextBits: 0,
      literalPositionBits: 2,
      positionBits: 2,
    };
  }

  /** The last epoch encoded (0 before the first: every image starts all zero). */
  get epoch(): number {
    return this.#epoch;
  }

  /**
   * Starts the model from known contents at `epoch` instead of all-zero epoch
   * 0: a promoted backup continues from its last committed checkpoint, so
   * peers at that epoch carry on incrementally.
   */
  seed(epoch: number, contents: Uint8Array[], lengths?: number[]): void {
    if (!Number.isSafeInteger(epoch) || epoch < 0) {
      throw new RangeError(
        `epoch must be a non-negative integer, got ${epoch}`,
      );
    }
    if (contents.length !== this.images.length) {
      throw new RangeError(
        `expected ${this.images.length} images, got ${contents.length}`,
      );
    }
    this.images.forEach((image, s) => image.reset(contents[s], lengths?.[s]));
    this.index.rebuild();
    if (this.#anchors) {
      this.images.forEach((image, s) => {
        for (let p = 0; p < image.pages; p++) {
          this.#anchors!.insertPage(
            image.words,
            p * (PAGE_SIZE / 4),
            this.#pages.globalPage(s, p),
          );
        }
      });
    }
    this.#epoch = epoch;
  }

  /** Bytes of memory the encoder's model holds (committed copies, hashes, index). */
  get modelBytes(): number {
    let n = this.index.byteLength + (this.#anchors?.byteLength ?? 0);
    for (const i of this.images) {
      n += i.committed.byteLength + i.hashes.byteLength;
    }
    for (const w of this.#work) n += w.dirty.byteLength;
    return n;
  }

  /**
   * Encodes the next epoch from the images' current contents (one per image,
   * in the order given to the constructor, each exactly its size).
   *
   * `dirtyPages`, per image, may name the pages that can have changed (a
   * source's dirty log: bit `p & 31` of word `p >>> 5`); only those are
   * hashed. Pages it leaves out must be unchanged. null or absent: the
   * whole image is scanned.
   *
   * `lengths`, per image, gives a sized image's length in use (its bytes
   * past it must be zero); absent: the whole size.
   */
  encode(
    current: Uint8Array[],
    dirtyPages?: (Uint32Array | null)[],
    lengths?: (number | undefined)[],
  ): EncodedEpoch {
    const t0 = performance.now();
    if (current.length !== this.images.length) {
      throw new RangeError(
        `expected ${this.images.length} images, got ${current.length}`,
      );
    }
    for (let s = 0; s < current.length; s++) {
      if (current[s].length !== this.images[s].size) {
        throw new RangeError(
          `image "${this.images[s].id}" is ${
            current[s].length
          } bytes, expected ${this.images[s].size}`,
        );
      }
      checkLength(
        this.images[s].id,
        this.images[s].size,
        lengths?.[s] ?? this.images[s].size,
      );
    }
    const epoch = this.#epoch + 1;
    const stats: EpochStats = {
      epoch,
      imageBytes: 0,
      dirtyPages: 0,
      dirtyBlocks: 0,
      sharedBlocks: 0,
      lzExtraRefs: 0,
      ops: Object.fromEntries(OP_NAMES.map((n) => [n, 0])),
      refs: { same: 0, other: 0, zero: 0, epoch: 0 },
      rawBytes: 0,
      wireBytes: 0,
      frames: 0,
      scanMs: 0,
      matchMs: 0,
      compressMs: 0,
      commitMs: 0,
      totalMs: 0,
    };

    // hash: the dirty-detection scan (updates the model's hashes to the new contents).
    for (let s = 0; s < current.length; s++) {
      const w = this.#work[s];
      w.dirty.fill(0);
      w.dirtyPages.clear();
      w.chunks = 0;
      const hint = dirtyPages?.[s];
      stats.dirtyBlocks += hint && this.images[s].blocksPerPage % 32 === 0
        ? this.#scanHinted(s, current[s], hint)
        : this.hasher.scanDirty(current[s], this.images[s].hashes, w.dirty);
      stats.imageBytes += this.images[s].size;
    }
    const t1 = performance.now();
    stats.scanMs = t1 - t0;

    // match + XOR per dirty page, compress + frame per chunk.
    const frames: Uint8Array[] = [];
    this.#pages.beginEpoch(current);
    for (let s = 0; s < current.length; s++) {
      this.#encodeImage(s, current[s], epoch, frames, stats);
    }

    // Commit the model: what the receiver will hold once it applies this epoch.
    const t2 = performance.now();
    const commitImages: CommitImage[] = [];
    for (let s = 0; s < current.length; s++) {
      this.#commitImage(s, current[s]);
      const image = this.images[s];
      image.length = lengths?.[s] ?? image.size;
      const d = image.digestValue();
      commitImages.push({
        id: image.id,
        size: image.size,
        ...(image.length !== image.size ? { length: image.length } : {}),
        chunks: this.#work[s].chunks,
        digestLo: d.lo,
        digestHi: d.hi,
      });
    }
    if (this.index.needsRebuild) this.index.rebuild();
    frames.push(
      encodeFrame(FrameType.COMMIT, this.level, epoch, "", {
        base: epoch - 1,
        pageSize: PAGE_SIZE,
        blockSize: this.hasher.blockSize,
        images: commitImages,
      }),
    );
    const t3 = performance.now();
    stats.commitMs = t3 - t2;
    for (const f of frames) stats.wireBytes += f.length;
    stats.frames = frames.length;
    stats.totalMs = t3 - t0;
    this.#epoch = epoch;
    return { epoch, frames, stats };
  }

  /** Scans only the runs of pages a dirty log names. */
  #scanHinted(slot: number, cur: Uint8Array, hint: Uint32Array): number {
    const image = this.images[slot];
    const dirty = this.#work[slot].dirty;
    const bpp = image.blocksPerPage;
    const wordsPerPage = bpp >>> 5;
    const need = Math.ceil(image.pages / 32);
    if (hint.length < need) {
      throw new RangeError(
        `dirty page bitmap of "${image.id}" has ${hint.length} words, expected ${need}`,
      );
    }
    let count = 0;
    let p = 0;
    while (p < image.pages) {
      const word = hint[p >>> 5];
      if (word === 0 && (p & 31) === 0) {
        p += 32;
        continue;
      }
      if (((word >>> (p & 31)) & 1) === 0) {
        p++;
        continue;
      }
      let end = p + 1;
      while (end < image.pages && ((hint[end >>> 5] >>> (end & 31)) & 1)) end++;
      const from = p * PAGE_SIZE, to = Math.min(end * PAGE_SIZE, image.size);
      count += this.hasher.scanDirty(
        cur.subarray(from, to),
        image.hashes.subarray(
          2 * p * bpp,
          2 * Math.min(end * bpp, image.blocks),
        ),
        dirty.subarray(p * wordsPerPage, end * wordsPerPage),
      );
      p = end;
    }
    return count;
  }

  #encodeImage(
    slot: number,
    cur: Uint8Array,
    epoch: number,
    frames: Uint8Array[],
    stats: EpochStats,
  ): void {
    const image = this.images[slot];
    const work = this.#work[slot];
    const dirty = work.dirty;
    const bpp = image.blocksPerPage;
    const aligned = (cur.byteOffset & 3) === 0;
    const curWords = aligned
      ? new Uint32Array(cur.buffer, cur.byteOffset, cur.length >>> 2)
      : null;
    const ops = this.#ops;
    ops.reset();
    this.#lz.reset();
    this.#lzPrefix.reset();
    this.#lzSeen.clear();
    this.#lzPages = 0;
    this.#lzZeroPages = 0;
    let pagesInChunk = 0;
    let prevPage = -1;
    let lastPage = -1;
    let tMatch = performance.now();
    for (let w = 0; w < dirty.length; w++) {
      let bits = dirty[w];
      while (bits !== 0) {
        const bit = 31 - Math.clz32(bits & -bits);
        bits &= bits - 1;
        const page = (((w << 5) + bit) / bpp) | 0;
        if (page === lastPage) continue;
        lastPage = page;
        const off = page * PAGE_SIZE;
        let pageBytes: Uint8Array, pageWords: Uint32Array, pageOff: number;
        if (curWords && off + PAGE_SIZE <= cur.length) {
          pageBytes = cur;
          pageWords = curWords;
          pageOff = off;
        } else {
          // Short last page or unaligned source: work on a zero-padded aligned copy.
          this.#padded.fill(0);
          this.#padded.set(
            cur.subarray(off, Math.min(off + PAGE_SIZE, cur.length)),
          );
          pageBytes = this.#padded;
          pageWords = this.#paddedWords;
          pageOff = 0;
        }
        const choice = this.#pages.encode(
          slot,
          page,
          pageBytes,
          pageWords,
          pageOff,
          dirty,
          page - prevPage - 1,
          ops,
        );
        prevPage = page;
        pagesInChunk++;
        stats.dirtyPages++;
        stats.ops[OP_NAMES[choice.kind]]++;
        stats.sharedBlocks += choice.sharedBlocks;
        if (choice.refKind === RefKind.SAME) stats.refs.same++;
        else if (choice.refKind === RefKind.OTHER) stats.refs.other++;
        else if (choice.refKind === RefKind.ZERO) stats.refs.zero++;
        else if (choice.refKind === RefKind.EPOCH) stats.refs.epoch++;
        if (choice.kind === OpKind.LZ) {
          this.#lz.append(pageBytes.subarray(pageOff, pageOff + PAGE_SIZE));
          this.#lzPages++;
          if (
            choice.lzExtra === 0 &&
            (choice.refKind === RefKind.ZERO ||
              this.#committedPageIsZero(choice.refSlot, choice.refPage))
          ) {
            this.#lzZeroPages++;
          }
          if (choice.refKind === RefKind.ZERO) this.#addLzRef(-1, 0);
          else this.#addLzRef(choice.refSlot, choice.refPage);
          stats.lzExtraRefs += choice.lzExtra;
          for (let i = 0; i < choice.lzExtra; i++) {
            this.#addLzRef(choice.lzExtraSlot[i], choice.lzExtraPage[i]);
          }
        }
        work.dirtyPages.push(page);
        if (
          ops.pos >= this.chunkBytes ||
          this.#lz.pos >= this.#params.lzChunkBytes
        ) {
          const t = performance.now();
          stats.matchMs += t - tMatch;
          this.#flushChunk(slot, epoch, pagesInChunk, frames, stats);
          tMatch = performance.now();
          stats.compressMs += tMatch - t;
          pagesInChunk = 0;
          prevPage = -1;
        }
      }
    }
    const t = performance.now();
    stats.matchMs += t - tMatch;
    if (pagesInChunk > 0) {
      this.#flushChunk(slot, epoch, pagesInChunk, frames, stats);
    }
    stats.compressMs += performance.now() - t;
  }

  /** Whether committed page `page` of image `slot` is all zero (stops at its first non-zero word). */
  #committedPageIsZero(slot: number, page: number): boolean {
    const words = this.images[slot].words;
    const end = Math.min((page + 1) * (PAGE_SIZE / 4), words.length);
    for (let i = page * (PAGE_SIZE / 4); i < end; i++) {
      if (words[i] !== 0) return false;
    }
    return true;
  }

  /** Appends a reference page to the chunk's LZ prefix the first time the chunk names it (slot -1: the zero page). */
  #addLzRef(slot: number, page: number): void {
    const key = slot < 0 ? -1 : this.#pages.globalPage(slot, page);
    if (this.#lzSeen.has(key)) return;
    this.#lzSeen.add(key);
    if (slot < 0) {
      this.#lzPrefix.ensure(PAGE_SIZE);
      this.#lzPrefix.bytes.fill(
        0,
        this.#lzPrefix.pos,
        this.#lzPrefix.pos + PAGE_SIZE,
      );
      this.#lzPrefix.pos += PAGE_SIZE;
    } else {
      const ref = this.images[slot].committed;
      this.#lzPrefix.append(
        ref.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE),
      );
    }
  }

  #flushChunk(
    slot: number,
    epoch: number,
    pages: number,
    frames: Uint8Array[],
    stats: EpochStats,
  ): void {
    const { zstdLevel, lzLevel } = this.#params;
    const raw = this.#ops.view();
    stats.rawBytes += raw.length + this.#lz.pos;
    const lzma = this.#params.sectionCodec === "lzma2" ? this.#lzma : null;
    let ops = lzma
      ? lzma.compress(raw, { preset: this.#params.lzmaOpsPreset })
      : this.zstd.compress(raw, { level: zstdLevel, checksum: false });
    let opsCodec: number = lzma ? SectionCodec.LZMA2 : SectionCodec.ZSTD;
    if (ops.length >= raw.length) {
      ops = raw.slice();
      opsCodec = SectionCodec.RAW;
    }
    const work = this.#work[slot];
    const body: PatchBody = {
      base: epoch - 1,
      slot,
      chunk: work.chunks,
      pages,
      ops,
      opsSize: raw.length,
      opsCodec,
    };
    if (this.#lz.pos > 0) {
      const prefix = this.#lzPrefix.view();
      // New content (pages whose only reference is the zero page: a first
      // checkpoint, fresh heap) has nothing to be predicted from; zstd
      // compresses it at 3× LZMA2's speed. jvm's first checkpoint at max:
      // 25.2 s with LZMA2 for every chunk, 9.3 s with zstd -9.
      if (lzma && this.#lzZeroPages * 2 <= this.#lzPages) {
        body.lz = lzma.compress(this.#lz.view(), {
          ...this.#lzmaOptions,
          dictionary: prefix,
        });
        body.lzCodec = SectionCodec.LZMA2;
      } else {
        body.lz = this.zstd.compress(this.#lz.view(), {
          level: lzLevel,
          prefix,
          checksum: false,
          // The zstd module widens the window to cover prefix + section itself.
        });
      }
      body.lzSize = this.#lz.pos;
    }
    frames.push(
      encodeFrame(
        FrameType.PATCH,
        this.level,
        epoch,
        this.images[slot].id,
        body,
      ),
    );
    work.chunks++;
    this.#ops.reset();
    this.#lz.reset();
    this.#lzPrefix.reset();
    this.#lzSeen.clear();
    this.#lzPages = 0;
    this.#lzZeroPages = 0;
  }

  /** Applies the epoch to the model: digests, committed bytes, content index. */
  #commitImage(slot: number, cur: Uint8Array): void {
    const image = this.images[slot];
    const work = this.#work[slot];
    const dirty = work.dirty;
    const old = this.#oldHashes;
    const hashes = image.hashes;
    const committed = image.committed;
    const words = image.words;
    const bs = this.hasher.blockSize;
    const wpb = bs >>> 2;
    const bpp = image.blocksPerPage;
    const curWords = (cur.byteOffset & 3) === 0
      ? new Uint32Array(cur.buffer, cur.byteOffset, cur.length >>> 2)
      : null;
    const pages = work.dirtyPages;
    for (let i = 0; i < pages.length; i++) {
      const page = pages.data[i];
      const first = page * bpp;
      const end = Math.min(first + bpp, image.blocks);
      let count = 0;
      for (let b = first; b < end; b++) {
        count += (dirty[b >>> 5] >>> (b & 31)) & 1;
      }
      // Old hashes for the digest: the whole page through the kernel when much
      // changed, else just the dirty blocks (most pages change a few).
      const wholePage = count > 8;
      if (wholePage) {
        this.hasher.hashAll(
          committed.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE),
          old,
        );
      }
      for (let b = first; b < end; b++) {
        if (((dirty[b >>> 5] >>> (b & 31)) & 1) === 0) continue;
        const off = b * bs;
        let k = 2 * (b - first);
        if (!wholePage) {
          hashBlockInto(committed, off, bs, old, 0);
          k = 0;
        }
        image.digest.remove(b, old[k], old[k + 1]);
        const lo = hashes[2 * b], hi = hashes[2 * b + 1];
        image.digest.add(b, lo, hi);
        if (wholePage) {
          // copied below, in one go
        } else if (curWords && off + bs <= cur.length) {
          const cw = off >>> 2;
          for (let j = 0; j < wpb; j++) words[cw + j] = curWords[cw + j];
        } else {
          committed.set(cur.subarray(off, Math.min(off + bs, cur.length)), off);
        }
        this.index.insert(slot, b, lo, hi);
      }
      if (wholePage) {
        const off = page * PAGE_SIZE;
        committed.set(
          cur.subarray(off, Math.min(off + PAGE_SIZE, cur.length)),
          off,
        );
      }
      this.#anchors?.insertPage(
        words,
        page * (PAGE_SIZE / 4),
        this.#pages.globalPage(slot, page),
      );
    }
  }

  /** Releases native resources the encoder created. */
  close(): void {
    if (this.#ownsZstd) this.zstd.close();
  }
}

function align64(n: number): number {
  return Math.ceil(n / 64) * 64;
}
