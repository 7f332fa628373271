/**
 * The committed state of one image as either end keeps it: contents, block
 * hashes and digest. Both the encoder (as its model of what the receiver
 * holds) and the decoder (as the real thing) use it.
 * @module
 */

import { type BlockHasher, hashBlockInto } from "./hash/block_hash.ts";
import { DigestAccumulator, type ImageDigest } from "./digest.ts";

/** Page size of every image: the unit patches are made of. */
export const PAGE_SIZE = 4096;

/** Committed contents, hashes and digest of one image. */
export class ImageState {
  /** Number of pages (the last may be short). */
  readonly pages: number;
  /** Number of blocks (the last may be short). */
  readonly blocks: number;
  /** Blocks per page. */
  readonly blocksPerPage: number;
  /** Committed bytes, padded with zeros to a whole number of pages. */
  readonly committed: Uint8Array;
  /** 32-bit word view of `committed`. */
  readonly words: Uint32Array;
  /** Block hashes, 2 u32 per block. */
  readonly hashes: Uint32Array;
  /** Digest of the committed contents. */
  readonly digest: DigestAccumulator = new DigestAccumulator();
  /**
   * Bytes in use: `size` for an image whose every byte is contents; less for
   * a sized image (a guest's device state), whose bytes past `length` are
   * zeros. It is part of the digest and committed with each epoch.
   */
  length: number;

  /**
   * A new image of `size` bytes, all zero (the state every replication starts
   * from), or with `initial` contents. `hashes` may supply the storage for the
   * block hashes (for example from the hasher's arena).
   */
  constructor(
    readonly id: string,
    readonly size: number,
    readonly hasher: BlockHasher,
    options: { initial?: Uint8Array; hashes?: Uint32Array } = {},
  ) {
    const initial = options.initial;
    this.length = size;
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new RangeError(
        `image "${id}": size must be a non-negative integer, got ${size}`,
      );
    }
    if (!/^[A-Za-z0-9._-]{1,128}$/.test(id) || id === "." || id === "..") {
      throw new RangeError(
        `image id "${id}" must be 1-128 characters of A-Z a-z 0-9 . _ -`,
      );
    }
    const blockSize = hasher.blockSize;
    if (PAGE_SIZE % blockSize !== 0) {
      throw new RangeError(
        `block size ${blockSize} must divide the page size ${PAGE_SIZE}`,
      );
    }
    this.pages = Math.ceil(size / PAGE_SIZE);
    this.blocks = hasher.blockCount(size);
    this.blocksPerPage = PAGE_SIZE / blockSize;
    this.committed = new Uint8Array(this.pages * PAGE_SIZE);
    this.words = new Uint32Array(this.committed.buffer);
    if (options.hashes && options.hashes.length !== 2 * this.blocks) {
      throw new RangeError(
        `image "${id}": hashes array holds ${options.hashes.length} words, expected ${
          2 * this.blocks
        }`,
      );
    }
    this.hashes = options.hashes ?? new Uint32Array(2 * this.blocks);
    if (initial) {
      if (initial.length !== size) {
        throw new RangeError(
          `image "${id}": initial contents are ${initial.length} bytes, expected ${size}`,
        );
      }
      this.committed.set(initial);
    }
    hasher.hashAll(this.committed.subarray(0, size), this.hashes);
    this.digest.addAll(this.hashes, this.blocks);
  }

  /**
   * Replaces the committed contents with `contents` (exactly `size` bytes) and
   * recomputes every hash and the digest: loading a stored image, or a base sync.
   */
  reset(contents: Uint8Array, length = this.size): void {
    if (contents.length !== this.size) {
      throw new RangeError(
        `image "${this.id}": new contents are ${contents.length} bytes, expected ${this.size}`,
      );
    }
    this.length = checkLength(this.id, this.size, length);
    this.committed.set(contents);
    this.committed.fill(0, this.size);
    this.hasher.hashAll(this.committed.subarray(0, this.size), this.hashes);
    this.digest.lo = 0;
    this.digest.hi = 0;
    this.digest.addAll(this.hashes, this.blocks);
  }

  /** Length of page `page` within the image (PAGE_SIZE except maybe the last). */
  pageLength(page: number): number {
    return Math.min(PAGE_SIZE, this.size - page * PAGE_SIZE);
  }

  /** Digest of the committed contents. */
  digestValue(): ImageDigest {
    return this.digest.value(this.size, this.length);
  }
}

/**
 * Checks a length in use against an image's size; returns it. The message
 * names the image and both numbers.
 */
export function checkLength(id: string, size: number, length: number): number {
  if (!Number.isSafeInteger(length) || length < 0 || length > size) {
    throw new RangeError(
      `image "${id}": length ${length} is not within its size (0 to ${size} bytes)`,
    );
  }
  return length;
}

/** Recent {@linkcode zeroImageDigest}s: an upstream reconnecting names the same images. */
const zeroDigests = new Map<string, ImageDigest>();

/**
 * The digest of an all-zero image of `size` bytes in blocks of `blockSize`
 * (what a new replica holds before anything arrived: `new ImageState(id,
 * size, hasher).digestValue()`), computed without allocating the image or
 * its hashes: every block, the short last one too, hashes as a zero block.
 *
 * @example
 * ```ts
 * import { zeroImageDigest } from "./image_state.ts";
 *
 * zeroImageDigest(1 << 20, 64); // { size: 1048576, lo: …, hi: … }
 * ```
 */
export function zeroImageDigest(size: number, blockSize: number): ImageDigest {
  const key = `${size}/${blockSize}`;
  const known = zeroDigests.get(key);
  if (known) return known;
  const zero = new Uint32Array(2);
  hashBlockInto(new Uint8Array(blockSize), 0, blockSize, zero, 0);
  const d = new DigestAccumulator();
  const blocks = Math.ceil(size / blockSize);
  for (let b = 0; b < blocks; b++) d.add(b, zero[0], zero[1]);
  const digest = d.value(size);
  if (zeroDigests.size >= 16) zeroDigests.clear();
  zeroDigests.set(key, digest);
  return digest;
}
