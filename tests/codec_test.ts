import { assert, assertEquals } from "./_assert.ts";
import {
  type EncoderOptions,
  EpochEncoder,
  type EpochStats,
} from "../src/encoder.ts";
import { DecodeError, EpochDecoder } from "../src/decoder.ts";
import { Rng, SyntheticWorkload } from "../src/synthetic.ts";
import { decodeFrame, encodeFrame, FrameType } from "../src/frame.ts";
import { bytesEqual } from "../src/replay.ts";
import type { Level } from "../src/level.ts";

const PAGE = 4096;

/** An encoder and a receiver over the same images, checked after every epoch. */
class Pair {
  encoder: EpochEncoder;
  decoder: EpochDecoder;
  images: Uint8Array[];
  constructor(
    sizes: number[],
    level: Level = "fast",
    options: EncoderOptions = {},
  ) {
    const specs = sizes.map((size, i) => ({ id: `img${i}`, size }));
    this.images = sizes.map((s) => new Uint8Array(s));
    this.encoder = new EpochEncoder(specs, { level, ...options });
    this.decoder = new EpochDecoder(specs);
  }
  epoch(): EpochStats {
    const { frames, stats } = this.encoder.encode(this.images);
    this.decoder.applyEpoch(frames);
    this.images.forEach((image, i) => {
      const got = this.decoder.images[i].committed.subarray(0, image.length);
      assert(
        bytesEqual(got, image),
        `image ${i} differs after epoch ${stats.epoch}`,
      );
    });
    return stats;
  }
  close() {
    this.encoder.close();
    this.decoder.close();
  }
}

function fillRandom(rng: Rng, bytes: Uint8Array) {
  rng.fill(bytes);
}

for (const level of ["fast", "max"] as Level[]) {
  Deno.test(`${level}: a synthetic multi-image workload round-trips for 8 epochs`, () => {
    const w = new SyntheticWorkload({
      seed: 3,
      images: 2,
      size: (1 << 20) + 4096 * 3 + 7,
      dirtyFraction: 0.05,
    });
    const enc = new EpochEncoder(w.specs, { level });
    const dec = new EpochDecoder(w.specs);
    for (let e = 0; e < 8; e++) {
      if (e > 0) w.step();
      const applied = dec.applyEpoch(enc.encode(w.images).frames);
      assertEquals(applied.epoch, e + 1);
      w.images.forEach((img, i) =>
        assert(bytesEqual(dec.images[i].committed.subarray(0, img.length), img))
      );
    }
    enc.close();
    dec.close();
  });

  Deno.test(`${level}: random mutations, zeroed pages and everything changed`, () => {
    const rng = new Rng(11);
    const p = new Pair([64 * PAGE], level);
    fillRandom(rng, p.images[0]);
    p.epoch();
    for (let k = 0; k < 200; k++) {
      p.images[0][rng.int(p.images[0].length)] ^= 1 + rng.int(255);
    }
    assert(p.epoch().dirtyPages > 0);
    p.images[0].fill(0, 5 * PAGE, 9 * PAGE);
    const zeroed = p.epoch();
    assertEquals(zeroed.ops.zero, 4, "zeroed pages are sent as ZERO ops");
    fillRandom(rng, p.images[0]);
    assertEquals(p.epoch().dirtyPages, 64, "everything changed");
    p.close();
  });

  Deno.test(`${level}: an epoch without changes is tiny and still verified`, () => {
    const rng = new Rng(5);
    const p = new Pair([16 * PAGE], level);
    fillRandom(rng, p.images[0]);
    p.epoch();
    const empty = p.epoch();
    assertEquals(empty.dirtyPages, 0);
    assert(
      empty.wireBytes < 200,
      `an empty epoch costs ${empty.wireBytes} bytes`,
    );
    p.close();
  });

  Deno.test(`${level}: moved and copied pages are sent as references, not data`, () => {
    const rng = new Rng(7);
    const p = new Pair([128 * PAGE], level);
    fillRandom(rng, p.images[0]);
    p.epoch();
    const img = p.images[0];
    img.copyWithin(100 * PAGE, 10 * PAGE, 14 * PAGE); // copy 4 pages
    img.copyWithin(50 * PAGE, 20 * PAGE, 21 * PAGE); // move 1 page
    img.fill(0, 20 * PAGE, 21 * PAGE);
    const s = p.epoch();
    assertEquals(s.ops.copy, 5, "4 copied + 1 moved page are COPY ops");
    assertEquals(s.ops.zero, 1, "the moved page's old place is ZERO");
    assert(
      s.wireBytes < 600,
      `moved/copied pages cost ${s.wireBytes} bytes on the wire`,
    );
    p.close();
  });

  Deno.test(`${level}: image sizes that are not a multiple of 4096`, () => {
    const rng = new Rng(9);
    for (const size of [1, 63, 4095, 4097, 3 * PAGE + 100]) {
      const p = new Pair([size, size + 13], level);
      p.images.forEach((i) => fillRandom(rng, i));
      p.epoch();
      p.images.forEach((i) => i[i.length - 1] ^= 0xff);
      p.epoch();
      p.images[0].fill(0);
      p.epoch();
      p.close();
    }
  });
}

