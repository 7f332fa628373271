// Copyright patchwire authors. MIT license.
/**
 * The LZ section's compressors over the size ladder: dirty pages compressed
 * against their reference pages, as zstd with a prefix (fast: -3, max before
 * LZMA2: -9) and as raw LZMA2 with a preset dictionary (max: preset 1, the
 * literal coder for 4-byte words), compress and decompress. Each group's name
 * carries the bytes each produced.
 *
 * deno bench --allow-ffi --allow-env bench/lzma_bench.ts
 *
 * @module
 */
import { createLzma } from "../src/compress/lzma.ts";
import { createZstd } from "../src/compress/zstd.ts";
import { rng } from "./_rng.ts";

const zstd = createZstd({ backend: "ffi" });
const lzma = createLzma();
const WORDS = {
  literalContextBits: 0,
  literalPositionBits: 2,
  positionBits: 2,
};

/**
 * Reference pages of heap-like words (small integers, pointers into one
 * region, some text), and the dirty pages made from them: each page's objects
 * moved by a few words, some words rewritten.
 */
function referenceAndDirty(pages: number, seed = 1): [Uint8Array, Uint8Array] {
  const next = rng(seed);
  const ref = new Uint8Array(pages * 4096);
  const view = new DataView(ref.buffer);
  const text = new TextEncoder().encode("GET /api/item HTTP/1.1\r\n");
  for (let at = 0; at < ref.length; at += 8) {
    const kind = next() % 8;
    if (kind < 3) view.setUint32(at, next() % 256, true);
    else if (kind < 6) {
      view.setUint32(at, 0x5555_0000 + (next() % 65536) * 8, true);
      view.setUint32(at + 4, 0x7f12, true);
    } else if (kind === 6 && at + text.length <= ref.length) {
      ref.set(text, at);
      at += text.length & ~7;
    }
  }
  const dirty = ref.slice();
  for (let page = 0; page < pages; page++) {
    const base = page * 4096;
    const from = base + (next() % 2048 & ~7);
    dirty.copyWithin(from, from + 8 * (1 + (next() % 4)), base + 4096);
    for (let i = 0; i < 16; i++) {
      const at = base + (next() % 1024) * 4;
      dirty[at] = next() & 0xff;
    }
  }
  return [ref, dirty];
}

const SIZES: [string, number][] = [
  ["4KiB", 1],
  ["64KiB", 16],
  ["1MiB", 256],
  ["4MiB", 1024],
];

for (const [label, pages] of SIZES) {
  const [reference, dirty] = referenceAndDirty(pages);
  const n = pages >= 1024 ? 5 : pages >= 256 ? 20 : undefined;
  const zstd3 = zstd.compress(dirty, { level: 3, prefix: reference });
  const zstd9 = zstd.compress(dirty, { level: 9, prefix: reference });
  const lzma1 = lzma.compress(dirty, {
    preset: 1,
    dictionary: reference,
    ...WORDS,
  });
  const out = new Uint8Array(dirty.length);
  const group =
    `LZ section ${label}: zstd -3 ${zstd3.length} B, zstd -9 ${zstd9.length} B, LZMA2 ${lzma1.length} B`;
  Deno.bench({
    name: "compress zstd -3 prefix",
    group,
    baseline: true,
    n,
    fn: () => {
      zstd.compress(dirty, { level: 3, prefix: reference, checksum: false });
    },
  });
  Deno.bench({
    name: "compress zstd -9 prefix",
    group,
    n,
    fn: () => {
      zstd.compress(dirty, { level: 9, prefix: reference, checksum: false });
    },
  });
  Deno.bench({
    name: "compress LZMA2 preset 1 dictionary",
    group,
    n,
    fn: () => {
      lzma.compress(dirty, { preset: 1, dictionary: reference, ...WORDS });
    },
  });
  Deno.bench({
    name: "decompress zstd -9 prefix",
    group,
    n,
    fn: () => {
      zstd.decompressInto(zstd9, out, 0, out.length, reference);
    },
  });
  Deno.bench({
    name: "decompress LZMA2 dictionary",
    group,
    n,
    fn: () => {
      lzma.decompressInto(lzma1, out, reference);
    },
  });
}
