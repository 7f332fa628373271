/**
 * Crash-test workload for BackupStore: a deterministic sequence of epochs
 * (so the test can recompute the exact image at any epoch) and, when run as
 * a script, a child process that commits them until it is killed.
 *
 * Usage: deno run --allow-read --allow-write tests/_store_writer.ts DIR
 *
 * Prints `open E JOURNAL REPLACE` after recovery, then `begin N` / `done N`
 * around every commit, so the parent knows which epochs were reached.
 * @module
 */

import {
  BackupStore,
  type StoredState,
  type StoreRange,
} from "../src/backup_store.ts";

/** Image ids and sizes: 4 MiB and 8 MiB. */
export const IMAGES: { id: string; size: number }[] = [
  { id: "vm0", size: 4 << 20 },
  { id: "vm1", size: 8 << 20 },
];

/** The child gives up on its own after this long, so it never outlives a failed test. */
const MAX_RUN_MS = 30_000;

/** xorshift32 stream; fast, and plenty random for a workload. */
function rng(seed: number): () => number {
  let x = (Math.imul(seed ^ 0x2545f491, 0x9e3779b1) | 0) || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

function fill(bytes: Uint8Array, next: () => number): void {
  const words = new Uint32Array(
    bytes.buffer,
    bytes.byteOffset,
    bytes.length >> 2,
  );
  for (let i = 0; i < words.length; i++) words[i] = next();
  for (let i = words.length << 2; i < bytes.length; i++) bytes[i] = next();
}

/** Image `slot` at epoch 0. */
export function initialImage(slot: number): Uint8Array {
  const b = new Uint8Array(IMAGES[slot].size);
  fill(b, rng(1000 + slot));
  return b;
}

/** The state committed at `epoch`; digests are a marker of the epoch so the test can tie state to contents. */
export function stateAt(epoch: number): StoredState {
  return {
    epoch,
    images: IMAGES.map((im, slot) => ({
      id: im.id,
      size: im.size,
      digestLo: (Math.imul(epoch, 0x9e3779b1) + slot) >>> 0,
      digestHi: epoch >>> 0,
    })),
  };
}

/** The ranges of `epoch` (≥ 1): mostly small, sometimes up to 1 MiB, possibly overlapping. */
export function epochRanges(epoch: number): StoreRange[] {
  const next = rng(epoch);
  const count = 4 + (next() % 28);
  const out: StoreRange[] = [];
  for (let i = 0; i < count; i++) {
    const slot = next() % IMAGES.length;
    const size = IMAGES[slot].size;
    const len = next() % 10 === 0
      ? (64 << 10) + (next() % (960 << 10))
      : 1 + (next() % (16 << 10));
    const offset = next() % (size - len + 1);
    const bytes = new Uint8Array(len);
    fill(bytes, next);
    out.push({ slot, offset, bytes });
  }
  return out;
}

/** Applies `ranges` to in-memory images, in order, as the store does. */
export function applyRanges(images: Uint8Array[], ranges: StoreRange[]): void {
  for (const r of ranges) images[r.slot].set(r.bytes, r.offset);
}

if (import.meta.main) {
  const enc = new TextEncoder();
  const say = (line: string) => {
    const b = enc.encode(line + "\n");
    let p = 0;
    while (p < b.length) p += Deno.stdout.writeSync(b.subarray(p));
  };
  const store = BackupStore.open(Deno.args[0]);
  say(
    `open ${
      store.state?.epoch ?? -1
    } ${store.recovery.journal} ${store.recovery.replace}`,
  );
  if (!store.state) {
    say("begin 0");
    store.replaceAll(stateAt(0), IMAGES.map((_, i) => initialImage(i)), false);
    say("done 0");
  }
  const start = Date.now();
  for (let e = store.state!.epoch + 1; Date.now() - start < MAX_RUN_MS; e++) {
    const ranges = epochRanges(e);
    say(`begin ${e}`);
    // Every other epoch durable, so the fsync paths run under the kill too.
    store.commitEpoch(stateAt(e), ranges, e % 2 === 0);
    say(`done ${e}`);
  }
  store.close();
}
