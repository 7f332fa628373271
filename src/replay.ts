/**
 * Replay: run the codec over a recorded image series, epoch k against
 * k − 1, decode into a separate receiver and verify every epoch.
 * @module
 */

import { Buffer } from "node:buffer";
import { EpochDecoder } from "./decoder.ts";
import { EpochEncoder, type EpochStats } from "./encoder.ts";
import type { Level } from "./level.ts";
import { AutoLevel } from "./auto_level.ts";
import { openSeries } from "./series.ts";

/** Options of {@linkcode replaySeries}. */
export interface ReplayOptions {
  /** `auto` chooses each pair's level as a primary would, over `link`. */
  level?: Level | "auto";
  /**
   * A modelled link the epochs are sent over ({@linkcode LinkModel}), for the
   * time-to-commit figures and for `auto`'s choices; default 1 Gbit/s.
   */
  linkMbps?: number;
  /** Replay at most this many pairs (epochs after the first image). */
  limit?: number;
  /** Called after every pair with its row. */
  onEpoch?: (row: ReplayRow) => void;
}

/** One replayed pair (image k − 1 → image k). */
export interface ReplayRow {
  epoch: number;
  dirtyPages: number;
  dirtyBlocks: number;
  sharedBlocks: number;
  refs: EpochStats["refs"];
  ops: Record<string, number>;
  dirtyPageBytes: number;
  wireBytes: number;
  encodeMs: number;
  /** Part of encodeMs spent in the dirty-detection scan of the whole image. */
  scanMs: number;
  decodeMs: number;
  /** The level the pair was encoded at. */
  level: Level;
  /** Modelled ms from the epoch's due time to its commit ({@linkcode LinkModel}). */
  commitMs: number;
  verified: boolean;
}

/**
 * A primary's pipeline over one link, modelled: epoch k is due at k ×
 * interval; its encode starts when it is due or when the previous encode
 * ended; its bytes go out when the encode ended or when the link finished
 * the previous epoch's, at `linkMbps`; it commits when they are through.
 * Time to commit = commit − due, queueing included (as the primary counts
 * it). The round trip and the receiver's apply are left out: the same for
 * every level.
 */
export class LinkModel {
  #encodeFree = 0;
  #linkFree = 0;
  constructor(readonly intervalMs: number, readonly linkMbps: number) {}

