// Copyright patchwire authors. MIT license.
import { assert, assertEquals } from "./_assert.ts";
import { AutoLevel } from "../src/auto_level.ts";
import type { Level } from "../src/level.ts";

const MiB = 1 << 20;

/**
 * Runs `epochs` epochs of `dirty` bytes each through the chooser, each level
 * costing what `measure` says (encode ms, wire bytes), over a link of
 * `linkMBps` (commit = the bytes' time on it); returns the levels chosen.
 */
function run(
  epochs: number,
  dirty: number,
  linkMBps: number | null,
  measure: Record<Level, { encodeMs: number; wire: number }>,
): Level[] {
  const auto = new AutoLevel();
  const chosen: Level[] = [];
  let clock = 0;
  for (let e = 0; e < epochs; e++) {
    const level = auto.next();
    chosen.push(level);
    const { encodeMs, wire } = measure[level];
    auto.encoded(level, dirty, encodeMs, wire);
    // Epochs are encoded 100 ms apart and committed when the link has sent them.
    clock += 100;
    auto.committed(
      wire,
      clock,
      clock + (linkMBps === null ? 0 : wire / (linkMBps * 1000)),
    );
  }
  return chosen;
}

/** max: 40% fewer bytes for 3× the encode time (what LZMA2 does on a heap). */
const HEAP = {
  fast: { encodeMs: 20, wire: 1 * MiB },
  max: { encodeMs: 60, wire: 0.6 * MiB },
};

Deno.test("auto: both levels are measured first, then on a LAN the faster encode wins", () => {
  const chosen = run(48, 16 * MiB, 1000, HEAP);
  assertEquals(chosen.slice(0, 2), ["fast", "max"], "one epoch of each first");
  const steady = chosen.slice(2);
  // 1 GB/s: 0.4 MiB saved is 0.4 ms, far below 40 ms more encode.
  assertEquals(
    steady.filter((l) => l === "max").length,
    2,
    "max only to explore (epochs 16 and 32)",
  );
  assert(steady.every((l, i) => l === "fast" || (i + 2) % 16 === 0));
});

Deno.test("auto: on a 10 Mbit/s link the fewer bytes win", () => {
  const steady = run(48, 16 * MiB, 1.25, HEAP).slice(2);
  // 1.25 MB/s: 0.4 MiB saved is 335 ms, far above 40 ms more encode.
  assertEquals(
    steady.filter((l) => l === "fast").length,
    2,
    "fast only to explore (epochs 16 and 32)",
  );
});

Deno.test("auto: with no peer to wait for (--ack none) the faster encode wins", () => {
  const steady = run(32, 16 * MiB, null, HEAP).slice(2);
  assert(steady.filter((l) => l === "fast").length >= 28);
});

Deno.test("auto: the choice follows the link when it slows down", () => {
  const auto = new AutoLevel();
  let clock = 0;
  const feed = (linkMBps: number, epochs: number) => {
    const out: Level[] = [];
    for (let e = 0; e < epochs; e++) {
      const level = auto.next();
      out.push(level);
      auto.encoded(level, 16 * MiB, HEAP[level].encodeMs, HEAP[level].wire);
      clock += 1000;
      auto.committed(
        HEAP[level].wire,
        clock,
        clock + HEAP[level].wire / (linkMBps * 1000),
      );
    }
    return out;
  };
  const lan = feed(1000, 20);
  assertEquals(lan.at(-1), "fast");
  const wan = feed(1.25, 20);
  assertEquals(wan.at(-1), "max", `after the link slowed: ${wan.join(" ")}`);
  const e = auto.estimates;
  assert(e.linkMBps !== null && e.linkMBps < 2, `link estimate ${e.linkMBps}`);
  assertEquals(e.epochs.fast + e.epochs.max, 40);
});
