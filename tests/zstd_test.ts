// Copyright patchwire authors. MIT license.
import assert from "node:assert/strict";
import { createZstd, type Zstd } from "../src/compress/zstd.ts";
import { checkFrames } from "../src/compress/_zstd_node.ts";
import { randomBytes } from "./_bytes.ts";

/** Memory-like: half random, half zeros, some text. */
function memoryLike(n: number): Uint8Array {
  const out = new Uint8Array(n);
  out.set(randomBytes(n >>> 1).subarray(0, n >>> 1));
  const text = new TextEncoder().encode("patchwire page content ");
  for (let at = (n * 3) >>> 2; at + text.length <= n; at += 4096) {
    out.set(text, at);
  }
  return out;
}

function withBoth(name: string, fn: (z: Zstd) => void): void {
  for (const backend of ["ffi", "node"] as const) {
    Deno.test(`zstd ${backend}: ${name}`, () => {
      const z = createZstd({ backend });
      try {
        assert.equal(z.backend, backend);
        fn(z);
      } finally {
        z.close();
      }
    });
  }
}

const SIZES = [0, 1, 4096, 5 * 1024 * 1024];

withBoth("round trips empty, 1 byte, 4 KiB, 5 MiB", (z) => {
  for (const n of SIZES) {
    const src = memoryLike(n);
    for (const level of [1, 3]) {
      const frame = z.compress(src, { level });
      assert.ok(frame.length <= z.compressBound(n), `bound at ${n}`);
      assert.deepEqual(z.decompress(frame, n), src, `size ${n} level ${level}`);
      // Owned copy: its buffer holds exactly the frame.
      assert.equal(frame.buffer.byteLength, frame.length);
      assert.equal(frame.byteOffset, 0);
    }
  }
});

withBoth("compressInto / decompressInto at offsets", (z) => {
  const src = memoryLike(4096);
  const dst = new Uint8Array(7 + z.compressBound(src.length));
  const n = z.compressInto(src, dst, 7, { level: 1 });
  assert.ok(n > 0);
  const page = new Uint8Array(4096 + 10).fill(0xee);
  z.decompressInto(dst.subarray(7, 7 + n), page, 5, 4096);
  assert.deepEqual(page.subarray(5, 4101), src);
  assert.equal(page[4], 0xee);
  assert.equal(page[4101], 0xee);
  // Empty input, empty output, through the zero-length buffer path.
  const m = z.compressInto(new Uint8Array(0), dst, 0);
  z.decompressInto(dst.subarray(0, m), new Uint8Array(0), 0, 0);
});

withBoth("output exceeding capacity is rejected", (z) => {
  const src = randomBytes(4096);
  const dst = new Uint8Array(1000);
  assert.throws(
    () => z.compressInto(src, dst, 0),
    /too small.*1000 bytes available/,
  );
  assert.throws(() => z.compressInto(src, dst, 1001), /dstOffset/);
  // Still usable afterwards.
  assert.deepEqual(z.decompress(z.compress(src), 4096), src);
});

withBoth("wrong expected size is an error, not garbage", (z) => {
  const src = memoryLike(4096);
  const frame = z.compress(src);
  assert.throws(() => z.decompress(frame, 4095), /expected 4095 bytes/);
  assert.throws(
    () => z.decompress(frame, 4097),
    /expected exactly 4097 bytes|expected 4097 bytes/,
  );
  assert.throws(
    () => z.decompressInto(frame, new Uint8Array(100), 0, 4096),
    /expectedSize/,
  );
});

withBoth("corrupted or truncated frames are errors", (z) => {
  const src = memoryLike(64 * 1024);
  const frame = z.compress(src, { level: 3 });
  for (let cut = 1; cut <= 8; cut++) {
    assert.throws(
      () => z.decompress(frame.subarray(0, frame.length - cut), src.length),
      /zstd decompress failed/,
      `truncated by ${cut}`,
    );
  }
  // Flip one bit anywhere: never silently different output.
  for (let i = 0; i < frame.length; i += Math.max(1, frame.length >>> 5)) {
    const bad = frame.slice();
    bad[i] ^= 0x10;
    let out: Uint8Array | undefined;
    try {
      out = z.decompress(bad, src.length);
    } catch (e) {
      assert.match((e as Error).message, /zstd decompress failed/);
      continue;
    }
    assert.deepEqual(out, src, `bit flip at ${i} changed the output silently`);
  }
  assert.throws(() => z.decompress(new Uint8Array(0), 0), /zstd decompress/);
  assert.throws(() => z.decompress(randomBytes(100), 100), /zstd decompress/);
});

withBoth("checksum flag is written by default and can be turned off", (z) => {
  const src = memoryLike(4096);
  // Frame_Header_Descriptor bit 2 = Content_Checksum_flag.
  assert.equal(z.compress(src)[4] & 4, 4);
  assert.equal(z.compress(src, { checksum: false })[4] & 4, 0);
  const plain = z.compress(src, { checksum: false });
  assert.deepEqual(z.decompress(plain, src.length), src);
});

withBoth("argument errors name what was expected", (z) => {
  assert.throws(() => z.compress(new Uint8Array(1), { level: 99 }), /level/);
  assert.throws(
    () => z.compress(new Uint8Array(1), { windowLog: 5 }),
    /windowLog must be an integer in \[10, 31\]/,
  );
  assert.throws(() => z.decompress(new Uint8Array(9), -1), /expectedSize/);
});