  /** Sends epoch `k`; returns when its encode ended and when it commits (ms). */
  send(
    k: number,
    encodeMs: number,
    wireBytes: number,
  ): { due: number; encodedAt: number; committedAt: number } {
    const due = k * this.intervalMs;
    const encodedAt = Math.max(due, this.#encodeFree) + encodeMs;
    this.#encodeFree = encodedAt;
    const committedAt = Math.max(encodedAt, this.#linkFree) +
      (wireBytes * 8) / (this.linkMbps * 1000);
    this.#linkFree = committedAt;
    return { due, encodedAt, committedAt };
  }
}

/** Totals over the replayed pairs (the initial full sync of image 0 is reported apart). */
export interface ReplayResult {
  series: string;
  level: Level | "auto";
  pairs: number;
  verified: boolean;
  imageBytes: number;
  dirtyPageBytes: number;
  wireBytes: number;
  encodeMs: number;
  /** Part of encodeMs spent scanning for dirty blocks. */
  scanMs: number;
  decodeMs: number;
  /** Modelled ms from due to commit, summed over the pairs ({@linkcode LinkModel}). */
  commitMs: number;
  /** Pairs encoded at each level (with `auto`, as it chose). */
  levels: Record<Level, number>;
  /** Wire bytes and time of sending image 0 against the all-zero start. */
  initialWireBytes: number;
  initialEncodeMs: number;
  /** Bytes the encoder's model holds (committed copy, hashes, content index). */
  encoderModelBytes: number;
  rows: ReplayRow[];
}

/** True if two byte arrays are equal (native memcmp). */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(
    Buffer.from(b.buffer, b.byteOffset, b.length),
  );
}

/**
 * Replays a series directory.
 *
 * @example
 * ```ts
 * const result = await replaySeries("/work/data/series/redis", { level: "fast", limit: 10 });
 * console.log(result.verified, result.wireBytes / result.dirtyPageBytes);
 * ```
 */
export async function replaySeries(
  dir: string,
  options: ReplayOptions = {},
): Promise<ReplayResult> {
  const series = await openSeries(dir);
  const { size, epochs } = series.meta;
  const level = options.level ?? "fast";
  const pairs = Math.min(epochs - 1, options.limit ?? Infinity);
  const specs = [{ id: "image", size }];
  // auto: the encoder indexes every block (as max does), as a primary's.
  const encoder = new EpochEncoder(specs, {
    level: level === "auto" ? "max" : level,
  });
  const auto = level === "auto" ? new AutoLevel() : null;
  const link = new LinkModel(
    series.meta.intervalMs,
    options.linkMbps ?? 1000,
  );
  const decoder = new EpochDecoder(specs);
  const result: ReplayResult = {
    series: series.meta.name,
    level,
    pairs: 0,
    verified: true,
    imageBytes: size,
    dirtyPageBytes: 0,
    wireBytes: 0,
    encodeMs: 0,
    scanMs: 0,
    decodeMs: 0,
    commitMs: 0,
    levels: { fast: 0, max: 0 },
    initialWireBytes: 0,
    initialEncodeMs: 0,
    encoderModelBytes: 0,
    rows: [],
  };
  try {
    // Read straight into the encoder's capture buffer: scanned in place.
    const image = await series.readImage(0, encoder.captureBuffers[0]);
    const first = encoder.encode([image]);
    decoder.applyEpoch(first.frames);
    result.initialWireBytes = first.stats.wireBytes;
    result.initialEncodeMs = first.stats.totalMs;
    if (!bytesEqual(decoder.images[0].committed.subarray(0, size), image)) {
      throw new Error(
        `${series.imagePath(0)}: receiver differs after the initial sync`,
      );
    }
    for (let k = 1; k <= pairs; k++) {
      await series.readImage(k, image);
      if (auto) encoder.setLevel(auto.next());
      const pairLevel = encoder.level;
      const { frames, stats } = encoder.encode([image]);
      const sent = link.send(k, stats.totalMs, stats.wireBytes);
      if (auto) {
        auto.encoded(
          pairLevel,
          stats.dirtyPages * 4096,
          stats.totalMs,
          stats.wireBytes,
        );
        auto.committed(stats.wireBytes, sent.encodedAt, sent.committedAt);
      }
      const applied = decoder.applyEpoch(frames);
      const verified = bytesEqual(
        decoder.images[0].committed.subarray(0, size),
        image,
      );
      const row: ReplayRow = {
        epoch: k,
        dirtyPages: stats.dirtyPages,
        dirtyBlocks: stats.dirtyBlocks,
        sharedBlocks: stats.sharedBlocks,
        refs: stats.refs,
        ops: stats.ops,
        dirtyPageBytes: stats.dirtyPages * 4096,
        wireBytes: stats.wireBytes,
        encodeMs: stats.totalMs,
        scanMs: stats.scanMs,
        decodeMs: applied.decodeMs + applied.applyMs,
        level: pairLevel,
        commitMs: sent.committedAt - sent.due,
        verified,
      };
      result.rows.push(row);
      result.pairs++;
      result.verified &&= verified;
      result.dirtyPageBytes += row.dirtyPageBytes;
      result.wireBytes += row.wireBytes;
      result.encodeMs += row.encodeMs;
      result.scanMs += row.scanMs;
      result.decodeMs += row.decodeMs;
      result.commitMs += row.commitMs;
      result.levels[pairLevel]++;
      options.onEpoch?.(row);
      if (!verified) {
        throw new Error(
          `epoch ${k}: receiver differs from ${series.imagePath(k)}`,
        );
      }
    }
    result.encoderModelBytes = encoder.modelBytes;
  } finally {
    encoder.close();
    decoder.close();
  }
  return result;
}
