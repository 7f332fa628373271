import assert from "node:assert/strict";
import {
  type BlockHasher,
  createBlockHasher,
  hashBlockInto,
} from "../src/hash/block_hash.ts";
import {
  WasmBlockHashCore,
  wasmBlockHashModule,
} from "../src/hash/_wasm_block_hash.ts";

/** Deterministic pseudo-random bytes (xorshift32). */
function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed | 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 255;
  }
  return out;
}

/** The pattern the known answers below were computed on with `xxhsum -H0`. */
function pattern(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 167 + 13) & 255;
  return out;
}

function hashesOf(h: BlockHasher, image: Uint8Array): Uint32Array {
  const out = new Uint32Array(2 * h.blockCount(image.length));
  h.hashAll(image, out);
  return out;
}

const BLOCK_SIZES = [16, 32, 48, 64, 128, 256, 4096];

Deno.test("wasm is the auto choice and SIMD works here", () => {
  assert.equal(createBlockHasher().kind, "wasm");
  assert.equal(createBlockHasher({ kind: "ts" }).kind, "ts");
  assert.equal(createBlockHasher().blockSize, 64);
});

Deno.test("known answers: lo is XXH32 with seed 0 (xxhsum -H0)", () => {
  // Reference values from xxhsum 0.8.1 (Debian package xxhash).
  const cases: [Uint8Array, number, number][] = [
    [new Uint8Array(64), 64, 0x56328790],
    [new Uint8Array(16), 16, 0x8e022b3a],
    [new Uint8Array(128), 128, 0x235fdcd9],
    [pattern(64), 64, 0x23971640],
    [pattern(384).subarray(320), 64, 0x460854e1],
    [pattern(16), 16, 0x816898ee],
    [pattern(96).subarray(48), 48, 0xd0d3c1cc],
    [pattern(4096), 4096, 0xe5c03f98],
  ];
  for (const kind of ["wasm", "ts"] as const) {
    for (const [bytes, bs, lo] of cases) {
      const out = hashesOf(createBlockHasher({ blockSize: bs, kind }), bytes);
      assert.equal(out[0], lo, `${kind} bs=${bs}`);
      const one = new Uint32Array(2);
      hashBlockInto(bytes, 0, bs, one, 0);
      assert.equal(one[0], lo, `hashBlockInto bs=${bs}`);
      assert.equal(one[1], out[1], `hashBlockInto hi bs=${bs}`);
    }
  }
});

Deno.test("hi half is pinned (regression value for 64 zero bytes)", () => {
  const ts = hashesOf(createBlockHasher({ kind: "ts" }), new Uint8Array(64));
  const wasm = hashesOf(createBlockHasher(), new Uint8Array(64));
  assert.deepEqual(wasm, ts);
  assert.equal(ts[0], 0x56328790);
  assert.equal(ts[1], 0x7a0e0f15);
  // Computed independently from the spec formula with BigInt below.
  assert.equal(ts[1], referenceHi(new Uint8Array(64), 0, 64));
});

/** Straight BigInt transcription of the spec, for the hi half. */
function referenceHi(bytes: Uint8Array, offset: number, bs: number): number {
  const M = 0xffffffffn;
  const P1 = 0x9e3779b1n, P2 = 0x85ebca77n, P3 = 0xc2b2ae3dn;
  const P4 = 0x27d4eb2fn, P5 = 0x165667b1n;
  const rotl = (x: bigint, r: bigint) => ((x << r) | (x >> (32n - r))) & M;
  const a = [(P1 + P2) & M, P2, 0n, (-P1) & M];
  for (let p = offset; p < offset + bs; p += 16) {
    for (let l = 0; l < 4; l++) {
      const q = p + 4 * l;
      const w = BigInt(
        ((bytes[q] ?? 0) | ((bytes[q + 1] ?? 0) << 8) |
          ((bytes[q + 2] ?? 0) << 16) | ((bytes[q + 3] ?? 0) << 24)) >>> 0,
      );
      a[l] = (rotl((a[l] + w * P2) & M, 13n) * P1) & M;
    }
  }
  let h = ((a[0] ^ rotl(a[2], 16n)) + rotl(a[1] ^ a[3], 5n) * P4 +
    BigInt(bs) * P5) & M;
  h ^= h >> 16n;
  h = (h * P3) & M;
  h ^= h >> 13n;
  h = (h * P2) & M;
  h ^= h >> 16n;
  return Number(h);
}

