/**
 * Block-hash throughput over a size ladder: hashAll and scanDirty for the
 * wasm and ts hashers, against a memcpy (Uint8Array.set) baseline of the
 * same size. Throughput = size / time per iteration.
 *
 * ```sh
 * deno bench --allow-read bench/block_hash_bench.ts
 * ```
 *
 * @module
 */

import { createBlockHasher } from "../src/hash/block_hash.ts";

const SIZES: [string, number][] = [
  ["4 KiB", 4 << 10],
  ["64 KiB", 64 << 10],
  ["1 MiB", 1 << 20],
  ["16 MiB", 16 << 20],
  ["64 MiB", 64 << 20],
];

const hashers = {
  wasm: createBlockHasher({ kind: "wasm" }),
  ts: createBlockHasher({ kind: "ts" }),
};

/** Pseudo-random fill (xorshift32 over words): hashing cost is data-blind. */
function fill(bytes: Uint8Array): void {
  const words = new Uint32Array(
    bytes.buffer,
    bytes.byteOffset,
    bytes.length >>> 2,
  );
  let x = 0x12345678;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
}

for (const [label, size] of SIZES) {
  const image = new Uint8Array(size);
  fill(image);
  const copy = new Uint8Array(size);
  const n = hashers.wasm.blockCount(size);
  const big = size >= 16 << 20;
  // Large sizes take tens of ms each: a fixed, small iteration count keeps
  // the whole ladder within a minute or two.
  const opts = big ? { n: 20, warmup: 3 } : {};
  const group = `block hash ${label}`;

  Deno.bench({
    name: `memcpy ${label}`,
    group,
    baseline: true,
    ...opts,
    fn() {
      copy.set(image);
    },
  });

  for (const [kind, hasher] of Object.entries(hashers)) {
    const hashes = new Uint32Array(2 * n);
    const dirty = new Uint32Array(Math.ceil(n / 32));
    hasher.hashAll(image, hashes);
    Deno.bench({
      name: `hashAll ${kind} ${label}`,
      group,
      ...opts,
      fn() {
        hasher.hashAll(image, hashes);
      },
    });
    Deno.bench({
      name: `scanDirty ${kind} ${label}`,
      group,
      ...opts,
      fn() {
        // Clean image: the common case between two epochs.
        hasher.scanDirty(image, hashes, dirty);
      },
    });
  }
}