Deno.test("content shifted inside pages by a few bytes: LZ against the old page, far below XOR", () => {
  const rng = new Rng(13);
  const sizes = [64 * PAGE];
  const xorOnly = new Pair(sizes, "fast", {
    tuning: { lzThreshold: Infinity },
  });
  const fast = new Pair(sizes, "fast");
  const max = new Pair(sizes, "max");
  // Text-like, compressible but not trivially: words from a small vocabulary.
  const words = [
    "alpha ",
    "beta ",
    "gamma ",
    "delta ",
    "epsilon ",
    "zeta ",
    "eta ",
    "theta ",
  ];
  const base = new Uint8Array(sizes[0]);
  for (let i = 0; i < base.length;) {
    const w = words[rng.int(words.length)] + rng.u32().toString(36);
    for (let k = 0; k < w.length && i < base.length; k++) {
      base[i++] = w.charCodeAt(k);
    }
  }
  const pairs = [xorOnly, fast, max];
  for (const p of pairs) {
    p.images[0].set(base);
    p.epoch();
  }
  const wire = [0, 0, 0];
  for (let e = 0; e < 3; e++) {
    // Compaction: in every page, the tail moves left by 1..16 bytes.
    for (let page = 0; page < 64; page++) {
      const shift = 1 + rng.int(16), from = page * PAGE + rng.int(2048);
      base.copyWithin(from, from + shift, (page + 1) * PAGE);
    }
    pairs.forEach((p, i) => {
      p.images[0].set(base);
      const s = p.epoch();
      wire[i] += s.wireBytes;
      if (i > 0) {
        assert(s.ops.lz > 0, "LZ with the reference page as prefix is used");
      }
    });
  }
  const [xorWire, fastWire, maxWire] = wire;
  assert(
    fastWire * 3 < xorWire,
    `fast ${fastWire} B should be < 1/3 of XOR-only ${xorWire} B`,
  );
  assert(
    maxWire <= fastWire,
    `max ${maxWire} B should not exceed fast ${fastWire} B`,
  );
  pairs.forEach((p) => p.close());
});