Deno.test("hi half matches a BigInt transcription of the spec", () => {
  const bytes = randomBytes(4096 + 40, 99);
  for (const bs of BLOCK_SIZES) {
    const out = hashesOf(createBlockHasher({ blockSize: bs }), bytes);
    for (let b = 0; b < out.length / 2; b += 7) {
      assert.equal(
        out[2 * b + 1],
        referenceHi(bytes, b * bs, bs),
        `bs=${bs} b=${b}`,
      );
    }
  }
});

Deno.test("wasm == ts on random data, many sizes and lengths", () => {
  const bigLen = 3 * 128 * 1024 + 1234; // several wasm chunks + ragged tail
  const data = randomBytes(bigLen + 8, 7);
  for (const bs of BLOCK_SIZES) {
    const wasm = createBlockHasher({ blockSize: bs, kind: "wasm" });
    const ts = createBlockHasher({ blockSize: bs, kind: "ts" });
    const lengths = [
      0,
      1,
      15,
      bs - 1,
      bs,
      bs + 1,
      3 * bs,
      5 * bs + 7,
      37 * bs + 3,
      bigLen,
    ];
    for (const len of lengths) {
      for (const shift of [0, 1, 4]) {
        const image = data.subarray(shift, shift + len);
        const a = hashesOf(wasm, image);
        const b = hashesOf(ts, image);
        assert.equal(a.length, 2 * Math.ceil(len / bs));
        assert.deepEqual(a, b, `bs=${bs} len=${len} shift=${shift}`);
        // The partial last block is hashed as if zero-padded.
        if (len % bs !== 0) {
          const padded = new Uint8Array(Math.ceil(len / bs) * bs);
          padded.set(image);
          assert.deepEqual(hashesOf(ts, padded), b);
        }
        // hashBlockInto agrees on every block, including the ragged one.
        const one = new Uint32Array(2);
        for (let k = 0; k < a.length / 2; k += 1 + (k >> 3)) {
          hashBlockInto(image, k * bs, bs, one, 0);
          assert.equal(one[0], a[2 * k]);
          assert.equal(one[1], a[2 * k + 1]);
        }
      }
    }
  }
});

Deno.test("hashAll writes only its blocks' slots", () => {
  for (const kind of ["wasm", "ts"] as const) {
    const h = createBlockHasher({ kind });
    const image = randomBytes(200, 3); // 4 blocks, last one partial
    const out = new Uint32Array(12).fill(0xdeadbeef);
    h.hashAll(image, out);
    assert.equal(out[7] !== 0xdeadbeef || out[6] !== 0xdeadbeef, true);
    assert.deepEqual([...out.subarray(8)], [
      0xdeadbeef,
      0xdeadbeef,
      0xdeadbeef,
      0xdeadbeef,
    ]);
  }
});

function dirtyBits(dirty: Uint32Array, n: number): number[] {
  const bits: number[] = [];
  for (let b = 0; b < n; b++) {
    if ((dirty[b >>> 5] >>> (b & 31)) & 1) bits.push(b);
  }
  return bits;
}

