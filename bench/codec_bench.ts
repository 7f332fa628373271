/**
 * Stage micro-benchmarks over a size ladder (4 KiB … 64 MiB of image):
 * the XOR zero-run kernel, a whole-epoch encode at each level, and decode +
 * apply, with a memcpy of the same size as the yardstick.
 *
 *     deno bench --allow-read --allow-ffi --allow-env bench/codec_bench.ts
 * @module
 */

import { EpochDecoder } from "../src/decoder.ts";
import { EpochEncoder } from "../src/encoder.ts";
import { Rng, SyntheticWorkload } from "../src/synthetic.ts";
import { encodeXorZeroRun } from "../src/zero_run.ts";

const LADDER = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20];

function label(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes >> 20} MiB` : `${bytes >> 10} KiB`;
}

for (const size of LADDER) {
  const rng = new Rng(size);
  const ref = new Uint32Array(size >>> 2);
  for (let i = 0; i < ref.length; i++) ref[i] = rng.u32();
  const cur = ref.slice();
  // Sparse word writes in 1 of 16 words: a typical dirty page's XOR.
  for (let i = 0; i < cur.length; i += 16) {
    cur[i + (rng.u32() & 15)] ^= rng.u32() | 1;
  }
  const out = new Uint8Array(size * 2 + 64);
  const dst = new Uint8Array(size);
  const src = new Uint8Array(ref.buffer);
  Deno.bench({
    name: `memcpy ${label(size)}`,
    group: `zero-run ${label(size)}`,
    baseline: true,
    fn: () => dst.set(src),
  });
  Deno.bench({
    name: `xor zero-run encode ${label(size)}`,
    group: `zero-run ${label(size)}`,
    fn: () => {
      encodeXorZeroRun(cur, 0, ref, 0, cur.length, out, 0, out.length);
    },
  });
}

for (const size of LADDER) {
  for (const level of ["fast", "max"] as const) {
    // 10% of pages touched per epoch, memory-like contents and mutations.
    const workload = new SyntheticWorkload({
      seed: 5,
      images: 1,
      size,
      dirtyFraction: 0.1,
    });
    const encoder = new EpochEncoder(workload.specs, { level });
    const decoder = new EpochDecoder(workload.specs);
    decoder.applyEpoch(encoder.encode(workload.images).frames);
    Deno.bench({
      name: `encode+decode epoch ${label(size)} ${level}`,
      group: `epoch ${label(size)}`,
      fn: () => {
        workload.step();
        decoder.applyEpoch(encoder.encode(workload.images).frames);
      },
    });
  }
}