Deno.test("max: LZ pages with a reference go LZMA2 (reference pages as preset dictionary), new content goes zstd", () => {
  const rng = new Rng(19);
  const p = new Pair([32 * PAGE], "max");
  const lzCodecs = (frames: Uint8Array[]) =>
    frames.map((f) => decodeFrame(f)).filter((f) =>
      f.type === FrameType.PATCH && f.body.lz !== undefined
    ).map((f) => f.type === FrameType.PATCH ? f.body.lzCodec ?? 1 : 0);
  // Text-like pages, so that LZ is the best encoding of both epochs.
  const text = "the quick brown fox jumps over the lazy dog ";
  for (let i = 0; i < p.images[0].length; i++) {
    p.images[0][i] = text.charCodeAt((i * 7 + rng.int(3)) % text.length);
  }
  // First checkpoint: every page is new content against the all-zero start.
  let { frames } = p.encoder.encode(p.images);
  p.decoder.applyEpoch(frames);
  assertEquals(lzCodecs(frames), [1], "new content: zstd");
  // Every page's tail moves by a few bytes: LZ against the old page.
  for (let page = 0; page < 32; page++) {
    const from = page * PAGE + 1000 + rng.int(1000);
    p.images[0].copyWithin(from, from + 1 + rng.int(8), (page + 1) * PAGE);
  }
  ({ frames } = p.encoder.encode(p.images));
  p.decoder.applyEpoch(frames);
  assertEquals(lzCodecs(frames), [2], "content with references: LZMA2");
  assert(
    bytesEqual(p.decoder.images[0].committed, p.images[0]),
    "the receiver holds the image",
  );
  p.close();
});

Deno.test("cross-image sharing: a page another image already holds costs a reference", () => {
  const rng = new Rng(17);
  const shared = new Pair([64 * PAGE, 64 * PAGE], "fast");
  fillRandom(rng, shared.images[0]);
  fillRandom(rng, shared.images[1]);
  shared.epoch();
  // Image 1 gets 16 pages of image 0 (two guests loading the same kernel).
  shared.images[1].set(shared.images[0].subarray(0, 16 * PAGE), 32 * PAGE);
  const s = shared.epoch();
  assertEquals(
    s.refs.other,
    16,
    "every copied page references the other image",
  );
  assertEquals(s.ops.copy, 16);
  assert(s.wireBytes < 16 * PAGE / 50, `16 shared pages cost ${s.wireBytes} B`);
  shared.close();
});

for (const level of ["fast", "max"] as const) {
  Deno.test(`${level}: a page new in two images in the same epoch (two guests booting) is sent once`, () => {
    const rng = new Rng(23);
    const pair = new Pair([64 * PAGE, 64 * PAGE], level);
    const kernel = new Uint8Array(32 * PAGE);
    fillRandom(rng, kernel);
    pair.images[0].set(kernel, 8 * PAGE);
    pair.images[1].set(kernel, 16 * PAGE); // elsewhere in the other image
    fillRandom(rng, pair.images[1].subarray(56 * PAGE, 64 * PAGE)); // its own
    pair.images[0].set(kernel.subarray(0, 4 * PAGE), 48 * PAGE); // and repeated
    const s = pair.epoch();
    assertEquals(s.refs.epoch, 36, "32 pages of image 1 and 4 of image 0");
    // 40 distinct random pages; without the references 76 would be sent.
    assert(
      s.wireBytes < 44 * PAGE,
      `${s.wireBytes} B for 40 distinct random pages`,
    );
    pair.close();
  });
}

Deno.test("a reference to a page not staged earlier in the epoch is rejected", () => {
  const pair = new Pair([8 * PAGE, 8 * PAGE], "fast");
  const rng = new Rng(5);
  const page = new Uint8Array(PAGE);
  fillRandom(rng, page);
  pair.images[0].set(page, 2 * PAGE);
  pair.images[1].set(page, 3 * PAGE);
  const { frames, stats } = pair.encoder.encode(pair.images);
  assertEquals(stats.refs.epoch, 1);
  // Swap the images' slots in the decoder's eyes: image 1 is staged first
  // now, so its reference names a page of a later slot.
  const receiver = new EpochDecoder([
    { id: "img0", size: 8 * PAGE },
    { id: "img1", size: 8 * PAGE },
  ]);
  const bad = frames.map((f) => {
    const d = decodeFrame(f);
    if (d.type !== FrameType.PATCH) return f;
    const body = d.body as { slot: number };
    return encodeFrame(
      d.type,
      d.level,
      d.epoch,
      body.slot === 0 ? "img1" : "img0",
      {
        ...d.body,
        slot: 1 - body.slot,
      },
    );
  });
  let message = "";
  try {
    receiver.applyEpoch(bad);
  } catch (e) {
    assert(e instanceof DecodeError, String(e));
    message = (e as Error).message;
  }
  assert(
    /copies page \d+ of slot \d+ of this epoch, which/.test(message),
    message,
  );
  receiver.close();
  pair.close();
});