Deno.test("scanDirty semantics, wasm and ts", () => {
  for (const kind of ["wasm", "ts"] as const) {
    for (const bs of [16, 64, 4096]) {
      for (const len of [1, bs, 33 * bs + 5, 300 * 1024 + 17]) {
        const h = createBlockHasher({ blockSize: bs, kind });
        const n = h.blockCount(len);
        const image = randomBytes(len, len + bs);
        const hashes = hashesOf(h, image);
        const dirty = new Uint32Array(Math.ceil(n / 32));
        const what = `${kind} bs=${bs} len=${len}`;

        // Unchanged: nothing dirty, hashes unchanged.
        const before = hashes.slice();
        assert.equal(h.scanDirty(image, hashes, dirty), 0, what);
        assert.deepEqual(dirty, new Uint32Array(dirty.length));
        assert.deepEqual(hashes, before);

        // Last byte changed: exactly the last block.
        image[len - 1] ^= 0x5a;
        assert.equal(h.scanDirty(image, hashes, dirty), 1, what);
        assert.deepEqual(dirtyBits(dirty, n), [n - 1], what);
        assert.deepEqual(hashes, hashesOf(h, image));
        // A second scan sees the stored hash: clean again.
        dirty.fill(0);
        assert.equal(h.scanDirty(image, hashes, dirty), 0, what);

        // Every block changed.
        for (let b = 0; b < n; b++) image[b * bs] ^= 0xff;
        assert.equal(h.scanDirty(image, hashes, dirty), n, what);
        assert.deepEqual(dirtyBits(dirty, n).length, n);
        assert.deepEqual(hashes, hashesOf(h, image));
        // Bits past the last block stay zero.
        if (n % 32 !== 0) assert.equal(dirty[dirty.length - 1] >>> (n % 32), 0);

        // Bits of clean blocks are left untouched (OR semantics).
        dirty.fill(0xffffffff);
        assert.equal(h.scanDirty(image, hashes, dirty), 0);
        assert.deepEqual(dirty, new Uint32Array(dirty.length).fill(0xffffffff));
      }
    }
  }
});

Deno.test("scanDirty: wasm and ts agree on sparse random changes", () => {
  const bs = 64;
  const len = 2 * 1024 * 1024 + 100;
  const base = randomBytes(len, 5);
  const wasm = createBlockHasher({ blockSize: bs, kind: "wasm" });
  const ts = createBlockHasher({ blockSize: bs, kind: "ts" });
  const hw = hashesOf(wasm, base);
  const ht = hashesOf(ts, base);
  const image = base.slice();
  const picks = randomBytes(4000, 11);
  for (let i = 0; i < picks.length; i += 4) {
    const p = ((picks[i] | (picks[i + 1] << 8) | (picks[i + 2] << 16)) * 3) %
      len;
    image[p] ^= 1 + (picks[i + 3] & 127);
  }
  const n = wasm.blockCount(len);
  const dw = new Uint32Array(Math.ceil(n / 32));
  const dt = new Uint32Array(Math.ceil(n / 32));
  const cw = wasm.scanDirty(image, hw, dw);
  const ct = ts.scanDirty(image, ht, dt);
  assert.ok(cw > 900 && cw <= 1000, `dirty count ${cw}`);
  assert.equal(cw, ct);
  assert.deepEqual(dw, dt);
  assert.deepEqual(hw, ht);
  let pop = 0;
  for (const w of dw) for (let x = w; x; x &= x - 1) pop++;
  assert.equal(pop, cw);
});

Deno.test("bad block sizes and buffers are rejected clearly", () => {
  for (const bs of [0, 8, 17, 24, 4112, 8192, -64, 64.5, NaN]) {
    assert.throws(
      () => createBlockHasher({ blockSize: bs }),
      (e: unknown) =>
        e instanceof RangeError &&
        /multiple of 16 from 16 to 4096/.test(e.message),
    );
    assert.throws(
      () => hashBlockInto(new Uint8Array(64), 0, bs, new Uint32Array(2), 0),
      RangeError,
    );
  }
  assert.throws(
    // @ts-expect-error: deliberately wrong kind
    () => createBlockHasher({ kind: "gpu" }),
    /expected "wasm", "ts" or "auto"/,
  );
  const h = createBlockHasher();
  assert.throws(
    () => h.hashAll(new Uint8Array(129), new Uint32Array(5)),
    /at least 6/,
  );
  assert.throws(
    () =>
      h.scanDirty(
        new Uint8Array(64 * 33),
        new Uint32Array(66),
        new Uint32Array(1),
      ),
    /dirty has 1 words, expected at least 2/,
  );
  assert.throws(
    () => hashBlockInto(new Uint8Array(64), 0, 64, new Uint32Array(2), 1),
    RangeError,
  );
});

