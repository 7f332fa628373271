/**
 * Replay: run the codec over a recorded image series, epoch k against
 * k − 1, decode into a separate receiver and verify every epoch.
 * @module
 */

import { Buffer } from "node:buffer";
import { EpochDecoder } from "./decoder.ts";
import { EpochEncoder, type EpochStats } from "./encoder.ts";
import type { Level } from "./level.ts";
import { openSeries } from "./series.ts";

/** Options of {@linkcode replaySeries}. */
export interface ReplayOptions {
  level?: Level;
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
  verified: boolean;
}

/** Totals over the replayed pairs (the initial full sync of image 0 is reported apart). */
export interface ReplayResult {
  series: string;
  level: Level;
  pairs: number;
  verified: boolean;
  imageBytes: number;
  dirtyPageBytes: number;
  wireBytes: number;
  encodeMs: number;
  /** Part of encodeMs spent scanning for dirty blocks. */
  scanMs: number;
  decodeMs: number;
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
  const encoder = new EpochEncoder(specs, { level });
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
      const { frames, stats } = encoder.encode([image]);
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