Deno.test("zstd node: prefix requests throw a clear error", () => {
  const z = createZstd({ backend: "node" });
  const ref = randomBytes(4096);
  assert.throws(
    () => z.compress(ref, { prefix: ref }),
    /node:zlib backend cannot use a prefix/,
  );
  assert.throws(
    () => z.decompress(new Uint8Array(9), 0, ref),
    /node:zlib backend cannot use a prefix/,
  );
  // An empty prefix is no prefix.
  assert.deepEqual(
    z.decompress(z.compress(ref, { prefix: new Uint8Array(0) }), 4096),
    ref,
  );
  z.close();
});

Deno.test("zstd ffi: prefix catches a page shifted by 3 bytes", () => {
  const z = createZstd({ backend: "ffi" });
  const reference = randomBytes(4096, 1234);
  const page = new Uint8Array(4096);
  page.set(reference.subarray(0, 4093), 3);
  page.set([1, 2, 3], 0);
  for (const level of [1, 3, 19]) {
    const without = z.compress(page, { level });
    const withPrefix = z.compress(page, { level, prefix: reference });
    assert.ok(
      withPrefix.length * 4 < without.length,
      `level ${level}: ${withPrefix.length} with prefix vs ${without.length} without`,
    );
    assert.deepEqual(z.decompress(withPrefix, 4096, reference), page);
    // The prefix was single-use: the next frame must not need it.
    const plain = z.compress(page, { level });
    assert.deepEqual(plain, without);
    assert.deepEqual(z.decompress(plain, 4096), page);
  }
  z.close();
});

Deno.test("zstd ffi: wrong or missing prefix is an error", () => {
  const z = createZstd({ backend: "ffi" });
  const reference = randomBytes(4096, 77);
  const page = reference.slice();
  page.fill(0, 1000, 1100);
  const frame = z.compress(page, { prefix: reference });
  assert.ok(frame.length < 200, `${frame.length}`);
  const wrong = reference.slice();
  wrong[2000] ^= 1;
  assert.throws(
    () => z.decompress(frame, 4096, wrong),
    /zstd decompress failed: .*4096-byte prefix/,
  );
  assert.throws(() => z.decompress(frame, 4096), /zstd decompress failed/);
  assert.throws(
    () => z.decompress(frame, 4096, reference.subarray(1)),
    /zstd decompress failed/,
  );
  // A failed prefix decode leaves nothing behind.
  const plain = z.compress(page);
  assert.deepEqual(z.decompress(plain, 4096), page);
  assert.deepEqual(z.decompress(frame, 4096, reference), page);
  z.close();
});

Deno.test("zstd ffi: the window widens to cover prefix + src", () => {
  const z = createZstd({ backend: "ffi" });
  // zstd drops a prefix once the frame is a window past its end. src is 1 MiB
  // of zeros then a copy of the prefix: beyond level 1's default 512 KiB window.
  const reference = randomBytes(64 * 1024, 5);
  const src = new Uint8Array((1 << 20) + reference.length);
  src.set(reference, 1 << 20);
  const narrow = z.compress(src, {
    level: 1,
    prefix: reference,
    windowLog: 19,
  });
  const wide = z.compress(src, { level: 1, prefix: reference });
  assert.ok(narrow.length > 60_000, `${narrow.length}`);
  assert.ok(wide.length < 1000, `${wide.length}`);
  assert.deepEqual(z.decompress(wide, src.length, reference), src);
  assert.deepEqual(z.decompress(narrow, src.length, reference), src);
  z.close();
});

Deno.test("zstd: ffi and node frames are mutually decodable", () => {
  const ffi = createZstd({ backend: "ffi" });
  const node = createZstd({ backend: "node" });
  for (const n of SIZES) {
    const src = memoryLike(n);
    for (const level of [-5, 1, 3, 19]) {
      if (n > 65536 && level === 19) continue;
      assert.deepEqual(node.decompress(ffi.compress(src, { level }), n), src);
      assert.deepEqual(ffi.decompress(node.compress(src, { level }), n), src);
    }
  }
  // Windows beyond zstd's default decoder limit (27) decode on both.
  const big = randomBytes(1 << 20);
  const wide = ffi.compress(big, { level: 1, windowLog: 30 });
  assert.deepEqual(node.decompress(wide, big.length), big);
  ffi.close();
  node.close();
});

Deno.test("zstd: auto picks ffi when libzstd loads; closed contexts throw", () => {
  const z = createZstd();
  assert.equal(z.backend, "ffi");
  z.close();
  assert.throws(() => z.compress(new Uint8Array(1)), /after close/);
  assert.throws(() => createZstd({ backend: "x" as "ffi" }), /backend must be/);
});

Deno.test("zstd node: frame walker accepts whole frames only", () => {
  const z = createZstd({ backend: "ffi" });
  const a = z.compress(memoryLike(300_000));
  const b = z.compress(new Uint8Array(10));
  const both = new Uint8Array(a.length + b.length);
  both.set(a);
  both.set(b, a.length);
  assert.equal(checkFrames(both), 300_010);
  assert.throws(() => checkFrames(both.subarray(0, both.length - 1)));
  assert.throws(() => checkFrames(a.subarray(0, 20)));
  z.close();
});
