import { assert, assertEquals } from "./_assert.ts";
import { applyXorZeroRun, encodeXorZeroRun } from "../src/zero_run.ts";
import { ByteReader } from "../src/_varint.ts";
import { Rng } from "../src/synthetic.ts";

const WORDS = 1024;

function roundTrip(
  cur: Uint32Array,
  ref: Uint32Array,
  out = new Uint8Array(8192),
): number {
  const end = encodeXorZeroRun(cur, 0, ref, 0, cur.length, out, 0, out.length);
  assert(end >= 0, "encoding fits");
  const dst = ref.slice();
  applyXorZeroRun(new ByteReader(out, 0, end), end, dst, 0, cur.length);
  assertEquals(dst, cur);
  return end;
}

Deno.test("an unchanged section encodes to zero bytes", () => {
  const a = new Uint32Array(WORDS).fill(0xdeadbeef);
  assertEquals(roundTrip(a, a.slice()), 0);
});

Deno.test("a zero section against a zero reference encodes to zero bytes", () => {
  assertEquals(roundTrip(new Uint32Array(WORDS), new Uint32Array(WORDS)), 0);
});

Deno.test("a zero section against data is one run of every word", () => {
  const ref = new Uint32Array(WORDS).fill(7);
  // zeros=0 (1 byte), count=1024 (2 bytes), 4096 bytes of XOR.
  assertEquals(roundTrip(new Uint32Array(WORDS), ref), 3 + 4 * WORDS);
});

Deno.test("only the last byte changed: one run at the end", () => {
  const ref = new Uint32Array(WORDS);
  const cur = ref.slice();
  new Uint8Array(cur.buffer)[4095] = 0x80;
  // zeros=1023 (2 bytes), count=1 (1 byte), one word.
  assertEquals(roundTrip(cur, ref), 2 + 1 + 4);
});

Deno.test("the first word changed: a zero-length zero run", () => {
  const ref = new Uint32Array(WORDS);
  const cur = ref.slice();
  cur[0] = 1;
  assertEquals(roundTrip(cur, ref), 1 + 1 + 4);
});

Deno.test("output overflow is reported, not written past the limit", () => {
  const ref = new Uint32Array(WORDS);
  const cur = new Uint32Array(WORDS).fill(1);
  const out = new Uint8Array(5000).fill(0xaa);
  assertEquals(encodeXorZeroRun(cur, 0, ref, 0, WORDS, out, 0, 100), -1);
  assert(
    out.subarray(100).every((b) => b === 0xaa),
    "nothing written past the limit",
  );
});

Deno.test("malformed encodings are rejected with a reason", () => {
  const dst = new Uint32Array(4);
  // zeros=3, count=5 overruns a 4-word section.
  const bad = new Uint8Array([3, 5, 1, 2, 3, 4]);
  let message = "";
  try {
    applyXorZeroRun(new ByteReader(bad), bad.length, dst, 0, 4);
  } catch (e) {
    message = (e as Error).message;
  }
  assert(message.includes("section has 4 words"), message);
  // Truncated changed words.
  const short = new Uint8Array([0, 2, 1, 2, 3, 4, 5]);
  assert(
    (() => {
      try {
        applyXorZeroRun(new ByteReader(short), short.length, dst, 0, 4);
        return false;
      } catch (e) {
        return (e as Error).message.includes("truncated");
      }
    })(),
  );
  assertEquals(
    dst,
    new Uint32Array(4),
    "a rejected section may not have been partially applied beyond its own words",
  );
});

Deno.test("10,000 random pages round-trip", () => {
  const rng = new Rng(42);
  const ref = new Uint32Array(WORDS);
  const cur = new Uint32Array(WORDS);
  const out = new Uint8Array(8192);
  for (let n = 0; n < 10_000; n++) {
    for (let i = 0; i < WORDS; i++) ref[i] = rng.u32();
    cur.set(ref);
    const mode = n % 4;
    const changes = mode === 0
      ? 1
      : mode === 1
      ? rng.int(64)
      : mode === 2
      ? rng.int(1024)
      : WORDS;
    for (let c = 0; c < changes; c++) {
      cur[mode === 3 ? c : rng.int(WORDS)] = rng.u32();
    }
    roundTrip(cur, ref, out);
  }
});
