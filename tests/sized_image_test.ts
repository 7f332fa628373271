/**
 * Sized images: an image whose contents' length changes between
 * checkpoints (a QEMU guest's device state) within a fixed capacity. The
 * length in use is committed with each epoch — in the COMMIT frame, a base
 * sync's end, the store's state — and bound into the digest, so the same
 * bytes at another length never pass for the same checkpoint, and the
 * length and the bytes are always of one epoch, across crashes.
 */

import { assert, assertEquals } from "./_assert.ts";
import { EpochEncoder } from "../src/encoder.ts";
import { DecodeError, EpochDecoder } from "../src/decoder.ts";
import { decodeFrame, encodeFrame, FrameType } from "../src/frame.ts";
import {
  _testing,
  BackupStore,
  type CrashPoint,
  type StoredState,
} from "../src/backup_store.ts";
import { BaseReceiver, BaseSyncError, digestOf } from "../src/base_sync.ts";
import { bindLength } from "../src/digest.ts";
import { createBlockHasher } from "../src/hash/block_hash.ts";
import { decodeControl, encodeControl } from "../src/protocol.ts";
import { createZstd } from "../src/compress/zstd.ts";
import type { CaptureResult, Source } from "../src/source.ts";
import { Primary } from "../src/primary.ts";
import { Relay } from "../src/relay.ts";
import { Backup } from "../src/backup.ts";
import { AckLevel } from "../src/protocol.ts";

const CAP = 64 << 10;

/** Runs `fn`, which must throw (an instance of `type`, if given); returns the error. */
function thrown(
  fn: () => unknown,
  type: new (...args: never[]) => Error = Error,
): Error {
  try {
    fn();
  } catch (e) {
    assert(e instanceof type, `expected a ${type.name}, got ${e}`);
    return e;
  }
  throw new Error(`expected a ${type.name}, nothing was thrown`);
}
const specs = [
  { id: "vm", size: 32 << 10 },
  { id: "vm.state", size: CAP, sized: true },
];

/** A device-state-like image: `length` bytes of contents, zeros up to the capacity. */
function stateImage(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(CAP);
  for (let i = 0; i < length; i++) b[i] = (i * 7 + seed * 13 + 1) & 0xff || 1;
  return b;
}

Deno.test("a sized image's length travels with each epoch and is applied with it", () => {
  const enc = new EpochEncoder(specs);
  const dec = new EpochDecoder(specs);
  try {
    const ram = new Uint8Array(32 << 10);
    for (const [epoch, length] of [[1, 9000], [2, 30_001], [3, 4100], [4, 0]]) {
      ram[epoch * 100] = epoch;
      const state = stateImage(length, epoch);
      const { frames } = enc.encode([ram, state], undefined, [
        undefined,
        length,
      ]);
      const commit = decodeFrame(frames.at(-1)!);
      assert(commit.type === FrameType.COMMIT);
      assertEquals(
        commit.body.images[0].length,
        undefined,
        "a whole image has no length",
      );
      assertEquals(commit.body.images[1].length, length);
      const applied = dec.applyEpoch(frames);
      assertEquals(applied.epoch, epoch);
      assertEquals(dec.images[1].length, length);
      assertEquals(dec.images[1].committed.subarray(0, CAP), state);
      assertEquals(dec.images[1].digestValue(), enc.images[1].digestValue());
    }
  } finally {
    enc.close();
    dec.close();
  }
});

Deno.test("a commit whose length was changed in flight is refused: the digest covers it", () => {
  const enc = new EpochEncoder(specs);
  const dec = new EpochDecoder(specs);
  try {
    const { frames } = enc.encode(
      [new Uint8Array(32 << 10), stateImage(5000, 1)],
      undefined,
      [undefined, 5000],
    );
    const commit = decodeFrame(frames.at(-1)!);
    assert(commit.type === FrameType.COMMIT);
    // Same bytes (zeros past the end), another length: a valid frame, a wrong checkpoint.
    commit.body.images[1].length = 5001;
    const forged = encodeFrame(
      FrameType.COMMIT,
      commit.level,
      commit.epoch,
      "",
      commit.body,
    );
    const e = thrown(
      () => dec.applyEpoch([...frames.slice(0, -1), forged]),
      DecodeError,
    );
    assert(/digest mismatch for image "vm.state"/.test(e.message), e.message);
    assertEquals(dec.epoch, 0, "nothing applied");
    commit.body.images[1].length = CAP + 1;
    const over = encodeFrame(FrameType.COMMIT, "fast", 1, "", commit.body);
    const f = thrown(() => decodeFrame(over));
    assert(
      /length 65537, expected a byte count within its size 65536/.test(
        f.message,
      ),
      f.message,
    );
  } finally {
    enc.close();
    dec.close();
  }
});

Deno.test("the encoder refuses a length past the capacity, naming the image", () => {
  const enc = new EpochEncoder(specs);
  try {
    const e = thrown(() =>
      enc.encode([new Uint8Array(32 << 10), new Uint8Array(CAP)], undefined, [
        undefined,
        CAP + 1,
      ])
    );
    assert(
      /"vm.state": length 65537 is not within its size/.test(
        e.message,
      ),
    );
  } finally {
    enc.close();
  }
});

