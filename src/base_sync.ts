/**
 * Base sync: the full images at one epoch, compressed in chunks, for a peer
 * that is new or fell out of the retained log. The peer verifies every
 * image's digest before it replaces anything.
 * @module
 */

import type { Zstd } from "./compress/zstd.ts";
import type { BlockHasher } from "./hash/block_hash.ts";
import { bindLength, DigestAccumulator } from "./digest.ts";
import type { Connection } from "./transport.ts";
import {
  type Base,
  type BaseEnd,
  encodeControl,
  type ImageDigestInfo,
  type ImageInfo,
} from "./protocol.ts";

/** Raw bytes per BASE message. */
export const BASE_CHUNK_BYTES = 4 << 20;

/** Images frozen at one epoch, for sending. */
export interface BaseSnapshot {
  epoch: number;
  images: ImageDigestInfo[];
  /** Each image's bytes (exactly its size). */
  contents: Uint8Array[];
}

/** Progress of a base sync being sent. */
export interface BaseProgress {
  epoch: number;
  sentBytes: number;
  totalBytes: number;
}

/** One BASE message: `raw`, bytes of image `slot` at `offset`, compressed with zstd -1. */
export function baseMessage(
  epoch: number,
  slot: number,
  offset: number,
  raw: Uint8Array,
  zstd: Zstd,
): Uint8Array {
  return encodeControl({
    type: "base",
    epoch,
    slot,
    offset,
    size: raw.length,
    data: zstd.compress(raw, { level: 1 }),
  });
}

/**
 * The bytes a base sync of `contents` puts in its BASE messages' data (the
 * compressed chunks): what a rejoin is measured against.
 */
export function baseSyncBytes(contents: Uint8Array[], zstd: Zstd): number {
  let n = 0;
  for (const image of contents) {
    for (let offset = 0; offset < image.length; offset += BASE_CHUNK_BYTES) {
      n += zstd.compress(image.subarray(offset, offset + BASE_CHUNK_BYTES), {
        level: 1,
      }).length;
    }
  }
  return n;
}

/**
 * Sends a snapshot as BASE messages then BASE_END. Zero chunks are sent as
 * such too: zstd makes them a few bytes. Returns the bytes sent.
 */
export async function sendBase(
  conn: Connection,
  snapshot: BaseSnapshot,
  zstd: Zstd,
  onProgress?: (p: BaseProgress) => void,
): Promise<number> {
  const totalBytes = snapshot.contents.reduce((n, c) => n + c.length, 0);
  let sentBytes = 0, wireBytes = 0;
  for (let slot = 0; slot < snapshot.contents.length; slot++) {
    const image = snapshot.contents[slot];
    for (let offset = 0; offset < image.length; offset += BASE_CHUNK_BYTES) {
      const raw = image.subarray(offset, offset + BASE_CHUNK_BYTES);
      const message = baseMessage(snapshot.epoch, slot, offset, raw, zstd);
      await conn.send(message);
      wireBytes += message.length;
      sentBytes += raw.length;
      onProgress?.({ epoch: snapshot.epoch, sentBytes, totalBytes });
    }
  }
  const end = encodeControl({
    type: "base_end",
    epoch: snapshot.epoch,
    images: snapshot.images,
  });
  await conn.send(end);
  return wireBytes + end.length;
}

/** Digest lanes of a whole image's contents. */
export function digestOf(
  hasher: BlockHasher,
  contents: Uint8Array,
  scratch?: Uint32Array,
): { lo: number; hi: number } {
  const blocks = hasher.blockCount(contents.length);
  const hashes = scratch && scratch.length >= 2 * blocks
    ? scratch
    : new Uint32Array(2 * blocks);
  hasher.hashAll(contents, hashes);
  const d = new DigestAccumulator();
  d.addAll(hashes, blocks);
  return { lo: d.lo >>> 0, hi: d.hi >>> 0 };
}

/** A base sync was malformed or did not verify. */
export class BaseSyncError extends Error {
  override name = "BaseSyncError";
}

/**
 * Collects BASE messages for the images a HELLO named, then verifies them
 * against BASE_END. Memory: one full copy of the images while it runs.
 */