Deno.test("wasm chunks are whole groups of 32 blocks", () => {
  const wasmModule = wasmBlockHashModule();
  assert.ok(wasmModule !== null);
  for (const bs of BLOCK_SIZES) {
    const core: WasmBlockHashCore = new WasmBlockHashCore(wasmModule, bs);
    assert.equal(core.chunkBlocks % 32, 0, `bs=${bs}`);
  }
});

/** `n` u32 words allocated from `h`'s arena (throws if it is full). */
function arenaWords(h: BlockHasher, n: number): Uint32Array {
  const bytes = h.alloc(4 * n);
  assert.ok(bytes !== null, `arena full allocating ${4 * n} bytes`);
  return new Uint32Array(bytes.buffer, bytes.byteOffset, n);
}

Deno.test("arena: in-place hashAll/scanDirty match ordinary arrays", () => {
  for (const kind of ["wasm", "ts"] as const) {
    for (const bs of [16, 64, 4096]) {
      const lens = [
        1,
        3,
        bs - 1,
        bs,
        bs + 5,
        31 * bs + 2,
        32 * bs,
        33 * bs + 7,
        300 * 1024 + 17,
        (2 << 20) + 3, // past one wasm chunk
      ];
      // Room for every image, hashes and bitmap, plus alignment padding.
      let need = 0;
      for (const len of lens) need += len + 12 * Math.ceil(len / bs) + 3 * 64;
      const h = createBlockHasher({ blockSize: bs, kind, arenaBytes: need });
      const ref = createBlockHasher({ blockSize: bs, kind });
      for (const len of lens) {
        const what = `${kind} bs=${bs} len=${len}`;
        const n = h.blockCount(len);
        const data = randomBytes(len, len ^ bs);
        const image = h.alloc(len);
        assert.ok(image !== null, what);
        assert.equal(image.byteOffset % 64, 0, what);
        image.set(data);
        const hashes = arenaWords(h, 2 * n);
        const dirty = arenaWords(h, Math.ceil(n / 32));
        const refHashes = hashesOf(ref, data);
        h.hashAll(image, hashes);
        assert.deepEqual(hashes, refHashes, what);

        // Sparse changes, including the first and the ragged last block.
        for (const p of new Set([0, len - 1, len >>> 1, len >>> 3])) {
          image[p] ^= 0xa5;
          data[p] ^= 0xa5;
        }
        const refDirty = new Uint32Array(dirty.length);
        dirty.fill(0);
        const c = h.scanDirty(image, hashes, dirty);
        const cRef = ref.scanDirty(data, refHashes, refDirty);
        assert.equal(c, cRef, what);
        assert.ok(c >= 1 && c <= 4, what);
        assert.deepEqual(dirty, refDirty, what);
        assert.deepEqual(hashes, refHashes, what);
        assert.deepEqual(dirtyBits(dirty, n).includes(n - 1), true, what);

        // OR semantics: bits of clean blocks stay set; a rescan is clean.
        dirty.fill(0xffffffff);
        assert.equal(h.scanDirty(image, hashes, dirty), 0, what);
        assert.ok(dirty.every((w) => w === 0xffffffff), what);

        // Mixed: arena image with ordinary hashes/dirty, and the reverse.
        const plainHashes = hashesOf(ref, data);
        const plainDirty = new Uint32Array(dirty.length);
        image[len - 1] ^= 1;
        assert.equal(h.scanDirty(image, plainHashes, plainDirty), 1, what);
        assert.deepEqual(dirtyBits(plainDirty, n), [n - 1], what);
        image[len - 1] ^= 1;
        dirty.fill(0);
        assert.equal(h.scanDirty(data, hashes, dirty), 0, what);
        data[0] ^= 2;
        assert.equal(h.scanDirty(data, hashes, dirty), 1, what);
        assert.deepEqual(dirtyBits(dirty, n), [0], what);
      }
    }
  }
});

