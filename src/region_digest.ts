/**
 * Region digests: one 64-bit digest per fixed-size region of an image, the
 * levels of the tree that rejoin and verify compare (64 KiB regions, then
 * the pages of the regions that differ). They are built from the same block
 * hashes as the epoch digests, so an end that keeps its block hashes (the
 * encoder's model, a replica) computes them without reading its images
 * again; verify rehashes the bytes themselves.
 *
 * Like the epoch digests, they are non-cryptographic: they find damage and
 * divergence, not an attacker (whom TLS keeps off the link).
 * @module
 */

import type { BlockHasher } from "./hash/block_hash.ts";
import { hashBlockInto } from "./hash/block_hash.ts";
import { PAGE_SIZE } from "./image_state.ts";

/** Bytes per region at the top level of the tree. */
export const REGION_BYTES = 64 << 10;

const P1 = 0x9e3779b1;
const P3 = 0xc2b2ae3d;

/** Number of regions of `unit` bytes in an image of `size` bytes. */
export function regionCount(size: number, unit: number): number {
  return Math.ceil(size / unit);
}

/**
 * Writes the digest of each region listed in `regions` (all of them when
 * null) into `out`, two u32 per listed region, from an image's block hashes
 * (2 u32 per block). A region's digest mixes each block hash with the
 * block's index within the region.
 *
 * @example
 * ```ts
 * import { createBlockHasher } from "./hash/block_hash.ts";
 * import { regionDigestsFromHashes } from "./region_digest.ts";
 *
 * const h = createBlockHasher();
 * const image = new Uint8Array(1 << 17);
 * const hashes = new Uint32Array(2 * h.blockCount(image.length));
 * h.hashAll(image, hashes);
 * const out = new Uint32Array(4);
 * regionDigestsFromHashes(hashes, h.blockCount(image.length), 1024, null, out);
 * console.log(out[0] === out[2] && out[1] === out[3]); // true: both regions are zeros
 * ```
 */
export function regionDigestsFromHashes(
  hashes: Uint32Array,
  blocks: number,
  blocksPerRegion: number,
  regions: Uint32Array | null,
  out: Uint32Array,
): void {
  const count = regions ? regions.length : Math.ceil(blocks / blocksPerRegion);
  if (out.length < 2 * count) {
    throw new RangeError(
      `region digests need ${2 * count} words of output, got ${out.length}`,
    );
  }
  for (let i = 0; i < count; i++) {
    const r = regions ? regions[i] : i;
    const first = r * blocksPerRegion;
    const end = Math.min(first + blocksPerRegion, blocks);
    let lo = 0, hi = 0;
    for (let b = first, k = 0; b < end; b++, k++) {
      lo = (lo + (hashes[2 * b] ^ Math.imul(k, P1))) | 0;
      hi = (hi + (hashes[2 * b + 1] ^ Math.imul(k ^ 0x5bd1e995, P3))) | 0;
    }
    out[2 * i] = lo;
    out[2 * i + 1] = hi;
  }
}

/**
 * Reads an image's bytes region by region through `read` and writes every
 * listed region's digest (all when `regions` is null) into `out`: what
 * verify computes over the bytes a follower really holds, with one region
 * of scratch memory.
 */
export function regionDigestsOfBytes(
  hasher: BlockHasher,
  size: number,
  unit: number,
  regions: Uint32Array | null,
  read: (offset: number, into: Uint8Array) => void,
  out: Uint32Array,
): void {
  const blocksPerRegion = unit / hasher.blockSize;
  const scratch = new Uint8Array(unit);
  const hashes = new Uint32Array(2 * blocksPerRegion);
  const one = new Uint32Array(2);
  const count = regions ? regions.length : regionCount(size, unit);
  for (let i = 0; i < count; i++) {
    const r = regions ? regions[i] : i;
    const offset = r * unit;
    const bytes = Math.min(unit, size - offset);
    const view = scratch.subarray(0, bytes);
    read(offset, view);
    hasher.hashAll(view, hashes);
    regionDigestsFromHashes(
      hashes,
      hasher.blockCount(bytes),
      blocksPerRegion,
      null,
      one,
    );
    out[2 * i] = one[0];
    out[2 * i + 1] = one[1];
  }
}

/**
 * The digests of the listed regions (all when null) of an all-zero image,
 * without allocating it: what a replica that holds nothing yet answers.
 */
export function zeroRegionDigests(
  blockSize: number,
  size: number,
  unit: number,
  regions: Uint32Array | null,
  out: Uint32Array,
): void {
  const zero = new Uint32Array(2);
  hashBlockInto(new Uint8Array(blockSize), 0, blockSize, zero, 0);
  const blocksPerRegion = unit / blockSize;
  const blocks = Math.ceil(size / blockSize);
  const count = regions ? regions.length : regionCount(size, unit);
  for (let i = 0; i < count; i++) {
    const r = regions ? regions[i] : i;
    const n = Math.min(blocksPerRegion, blocks - r * blocksPerRegion);
    let lo = 0, hi = 0;
    for (let k = 0; k < n; k++) {
      lo = (lo + (zero[0] ^ Math.imul(k, P1))) | 0;
      hi = (hi + (zero[1] ^ Math.imul(k ^ 0x5bd1e995, P3))) | 0;
    }
    out[2 * i] = lo;
    out[2 * i + 1] = hi;
  }
}

/**
 * The regions whose digests differ: `ours` holds every region's digest,
 * `theirs` the digests of `regions` (all when null), in that order.
 */
export function differingRegions(
  ours: Uint32Array,
  theirs: Uint32Array,
  regions: Uint32Array | null,
): number[] {
  const differ: number[] = [];
  const count = theirs.length >>> 1;
  for (let i = 0; i < count; i++) {
    const r = regions ? regions[i] : i;
    if (
      ours[2 * r] !== theirs[2 * i] || ours[2 * r + 1] !== theirs[2 * i + 1]
    ) differ.push(r);
  }
  return differ;
}

/** The pages (4 KiB) of the listed regions of `unit` bytes, within an image of `size` bytes: the next level to compare. */
export function pagesOfRegions(
  regions: number[],
  unit: number,
  size: number,
): Uint32Array {
  const perRegion = unit / PAGE_SIZE;
  const pageCount = regionCount(size, PAGE_SIZE);
  const pages: number[] = [];
  for (const r of regions) {
    for (let p = r * perRegion; p < (r + 1) * perRegion && p < pageCount; p++) {
      pages.push(p);
    }
  }
  return Uint32Array.from(pages);
}

/** A list of u32 as little-endian bytes (how the protocol carries region lists and digests). */
export function u32Bytes(words: Uint32Array): Uint8Array {
  const out = new Uint8Array(words.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < words.length; i++) view.setUint32(4 * i, words[i], true);
  return out;
}

/** The inverse of {@linkcode u32Bytes}; `bytes.length` must be a multiple of 4. */
export function bytesU32(bytes: Uint8Array): Uint32Array {
  const out = new Uint32Array(bytes.length >>> 2);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = view.getUint32(4 * i, true);
  return out;
}
