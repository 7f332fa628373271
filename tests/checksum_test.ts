import { assertEquals } from "./_assert.ts";
import { xxh32 } from "../src/checksum.ts";

const text = (s: string) => new TextEncoder().encode(s);

Deno.test("xxh32 matches the reference vectors", () => {
  assertEquals(xxh32(new Uint8Array(0)), 0x02cc5d05);
  assertEquals(xxh32(text("abc")), 0x32d153ff);
  assertEquals(
    xxh32(text("Nobody inspects the spammish repetition")),
    0xe2293b2f,
  );
});

Deno.test("xxh32 gives the same result at every alignment and length", () => {
  const data = new Uint8Array(4096 + 8);
  for (let i = 0; i < data.length; i++) data[i] = (i * 131 + (i >> 7)) & 255;
  for (const len of [0, 1, 15, 16, 17, 63, 64, 1000, 4096]) {
    const ref = xxh32(data.slice(0, len), 99); // a fresh, aligned copy
    for (let off = 1; off < 8; off++) {
      const moved = new Uint8Array(data.length);
      moved.set(data.subarray(0, len), off);
      assertEquals(xxh32(moved.subarray(off, off + len), 99), ref);
    }
  }
});