Deno.test("identical 64-byte blocks anywhere are shared by reference at max", () => {
  const rng = new Rng(19);
  const p = new Pair([64 * PAGE], "max");
  fillRandom(rng, p.images[0]);
  p.epoch();
  // Scatter 64-byte blocks copied from far away (aligned) into several pages.
  for (let k = 0; k < 40; k++) {
    const src = rng.int(1024) * 64, dst = (2048 + rng.int(1024)) * 64;
    p.images[0].copyWithin(dst, src, src + 64);
  }
  const s = p.epoch();
  assert(
    s.sharedBlocks > 20,
    `expected most copied blocks shared, got ${s.sharedBlocks}`,
  );
  p.close();
});

Deno.test("forced hash collisions in the content index never corrupt the receiver", () => {
  const w = new SyntheticWorkload({
    seed: 21,
    images: 2,
    size: 256 * PAGE,
    dirtyFraction: 0.1,
  });
  for (const level of ["fast", "max"] as Level[]) {
    // A 4-bit key: almost every lookup meets colliding entries.
    const enc = new EpochEncoder(w.specs, {
      level,
      indexKeyMask: 0xf,
      indexSampling: 1,
    });
    const dec = new EpochDecoder(w.specs);
    for (let e = 0; e < 6; e++) {
      w.step();
      dec.applyEpoch(enc.encode(w.images).frames);
      w.images.forEach((img, i) =>
        assert(bytesEqual(dec.images[i].committed.subarray(0, img.length), img))
      );
    }
    assert(
      enc.index.counters.rejected > 0,
      "collisions were met and rejected by the bitwise check",
    );
    enc.close();
    dec.close();
  }
});

function expectReject(dec: EpochDecoder, frames: Uint8Array[], needle: string) {
  const before = dec.images.map((i) => i.committed.slice());
  const epoch = dec.epoch;
  let message = "";
  try {
    dec.applyEpoch(frames);
  } catch (e) {
    assert(e instanceof DecodeError, `expected DecodeError, got ${e}`);
    message = e.message;
  }
  assert(
    message.includes(needle),
    `error "${message}" should mention "${needle}"`,
  );
  assertEquals(dec.epoch, epoch, "epoch unchanged");
  dec.images.forEach((image, i) =>
    assert(bytesEqual(image.committed, before[i]), "image untouched")
  );
}

Deno.test("a corrupted, truncated, missing or replayed frame rejects the epoch and leaves images untouched", () => {
  const w = new SyntheticWorkload({
    seed: 23,
    images: 2,
    size: 128 * PAGE,
    dirtyFraction: 0.2,
  });
  const enc = new EpochEncoder(w.specs, { level: "fast" });
  const dec = new EpochDecoder(w.specs);
  dec.applyEpoch(enc.encode(w.images).frames);
  w.step();
  const { frames } = enc.encode(w.images);
  assert(frames.length >= 3, "two patch frames and a commit");
  // One flipped byte in the middle of a patch frame.
  const flipped = frames.map((f) => new Uint8Array(f));
  flipped[0][flipped[0].length >> 1] ^= 0x40;
  expectReject(dec, flipped, "checksum");
  // Truncated frame.
  expectReject(dec, [
    frames[0].subarray(0, frames[0].length - 9),
    ...frames.slice(1),
  ], "rejected");
  // Missing patch frame.
  expectReject(dec, frames.slice(1), "missing");
  // The right frames apply after all those failures.
  dec.applyEpoch(frames);
  w.images.forEach((img, i) =>
    assert(bytesEqual(dec.images[i].committed.subarray(0, img.length), img))
  );
  // Replaying the same epoch is refused.
  expectReject(dec, frames, "expected epoch 3");
  enc.close();
  dec.close();
});