export class BaseReceiver {
  #epoch = -1;
  #contents: Uint8Array[] = [];
  #received: number[] = [];
  /** Whether the chunks overwrite a copy of the replica (a rejoin) rather than fill zeros. */
  #rejoin = false;
  #ranges: { slot: number; offset: number; size: number }[] = [];
  /**
   * After {@linkcode BaseReceiver.finish} of a rejoin: the ranges it
   * overwrote (a store writes only those); null after a full base sync.
   */
  changed: { slot: number; offset: number; size: number }[] | null = null;

  constructor(
    readonly images: ImageInfo[],
    readonly hasher: BlockHasher,
    readonly zstd: Zstd,
  ) {}

  /**
   * Starts a rejoin of `epoch` (see `rejoin.ts`) from copies of `contents`,
   * what the replica holds: the BASE messages that follow overwrite only
   * the ranges that differ. Memory: one copy of the images, as a base sync.
   */
  startFrom(epoch: number, contents: Uint8Array[]): void {
    if (contents.length !== this.images.length) {
      throw new BaseSyncError(
        `rejoin from ${contents.length} images, expected ${this.images.length}`,
      );
    }
    this.#epoch = epoch;
    this.#rejoin = true;
    this.#ranges = [];
    this.#contents = contents.map((c) => c.slice());
    this.#received = this.images.map((i) => i.size);
  }

  /** Takes one BASE message. */
  add(m: Base): void {
    if (m.epoch !== this.#epoch) {
      // A new base sync starts (a restarted one replaces any partial one).
      this.#rejoin = false;
      this.#ranges = [];
      this.#epoch = m.epoch;
      this.#contents = this.images.map((i) => new Uint8Array(i.size));
      this.#received = this.images.map(() => 0);
    }
    const image = this.images[m.slot];
    if (!image) {
      throw new BaseSyncError(
        `base chunk for image slot ${m.slot}, only ${this.images.length} images`,
      );
    }
    if (m.offset + m.size > image.size) {
      throw new BaseSyncError(
        `base chunk at ${m.offset} + ${m.size} bytes runs past image "${image.id}" of ${image.size} bytes`,
      );
    }
    try {
      this.zstd.decompressInto(
        m.data,
        this.#contents[m.slot],
        m.offset,
        m.size,
      );
    } catch (e) {
      throw new BaseSyncError(
        `base chunk of image "${image.id}" at ${m.offset} does not decompress: ${
          (e as Error).message
        }`,
      );
    }
    if (!this.#rejoin) this.#received[m.slot] += m.size;
    else this.#ranges.push({ slot: m.slot, offset: m.offset, size: m.size });
  }

  /** Verifies the collected images against BASE_END; returns their contents. */
  finish(m: BaseEnd): Uint8Array[] {
    if (m.epoch !== this.#epoch && this.images.some((i) => i.size > 0)) {
      throw new BaseSyncError(
        `base sync end for epoch ${m.epoch}, chunks were for epoch ${this.#epoch}`,
      );
    }
    if (this.#epoch !== m.epoch) {
      this.#contents = this.images.map((i) => new Uint8Array(i.size));
      this.#received = this.images.map(() => 0);
    }
    if (m.images.length !== this.images.length) {
      throw new BaseSyncError(
        `base sync lists ${m.images.length} images, expected ${this.images.length}`,
      );
    }
    m.images.forEach((info, s) => {
      const image = this.images[s];
      if (info.id !== image.id || info.size !== image.size) {
        throw new BaseSyncError(
          `base sync image ${s} is "${info.id}" of ${info.size} bytes, expected "${image.id}" of ${image.size}`,
        );
      }
      if (this.#received[s] !== image.size) {
        throw new BaseSyncError(
          `base sync of "${image.id}" carried ${
            this.#received[s]
          } bytes, expected ${image.size}`,
        );
      }
      const raw = digestOf(this.hasher, this.#contents[s]);
      const d = bindLength(
        raw.lo,
        raw.hi,
        image.size,
        info.length ?? image.size,
      );
      if (d.lo !== info.digestLo || d.hi !== info.digestHi) {
        throw new BaseSyncError(
          `base sync of "${image.id}" at epoch ${m.epoch} does not match its digest`,
        );
      }
    });
    const contents = this.#contents;
    this.changed = this.#rejoin ? this.#ranges : null;
    this.#contents = [];
    this.#received = [];
    this.#ranges = [];
    this.#epoch = -1;
    this.#rejoin = false;
    return contents;
  }
}
