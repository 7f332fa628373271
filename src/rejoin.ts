/**
 * Rejoin by block hashes: a base sync over what a follower already holds.
 * A follower whose images are not on the sender's history (an old primary
 * that encoded epochs nobody committed, a backup whose store is older than
 * the retained log, or one whose store was damaged) is compared region by
 * region, and only what differs is sent:
 *
 *     REJOIN {epoch}
 *     per image: REGION_QUERY 64 KiB regions, all  → REGION_DIGESTS
 *                REGION_QUERY pages of the regions that differ → REGION_DIGESTS
 *                BASE for each run of differing pages (zstd)
 *     BASE_END {epoch, images}                       the follower verifies every digest
 *
 * When most regions of an image differ, all of it is sent, as a base sync
 * would. Both ends compute the digests from the block hashes they already
 * keep; the follower's final check is the same whole-image digest as a
 * base sync's, so a rejoin can never install anything a base sync would not.
 *
 * The differing pages are compressed, not delta-encoded against the
 * follower's old page: the sender does not have it, and pages that differ
 * after a divergence of a few epochs are mostly rewritten ones.
 * @module
 */

import type { Zstd } from "./compress/zstd.ts";
import type { Connection } from "./transport.ts";
import {
  BASE_CHUNK_BYTES,
  baseMessage,
  type BaseSnapshot,
} from "./base_sync.ts";
import { encodeControl } from "./protocol.ts";
import { PAGE_SIZE } from "./image_state.ts";
import {
  differingRegions,
  pagesOfRegions,
  REGION_BYTES,
  regionCount,
  regionDigestsFromHashes,
} from "./region_digest.ts";

/** Asks the follower for the digests of `regions` (all when null) of one image, `unit` bytes each. */
export type RegionAsk = (
  slot: number,
  unit: number,
  regions: Uint32Array | null,
) => Promise<Uint32Array>;

/** The sender's region and page digests of a snapshot's images. */
export interface SnapshotDigests {
  /** Per image: two u32 per 64 KiB region. */
  regions: Uint32Array[];
  /** Per image: two u32 per page. */
  pages: Uint32Array[];
}

/**
 * Computes both levels of digests from the images' block hashes (2 u32 per
 * block of `blockSize`), which must be those of the snapshot: call it in
 * the same turn as taking the snapshot.
 */
export function snapshotDigests(
  hashes: Uint32Array[],
  sizes: number[],
  blockSize: number,
): SnapshotDigests {
  const regions: Uint32Array[] = [], pages: Uint32Array[] = [];
  hashes.forEach((h, s) => {
    const blocks = Math.ceil(sizes[s] / blockSize);
    const r = new Uint32Array(2 * regionCount(sizes[s], REGION_BYTES));
    regionDigestsFromHashes(h, blocks, REGION_BYTES / blockSize, null, r);
    const p = new Uint32Array(2 * regionCount(sizes[s], PAGE_SIZE));
    regionDigestsFromHashes(h, blocks, PAGE_SIZE / blockSize, null, p);
    regions.push(r);
    pages.push(p);
  });
  return { regions, pages };
}

/** What a rejoin sent. */
export interface RejoinResult {
  /** Bytes put on the wire, queries and digests' answers aside. */
  wireBytes: number;
  /** Image bytes that differed and were sent. */
  differingBytes: number;
  /** Bytes of the images. */
  totalBytes: number;
  /** 64 KiB regions that differed, of `regions`. */
  regionsDiffering: number;
  regions: number;
  /** Images sent whole because most of their regions differed. */
  wholeImages: number;
}

/** Progress of a rejoin, as a base sync reports it. */
export interface RejoinProgress {
  epoch: number;
  sentBytes: number;
  totalBytes: number;
}

/**
 * Sends a rejoin of `snapshot` over the connection; `ask` sends a
 * REGION_QUERY and returns the answer (the caller's reader routes it).
 */
export async function sendRejoin(
  conn: Connection,
  snapshot: BaseSnapshot,
  ours: SnapshotDigests,
  ask: RegionAsk,
  zstd: Zstd,
  onProgress?: (p: RejoinProgress) => void,
): Promise<RejoinResult> {
  const result: RejoinResult = {
    wireBytes: 0,
    differingBytes: 0,
    totalBytes: snapshot.contents.reduce((n, c) => n + c.length, 0),
    regionsDiffering: 0,
    regions: 0,
    wholeImages: 0,
  };
  const send = async (message: Uint8Array) => {
    await conn.send(message);
    result.wireBytes += message.length;
  };
  await send(encodeControl({ type: "rejoin", epoch: snapshot.epoch }));
  let sentBytes = 0;
  for (let slot = 0; slot < snapshot.contents.length; slot++) {
    const image = snapshot.contents[slot];
    const regionCountHere = regionCount(image.length, REGION_BYTES);
    const theirs = await ask(slot, REGION_BYTES, null);
    const differ = differingRegions(ours.regions[slot], theirs, null);
    result.regions += regionCountHere;
    result.regionsDiffering += differ.length;
    let pages: number[];
    if (2 * differ.length > regionCountHere) {
      // Most of it differs: send it all, as a base sync would.
      result.wholeImages++;
      pages = Array.from(
        { length: regionCount(image.length, PAGE_SIZE) },
        (_, p) => p,
      );
    } else if (differ.length === 0) {
      pages = [];
    } else {
      const asked = pagesOfRegions(differ, REGION_BYTES, image.length);
      const theirPages = await ask(slot, PAGE_SIZE, asked);
      pages = differingRegions(ours.pages[slot], theirPages, asked);
    }
    // Runs of consecutive pages, at most a base chunk each.
    for (let i = 0; i < pages.length;) {
      let j = i + 1;
      while (
        j < pages.length && pages[j] === pages[j - 1] + 1 &&
        (j - i + 1) * PAGE_SIZE <= BASE_CHUNK_BYTES
      ) j++;
      const offset = pages[i] * PAGE_SIZE;
      const raw = image.subarray(
        offset,
        Math.min(pages[j - 1] * PAGE_SIZE + PAGE_SIZE, image.length),
      );
      await send(baseMessage(snapshot.epoch, slot, offset, raw, zstd));
      result.differingBytes += raw.length;
      sentBytes += raw.length;
      onProgress?.({
        epoch: snapshot.epoch,
        sentBytes,
        totalBytes: result.totalBytes,
      });
      i = j;
    }
  }
  await send(encodeControl({
    type: "base_end",
    epoch: snapshot.epoch,
    images: snapshot.images,
  }));
  return result;
}