Deno.test("a patch that decodes but does not reproduce the primary's digest is rejected", () => {
  const w = new SyntheticWorkload({
    seed: 29,
    images: 1,
    size: 64 * PAGE,
    dirtyFraction: 0.2,
  });
  const enc = new EpochEncoder(w.specs, { level: "fast" });
  const dec = new EpochDecoder(w.specs);
  dec.applyEpoch(enc.encode(w.images).frames);
  w.step();
  const { frames } = enc.encode(w.images);
  // Re-sign a commit whose digest is off by one: a well-formed frame with a wrong promise.
  const commit = decodeFrame(frames.at(-1)!);
  assert(commit.type === FrameType.COMMIT);
  commit.body.images[0].digestLo = (commit.body.images[0].digestLo + 1) >>> 0;
  const forged = encodeFrame(
    FrameType.COMMIT,
    commit.level,
    commit.epoch,
    "",
    commit.body,
  );
  expectReject(dec, [...frames.slice(0, -1), forged], "digest mismatch");
  enc.close();
  dec.close();
});

Deno.test("bad frames name what was wrong", () => {
  const commit = { base: 0, pageSize: 4096, blockSize: 64, images: [] };
  const good = encodeFrame(FrameType.COMMIT, "max", 1, "", commit);
  assertEquals(decodeFrame(good).level, "max");
  const cases: [Uint8Array, string][] = [
    [new Uint8Array([0x93, 1, 2, 3]), "8-element"],
    [good.subarray(0, 10), "msgpack"],
  ];
  for (const [bytes, needle] of cases) {
    let message = "";
    try {
      decodeFrame(bytes);
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes(needle), `"${message}" should mention "${needle}"`);
  }
});

Deno.test("LZ with extra reference pages found through anchors round-trips moved content", () => {
  const rng = new Rng(47);
  const size = 96 * PAGE;
  const specs = [{ id: "heap", size }];
  const enc = new EpochEncoder(specs, {
    level: "max",
    tuning: { anchors: true },
  });
  const dec = new EpochDecoder(specs);
  const image = new Uint8Array(size);
  rng.fill(image.subarray(0, 48 * PAGE));
  dec.applyEpoch(enc.encode([image]).frames);
  let lzPages = 0, extraRefs = 0;
  for (let e = 0; e < 3; e++) {
    // A copying collector: live objects from the old half move, 8-byte aligned
    // and packed at new offsets, into fresh pages of the other half.
    let to = 48 * PAGE + 8 * rng.int(64);
    for (let k = 0; k < 200 && to < size - 512; k++) {
      const len = 8 * (4 + rng.int(40)),
        from = 8 * rng.int((48 * PAGE - len) / 8);
      image.copyWithin(to, from, from + len);
      to += len;
    }
    const { frames, stats } = enc.encode([image]);
    lzPages += stats.ops.lz;
    extraRefs += stats.lzExtraRefs;
    dec.applyEpoch(frames);
    assert(
      bytesEqual(dec.images[0].committed.subarray(0, size), image),
      `epoch ${e} differs`,
    );
  }
  assert(lzPages > 0, "moved content went through LZ");
  assert(extraRefs > 0, "anchors named the pages the content came from");
  enc.close();
  dec.close();
});

Deno.test("PATCH frames beyond what an epoch of the images can take, still without a COMMIT, are rejected and forgotten", () => {
  const dec = new EpochDecoder([{ id: "small", size: 16384 }]);
  // One page op, claiming nothing unusual: it is the volume that is wrong.
  const patch = encodeFrame(FrameType.PATCH, "fast", 1, "small", {
    base: 0,
    slot: 0,
    chunk: 0,
    pages: 1,
    ops: new Uint8Array(64 << 10),
    opsSize: 64 << 10,
    opsCodec: 0,
  });
  let message = "";
  try {
    for (let i = 0; i < 1000; i++) dec.receive(patch);
  } catch (e) {
    assert(e instanceof DecodeError);
    message = e.message;
  }
  assert(
    /bytes of PATCH frames without a COMMIT, more than the \d+ an epoch of these images can take/
      .test(message),
    message,
  );
  assertEquals(dec.epoch, 0);
  dec.close();
});
