/**
 * Resident memory of the encoder per byte of image it holds, measured on a
 * real series in a process of its own: RSS after encoding a few epochs minus
 * RSS before creating the encoder (the capture buffer is allocated and
 * touched before the baseline, since the source owns it, not the encoder).
 * Prints one JSON line.
 *
 *     deno run --allow-read --allow-ffi --allow-env bench/memory.ts SERIES_DIR [LEVEL]
 * @module
 */

import { EpochEncoder } from "../src/encoder.ts";
import type { Level } from "../src/level.ts";
import { openSeries } from "../src/series.ts";

const series = await openSeries(Deno.args[0]);
const level = (Deno.args[1] ?? "fast") as Level;
const size = series.meta.size;
const capture = new Uint8Array(size);
await series.readImage(0, capture);
const before = Deno.memoryUsage().rss;
const encoder = new EpochEncoder([{ id: "image", size }], { level });
const epochs = Math.min(series.meta.epochs, 4);
for (let k = 0; k < epochs; k++) {
  await series.readImage(k, capture);
  encoder.encode([capture]);
}
const after = Deno.memoryUsage().rss;
console.log(JSON.stringify({
  series: series.meta.name,
  level,
  imageBytes: size,
  encoderRssBytes: after - before,
  rssPerImageByte: (after - before) / size,
  modelBytes: encoder.modelBytes,
}));
encoder.close();