Deno.test("arena: tail block ignores the arena bytes past the image", () => {
  for (const kind of ["wasm", "ts"] as const) {
    const h = createBlockHasher({ kind, arenaBytes: 1 << 16 });
    const ref = createBlockHasher({ kind });
    // Non-zero neighbours right after a ragged image in the same arena.
    const image = h.alloc(64 * 9 + 3)!;
    const after = h.alloc(4096)!;
    after.fill(0xff);
    image.set(randomBytes(image.length, 77));
    // A sub-view that ends mid-block with non-zero arena bytes behind it.
    const inner = image.subarray(0, 64 * 5 + 1);
    for (const img of [image, inner]) {
      const n = h.blockCount(img.length);
      const hashes = arenaWords(h, 2 * n);
      h.hashAll(img, hashes);
      assert.deepEqual(hashes, hashesOf(ref, img.slice()), kind);
      const dirty = arenaWords(h, 1);
      assert.equal(h.scanDirty(img, hashes, dirty), 0, kind);
    }
  }
});

Deno.test("arena: alloc is 64-aligned, zeroed, null when full", () => {
  for (const kind of ["wasm", "ts"] as const) {
    const h = createBlockHasher({ kind, arenaBytes: 4096 });
    const a = h.alloc(1)!;
    const b = h.alloc(100)!;
    const c = h.alloc(0)!;
    for (const v of [a, b, c]) assert.equal(v.byteOffset % 64, 0, kind);
    assert.equal(b.byteOffset - a.byteOffset, 64, kind);
    assert.ok(b.every((x) => x === 0), kind);
    if (kind === "wasm") {
      assert.ok(a.buffer instanceof ArrayBuffer);
      assert.ok(a.buffer.byteLength >= 4096);
    }
    // a, b and c take [0, 192): 3904 bytes left.
    assert.equal(c.byteOffset - a.byteOffset, 192, kind);
    assert.equal(h.alloc(3905), null, kind);
    const d = h.alloc(3904);
    assert.ok(d !== null && d.length === 3904, kind);
    assert.equal(h.alloc(1), null, kind);
    assert.equal(h.alloc(0) === null || h.alloc(0)!.length === 0, true);
    // No arena by default.
    assert.equal(createBlockHasher({ kind }).alloc(1), null, kind);
    assert.throws(() => h.alloc(-1), RangeError);
    assert.throws(() => h.alloc(1.5), RangeError);
    assert.throws(
      () => createBlockHasher({ kind, arenaBytes: -1 }),
      /arenaBytes/,
    );
  }
});

Deno.test("arena: views stay valid after many allocs and scans", () => {
  const h = createBlockHasher({ kind: "wasm", arenaBytes: 8 << 20 });
  const first = h.alloc(64 * 100)!;
  first.set(randomBytes(first.length, 5));
  const keep = first.slice();
  const views: Uint8Array[] = [];
  for (let i = 0; i < 2000; i++) {
    const v = h.alloc(1 + (i % 3000));
    if (v === null) break;
    v.fill(i & 255);
    views.push(v);
  }
  assert.ok(views.length > 1000);
  const n = h.blockCount(first.length);
  const hashes = arenaWords(h, 2 * n);
  h.hashAll(first, hashes);
  // Nothing detached and nothing overlapped.
  assert.equal(first.length, 64 * 100);
  assert.deepEqual(first, keep);
  for (let i = 0; i < views.length; i++) {
    assert.ok(views[i].every((x) => x === (i & 255)), `view ${i}`);
  }
  assert.deepEqual(hashes, hashesOf(createBlockHasher(), keep));
});

Deno.test("arena: a too-large request reserves what fits", () => {
  // 16 GiB cannot fit a wasm memory: the arena is capped below 4 GiB.
  const h = createBlockHasher({ kind: "wasm", arenaBytes: 16 * 2 ** 30 });
  const a = h.alloc(1 << 20);
  assert.ok(a !== null);
  assert.ok(a.buffer.byteLength <= 4 * 2 ** 30 - 65536);
  assert.equal(h.alloc(4 * 2 ** 30), null);
});
