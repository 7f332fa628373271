/**
 * Scan throughput on a 1 GiB image: times scanDirty (wasm and ts) over a
 * 1 GiB image with pseudo-random content, the zero-copy wasm scan of the
 * same image allocated in the hasher's arena (image, hashes and dirty
 * bitmap all in wasm memory), and a 1 GiB memcpy in the same run, then
 * prints a Markdown table (best and median of the repetitions).
 * Target: wasm scan >= 4 GB/s per core.
 *
 * ```sh
 * deno run bench/scan_1gib.ts [--size-mib=1024] [--reps=5]
 * ```
 *
 * @module
 */

import { cpuUsage } from "node:process";
import { type BlockHasher, createBlockHasher } from "../src/hash/block_hash.ts";

function arg(name: string, fallback: number): number {
  const hit = Deno.args.find((a) => a.startsWith(`--${name}=`));
  if (hit === undefined) return fallback;
  const v = Number(hit.slice(name.length + 3));
  if (!Number.isFinite(v) || v <= 0) {
    throw new RangeError(`--${name} must be a positive number, got "${hit}"`);
  }
  return v;
}

const SIZE = arg("size-mib", 1024) * 1024 * 1024;
const REPS = arg("reps", 5);

/** Wall and CPU seconds of each repetition, sorted ascending. */
interface Times {
  wall: number[];
  cpu: number[];
}

/**
 * Time `reps` runs of `fn` after one untimed warm-up run. CPU time (this
 * process, user + system) is recorded too: on a shared machine it shows
 * the per-core rate that wall time hides.
 */
function time(fn: () => void, reps: number): Times {
  fn();
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let r = 0; r < reps; r++) {
    const c0 = cpuUsage();
    const t0 = performance.now();
    fn();
    wall.push((performance.now() - t0) / 1000);
    const c = cpuUsage(c0);
    cpu.push((c.user + c.system) / 1e6);
  }
  return {
    wall: wall.sort((a, b) => a - b),
    cpu: cpu.sort((a, b) => a - b),
  };
}

function gbps(seconds: number): string {
  return (SIZE / seconds / 1e9).toFixed(2);
}

/** xorshift32 words: "random-ish" content, cheap to generate. */
function fill(image: Uint8Array): void {
  const words = new Uint32Array(
    image.buffer,
    image.byteOffset,
    image.length >>> 2,
  );
  let x = 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
}

const image = new Uint8Array(SIZE);
fill(image);

const rows: [string, Times][] = [];

function scanRow(label: string, hasher: BlockHasher, reps: number): void {
  const n = hasher.blockCount(SIZE);
  const hashes = new Uint32Array(2 * n);
  const dirty = new Uint32Array(Math.ceil(n / 32));
  hasher.hashAll(image, hashes);
  const times = time(() => {
    const d = hasher.scanDirty(image, hashes, dirty);
    if (d !== 0) {
      throw new Error(`expected a clean scan, got ${d} dirty blocks`);
    }
  }, reps);
  rows.push([label, times]);
}

/**
 * The zero-copy scan: image, hashes and dirty bitmap all allocated from
 * the hasher's arena, so scanDirty is one kernel call on offsets.
 */
function arenaScanRow(label: string, reps: number): void {
  const probe = createBlockHasher({ kind: "wasm" });
  const n = probe.blockCount(SIZE);
  const words = Math.ceil(n / 32);
  const hasher = createBlockHasher({
    kind: "wasm",
    arenaBytes: SIZE + 8 * n + 4 * words + 3 * 64,
  });
  const img = hasher.alloc(SIZE);
  const hb = hasher.alloc(8 * n);
  const db = hasher.alloc(4 * words);
  if (img === null || hb === null || db === null) {
    throw new Error(`the arena could not hold a ${SIZE}-byte image`);
  }
  fill(img);
  const hashes = new Uint32Array(hb.buffer, hb.byteOffset, 2 * n);
  const dirty = new Uint32Array(db.buffer, db.byteOffset, words);
  hasher.hashAll(img, hashes);
  const times = time(() => {
    const d = hasher.scanDirty(img, hashes, dirty);
    if (d !== 0) {
      throw new Error(`expected a clean scan, got ${d} dirty blocks`);
    }
  }, reps);
  rows.push([label, times]);
}

scanRow("scan (wasm, copy path)", createBlockHasher({ kind: "wasm" }), REPS);
arenaScanRow("scan (wasm, in arena)", REPS);
scanRow(
  "scan (ts)",
  createBlockHasher({ kind: "ts" }),
  Math.max(1, Math.min(REPS, 3)),
);
{
  const copy = new Uint8Array(SIZE);
  rows.push(["memcpy", time(() => copy.set(image), REPS)]);
}

const mib = SIZE / (1024 * 1024);
console.log(
  `\nImage: ${mib} MiB, block size 64 B, ${REPS} reps (ts: up to 3)\n`,
);
console.log("| what | GB/s best | GB/s median | GB/s per CPU-second (best) |");
console.log("| --- | ---: | ---: | ---: |");
for (const [label, { wall, cpu }] of rows) {
  console.log(
    `| ${label} | ${gbps(wall[0])} | ${gbps(wall[wall.length >> 1])} | ${
      gbps(cpu[0])
    } |`,
  );
}