Deno.test("a base sync carries the length, and a wrong one does not verify", () => {
  const hasher = createBlockHasher();
  const contents = stateImage(7000, 3);
  const raw = digestOf(hasher, contents);
  const d = bindLength(raw.lo, raw.hi, CAP, 7000);
  const info = {
    id: "vm.state",
    size: CAP,
    length: 7000,
    digestLo: d.lo,
    digestHi: d.hi,
  };
  // STATE and BASE_END carry it through the control codec.
  const end = decodeControl(
    encodeControl({ type: "base_end", epoch: 4, images: [info] }),
  );
  assert(end.type === "base_end");
  assertEquals(end.images[0].length, 7000);
  const zstd = createZstd();
  try {
    const receive = (length: number) => {
      const r = new BaseReceiver([{ id: "vm.state", size: CAP }], hasher, zstd);
      r.add({
        type: "base",
        epoch: 4,
        slot: 0,
        offset: 0,
        size: CAP,
        data: zstd.compress(contents, { level: 1 }),
      });
      return r.finish({
        type: "base_end",
        epoch: 4,
        images: [{ ...info, length }],
      });
    };
    assertEquals(receive(7000)[0], contents);
    thrown(() => receive(7001), BaseSyncError);
  } finally {
    zstd.close();
  }
});

Deno.test("the store commits a sized image's length with its bytes, at every crash point", async () => {
  const points: CrashPoint[] = ["journal", "some-images", "images", "state"];
  for (const point of points) {
    const dir = await Deno.makeTempDir({ prefix: "pw-sized-" });
    try {
      const s0: StoredState = {
        epoch: 1,
        images: [{
          id: "vm.state",
          size: CAP,
          length: 3000,
          digestLo: 1,
          digestHi: 2,
        }],
      };
      const store = BackupStore.open(dir);
      store.replaceAll(s0, [stateImage(3000, 1)], true);
      const next = stateImage(2000, 2);
      const s1: StoredState = {
        epoch: 2,
        images: [{ ...s0.images[0], length: 2000, digestLo: 3 }],
      };
      _testing.crashAfter = point;
      thrown(
        () =>
          store.commitEpoch(s1, [{
            slot: 0,
            offset: 0,
            bytes: next.subarray(0, 3000),
          }], true),
        _testing.SimulatedCrash,
      );
      _testing.crashAfter = null;
      store.close();
      const again = BackupStore.open(dir);
      const state = again.state!;
      const bytes = new Uint8Array(CAP);
      again.readImage(0, bytes);
      again.close();
      // Whichever epoch the store holds, its length and bytes are that epoch's.
      if (state.epoch === 2) {
        assertEquals(state.images[0].length, 2000, point);
        assertEquals(bytes, next, point);
      } else {
        assertEquals(state.epoch, 1, point);
        assertEquals(state.images[0].length, 3000, point);
        assertEquals(bytes, stateImage(3000, 1), point);
      }
    } finally {
      _testing.crashAfter = null;
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("a stored length past the image's size is a corrupt state", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-sized-" });
  try {
    const store = BackupStore.open(dir);
    store.replaceAll(
      {
        epoch: 1,
        images: [{ id: "s", size: 8192, length: 10, digestLo: 0, digestHi: 0 }],
      },
      [new Uint8Array(8192)],
      true,
    );
    store.close();
    const path = `${dir}/state.json`;
    Deno.writeTextFileSync(
      path,
      Deno.readTextFileSync(path).replace('"length":10', '"length":9000'),
    );
    const e = thrown(() => BackupStore.open(dir));
    assert(
      /length 9000 is not a byte count within its size 8192/.test(
        e.message,
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A source with a RAM-like image and a sized image whose length changes every capture. */
class SizedSource implements Source {
  readonly name = "sized-test";
  readonly images = specs;
  #n = 0;
  capture(into: Uint8Array[]): Promise<CaptureResult> {
    this.#n++;
    into[0][this.#n * 64] = this.#n & 0xff;
    const length = 1000 + (this.#n * 7919) % 40_000;
    into[1].set(stateImage(length, this.#n));
    return Promise.resolve({ pauseMs: 0, lengths: [undefined, length] });
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

Deno.test("sized images through a relay: live backups and one that joins late by base sync store each epoch's length", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-sized-roles-" });
  const quiet = () => {};
  const early = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/early`,
    note: quiet,
  });
  // The late backup's address, closed until the epochs are gone from the relay's log.
  const first = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/late`,
    note: quiet,
  });
  const lateUrl = first.url;
  await first.close();
  await Deno.remove(`${dir}/late`, { recursive: true });
  let late: Backup | null = null;
  const relay = await Relay.open({
    listen: "tcp://127.0.0.1:0",
    to: [early.url, lateUrl],
    ack: { who: { kind: "any" }, level: AckLevel.applied },
    link: { backoffMs: 20, maxBackoffMs: 100 },
    logBytes: 1,
    note: quiet,
  });
  const p = new Primary(new SizedSource(), {
    to: [relay.url],
    intervalMs: null,
    note: quiet,
  });
  p.start();
  try {
    for (let i = 0; i < 6; i++) await p.checkpoint();
    late = await Backup.open({
      listen: lateUrl,
      store: `${dir}/late`,
      note: quiet,
    });
    const want = p.encoder.images[1];
    for (const b of [early, late]) {
      const end = Date.now() + 20_000;
      while (b.store.state?.epoch !== p.epoch) {
        if (Date.now() > end) {
          throw new Error(`${b.url} did not reach epoch ${p.epoch}`);
        }
        await new Promise((r) => setTimeout(r, 10));
      }
      const stored = b.store.state!.images[1];
      assertEquals(stored.length, want.length);
      const bytes = new Uint8Array(CAP);
      b.store.readImage(1, bytes);
      assertEquals(bytes, want.committed.subarray(0, CAP));
    }
    const peers = relay.status().peers as { baseSyncs: number }[];
    assert(peers[1].baseSyncs >= 1, "the late backup was base-synced");
  } finally {
    await p.stop();
    await relay.close();
    await early.close();
    await late?.close();
    await Deno.remove(dir, { recursive: true });
  }
});
