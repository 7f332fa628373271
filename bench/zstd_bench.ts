// Copyright patchwire authors. MIT license.
/**
 * zstd: libzstd through FFI vs node:zlib, per call and per byte, and the cost
 * of compressing one 4 KiB page against its 4 KiB reference as a prefix.
 *
 * deno bench --allow-ffi --allow-env bench/zstd_bench.ts
 *
 * @module
 */
import { createZstd } from "../src/compress/zstd.ts";
import { rng } from "./_rng.ts";

const ffi = createZstd({ backend: "ffi" });
const node = createZstd({ backend: "node" });
const BACKENDS = [["ffi", ffi], ["node", node]] as const;

/** Memory-like: mostly zero pages with sparse random words and some repeated text. */
function memoryLike(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  const view = new DataView(out.buffer);
  const next = rng(seed);
  const text = new TextEncoder().encode(
    "GET /index.html HTTP/1.1\r\nHost: patchwire\r\n",
  );
  for (let page = 0; page < n; page += 4096) {
    const end = Math.min(n, page + 4096);
    for (let i = 0; i < 24; i++) {
      const at = page + ((next() % 512) << 3);
      if (at + 8 <= end) {
        view.setUint32(at, next());
        view.setUint32(at + 4, next());
      }
    }
    if ((page >>> 12) % 3 === 0) {
      const at = page + (next() % 2048);
      if (at + text.length <= end) out.set(text, at);
    }
  }
  return out;
}

const SIZES: [string, number][] = [
  ["4KiB", 4096],
  ["64KiB", 64 * 1024],
  ["1MiB", 1 << 20],
  ["16MiB", 16 << 20],
];
const LEVELS = [1, 3, 19];

for (const [label, size] of SIZES) {
  const src = memoryLike(size);
  const dst = new Uint8Array(ffi.compressBound(size));
  const out = new Uint8Array(size);
  // Fewer iterations where one call takes seconds.
  const n = size >= 16 << 20 ? 3 : size >= 1 << 20 ? 20 : undefined;
  for (const level of LEVELS) {
    const frame = ffi.compress(src, { level });
    for (const [name, z] of BACKENDS) {
      if (size >= 16 << 20 && level === 19 && name === "node") continue;
      Deno.bench({
        name: `compress ${name}`,
        group: `compress ${label} level ${level} (ratio ${
          (size / frame.length).toFixed(1)
        })`,
        baseline: name === "ffi",
        n,
        warmup: n === undefined ? undefined : 1,
        fn: () => {
          z.compressInto(src, dst, 0, { level });
        },
      });
    }
    for (const [name, z] of BACKENDS) {
      Deno.bench({
        name: `decompress ${name}`,
        group: `decompress ${label} level ${level}`,
        baseline: name === "ffi",
        n: n === undefined ? undefined : n * 5,
        fn: () => {
          z.decompressInto(frame, out, 0, size);
        },
      });
    }
  }
}

// Per-page prefix compression: a dirty page against its reference.
{
  const reference = memoryLike(4096, 7);
  const page = new Uint8Array(4096);
  page.set(reference.subarray(0, 4093), 3); // content shifted by 3 bytes
  page.set(memoryLike(256, 9), 1024); // plus a rewritten region
  const dst = new Uint8Array(ffi.compressBound(4096));
  const out = new Uint8Array(4096);
  for (const level of LEVELS) {
    const plain = ffi.compress(page, { level });
    const frame = ffi.compress(page, { level, prefix: reference });
    const group =
      `4KiB page level ${level}: ${plain.length} B plain, ${frame.length} B with prefix`;
    Deno.bench({
      name: "compress ffi no prefix",
      group,
      baseline: true,
      fn: () => {
        ffi.compressInto(page, dst, 0, { level });
      },
    });
    Deno.bench({
      name: "compress ffi prefix",
      group,
      fn: () => {
        ffi.compressInto(page, dst, 0, { level, prefix: reference });
      },
    });
    Deno.bench({
      name: "decompress ffi prefix",
      group,
      fn: () => {
        ffi.decompressInto(frame, out, 0, 4096, reference);
      },
    });
  }
}

// Fixed per-call cost: a 1-byte input.
{
  const one = new Uint8Array(1);
  const dst = new Uint8Array(64);
  const frame = ffi.compress(one, { level: 1 });
  for (const [name, z] of BACKENDS) {
    Deno.bench({
      name: `compress ${name}`,
      group: "1 byte (per-call overhead)",
      baseline: name === "ffi",
      fn: () => {
        z.compressInto(one, dst, 0, { level: 1 });
      },
    });
    Deno.bench({
      name: `decompress ${name}`,
      group: "1 byte (per-call overhead)",
      fn: () => {
        z.decompressInto(frame, one, 0, 1);
      },
    });
  }
}
