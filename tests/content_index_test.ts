import { assert, assertEquals } from "./_assert.ts";
import { ContentIndex } from "../src/content_index.ts";
import { createBlockHasher, hashBlockInto } from "../src/hash/block_hash.ts";
import { Rng } from "../src/synthetic.ts";

const BS = 64;

function setup(blocks: number, options = {}) {
  const hasher = createBlockHasher({ blockSize: BS });
  const committed = new Uint8Array(blocks * BS);
  new Rng(1).fill(committed);
  const hashes = new Uint32Array(2 * blocks);
  hasher.hashAll(committed, hashes);
  const zero = new Uint32Array(2);
  hashBlockInto(new Uint8Array(BS), 0, BS, zero, 0);
  const index = new ContentIndex([{ committed, hashes, blocks }], BS, {
    lo: zero[0],
    hi: zero[1],
  }, {
    sampling: 1,
    ...options,
  });
  index.rebuild();
  return { index, committed, hashes, zero };
}

function hashOf(bytes: Uint8Array, offset = 0) {
  const h = new Uint32Array(2);
  hashBlockInto(bytes, offset, BS, h, 0);
  return h;
}

Deno.test("finds committed content by hash, confirmed bitwise", () => {
  const { index, committed } = setup(256);
  const probe = committed.slice(77 * BS, 78 * BS);
  const h = hashOf(probe);
  assertEquals(index.find(h[0], h[1], probe, 0), 77);
  assertEquals(
    index.find(h[0], h[1], probe, 0, 77),
    -1,
    "skipId excludes the block itself",
  );
});

Deno.test("a matching hash with different bytes is never returned", () => {
  const { index, committed } = setup(256);
  const h = hashOf(committed, 5 * BS);
  const impostor = committed.slice(5 * BS, 6 * BS);
  impostor[63] ^= 1;
  assertEquals(index.find(h[0], h[1], impostor, 0), -1);
  assert(
    index.counters.rejected > 0,
    "the candidate was rejected by the bitwise check",
  );
});

Deno.test("zero blocks are not indexed; entries for changed blocks go stale safely", () => {
  const { index, committed, zero } = setup(64);
  assert(!index.isIndexed(zero[0], zero[1]));
  const old = committed.slice(9 * BS, 10 * BS);
  const h = hashOf(old);
  committed.fill(0xee, 9 * BS, 10 * BS); // block 9 changed after it was indexed
  assertEquals(index.find(h[0], h[1], old, 0), -1);
});

Deno.test("forced key collisions: every lookup still returns only identical content", () => {
  const { index, committed } = setup(512, { keyMask: 0x3 });
  let found = 0;
  for (let b = 0; b < 512; b += 3) {
    const h = hashOf(committed, b * BS);
    const id = index.find(h[0], h[1], committed, b * BS, -1);
    if (id >= 0) {
      found++;
      const same = committed.subarray(id * BS, id * BS + BS).every((v, k) =>
        v === committed[b * BS + k]
      );
      assert(same, `block ${b} matched block ${id} with different bytes`);
    }
  }
  assert(index.counters.rejected > 0, "collisions happened");
  assert(found > 0);
});

Deno.test("many copies of one block occupy one slot (no probe clusters)", () => {
  const { index, committed, hashes } = setup(4096);
  const pattern = committed.slice(0, BS);
  for (let b = 1; b < 4096; b++) committed.set(pattern, b * BS);
  createBlockHasher({ blockSize: BS }).hashAll(committed, hashes);
  index.rebuild();
  assert(!index.needsRebuild);
  const h = hashOf(pattern);
  assert(index.find(h[0], h[1], pattern, 0) >= 0);
});
