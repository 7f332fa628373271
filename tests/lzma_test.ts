// Copyright patchwire authors. MIT license.
import assert from "node:assert/strict";
import { createLzma } from "../src/compress/lzma.ts";
import { randomBytes } from "./_bytes.ts";

Deno.test("lzma: a page compressed against its reference page costs a few bytes and decodes exactly", () => {
  const lzma = createLzma();
  const reference = randomBytes(4096, 0x2545f491);
  const page = new Uint8Array(4096);
  // The reference's content moved by 3 bytes, with one byte changed.
  page.set(reference.subarray(0, 4093), 3);
  page[2000] ^= 0x5a;
  const alone = lzma.compress(page, { preset: 1 });
  const against = lzma.compress(page, {
    preset: 1,
    dictionary: reference,
    literalContextBits: 0,
    literalPositionBits: 2,
  });
  assert.ok(alone.length > 4000, `random page alone: ${alone.length} bytes`);
  assert.ok(
    against.length < 64,
    `against its reference: ${against.length} bytes`,
  );
  assert.deepEqual(lzma.decompress(against, 4096, reference), page);
  lzma.close();
});

Deno.test("lzma: presets 0-9 and both match finders round-trip, empty input included", () => {
  const lzma = createLzma();
  const data = randomBytes(20000).map((b, i) => (i % 7 === 0 ? b : i & 0xff));
  for (let preset = 0; preset <= 9; preset++) {
    for (const matchFinder of ["hc4", "bt4"] as const) {
      const c = lzma.compress(data, { preset, matchFinder });
      assert.deepEqual(lzma.decompress(c, data.length), data);
    }
  }
  const empty = lzma.compress(new Uint8Array(0));
  assert.equal(lzma.decompress(empty, 0).length, 0);
  lzma.close();
});

Deno.test("lzma: a stream refuses another size, another dictionary, and damage, naming what was wrong", () => {
  const lzma = createLzma();
  const reference = randomBytes(8192, 7);
  const page = reference.slice(100, 4196);
  const c = lzma.compress(page, { dictionary: reference });
  assert.throws(
    () => lzma.decompress(c, 4095, reference),
    /more than the 4095 bytes the frame declares/,
  );
  assert.throws(
    () => lzma.decompress(c, 4097, reference),
    /decodes to 4096 bytes|cut short/,
  );
  // Without the dictionary the matches point before the start: a data error.
  assert.throws(() => lzma.decompress(c, 4096), /LZMA2 section/);
  const damaged = c.slice();
  damaged[0] ^= 0xff;
  assert.throws(
    () => lzma.decompress(damaged, 4096, reference),
    /LZMA2 section/,
  );
  assert.throws(() => lzma.compress(page, { preset: 10 }), /preset 10/);
  lzma.close();
});
