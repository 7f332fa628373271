import { assert, assertEquals } from "./_assert.ts";
import { EpochEncoder } from "../src/encoder.ts";
import { EpochDecoder } from "../src/decoder.ts";
import { SyntheticWorkload } from "../src/synthetic.ts";
import type { Level } from "../src/level.ts";

function roundTrip(level: Level, size: number, epochs: number, seed: number) {
  const w = new SyntheticWorkload({ seed, images: 2, size, dirtyFraction: 0.05 });
  const enc = new EpochEncoder(w.specs, { level });
  const dec = new EpochDecoder(w.specs);
  let wire = 0;
  for (let e = 0; e < epochs; e++) {
    if (e > 0) w.step();
    const { frames, stats } = enc.encode(w.images);
    const applied = dec.applyEpoch(frames);
    assertEquals(applied.epoch, e + 1);
    wire += stats.wireBytes;
    for (let i = 0; i < w.images.length; i++) {
      const got = dec.images[i].committed.subarray(0, size);
      assert(got.every((b, k) => b === w.images[i][k]), `image ${i} differs at epoch ${e + 1}`);
    }
  }
  enc.close();
  dec.close();
  return wire;
}

Deno.test("fast level round-trips a synthetic multi-image workload", () => {
  roundTrip("fast", (1 << 20) + 123, 6, 1);
});

Deno.test("max level round-trips a synthetic multi-image workload", () => {
  roundTrip("max", (1 << 20) + 4096 * 3 + 7, 6, 2);
});
