// FGBI block-hash kernel (AssemblyScript, WebAssembly SIMD).
//
// Spec (must match src/hash/_ts_block_hash.ts bit for bit): each block of B
// bytes (B a multiple of 16) is read as little-endian u32 words; four XXH32
// lanes consume one 16-byte stripe per round, which is exactly one i32x4 op.
//   lo = XXH32(block, seed 0)
//   hi = second fold of the same lanes with its own avalanche.
// Hashes are stored as [lo0, hi0, lo1, hi1, ...].
//
// Linear memory is imported (`env.memory`): the JS side creates it once at
// its final size, puts its scratch area and an allocation arena after
// `scratchBase()` (past all static data), and calls `hashBlocks` /
// `scanBlocks` either on image chunks copied into scratch or directly on
// images, hash arrays and dirty bitmaps that live in the arena.
//
// Four blocks are hashed at once: their lane chains are independent, which hides the i32x4.mul latency, and the
// finalisation is done for the four blocks together after a 4x4 transpose.
//
// Built by `deno task build:wasm` (tools/build_wasm.ts).

const P1: u32 = 0x9e3779b1;
const P2: u32 = 0x85ebca77;
const P3: u32 = 0xc2b2ae3d;
const P4: u32 = 0x27d4eb2f;
const P5: u32 = 0x165667b1;

/** First byte of the scratch area the host may use (16-aligned). */
export function scratchBase(): usize {
  return (__heap_base + 15) & ~(<usize>15);
}

// @ts-ignore: decorator
@inline function rotlv(v: v128, r: i32): v128 {
  return v128.or(i32x4.shl(v, r), i32x4.shr_u(v, 32 - r));
}

// @ts-ignore: decorator
@inline function round(acc: v128, w: v128): v128 {
  const p1 = i32x4(<i32>P1, <i32>P1, <i32>P1, <i32>P1);
  const p2 = i32x4(<i32>P2, <i32>P2, <i32>P2, <i32>P2);
  return i32x4.mul(rotlv(i32x4.add(acc, i32x4.mul(w, p2)), 13), p1);
}

// @ts-ignore: decorator
@inline function initLanes(): v128 {
  return i32x4(<i32>(P1 + P2), <i32>P2, 0, <i32>(0 - P1));
}

// @ts-ignore: decorator
@inline function avalancheLo(h: v128): v128 {
  const p2 = i32x4(<i32>P2, <i32>P2, <i32>P2, <i32>P2);
  const p3 = i32x4(<i32>P3, <i32>P3, <i32>P3, <i32>P3);
  h = v128.xor(h, i32x4.shr_u(h, 15));
  h = i32x4.mul(h, p2);
  h = v128.xor(h, i32x4.shr_u(h, 13));
  h = i32x4.mul(h, p3);
  return v128.xor(h, i32x4.shr_u(h, 16));
}

// @ts-ignore: decorator
@inline function avalancheHi(h: v128): v128 {
  const p2 = i32x4(<i32>P2, <i32>P2, <i32>P2, <i32>P2);
  const p3 = i32x4(<i32>P3, <i32>P3, <i32>P3, <i32>P3);
  h = v128.xor(h, i32x4.shr_u(h, 16));
  h = i32x4.mul(h, p3);
  h = v128.xor(h, i32x4.shr_u(h, 13));
  h = i32x4.mul(h, p2);
  return v128.xor(h, i32x4.shr_u(h, 16));
}

/**
 * Finalise four blocks' lanes at once and store their hashes at `dst` as
 * [lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3].
 */
// @ts-ignore: decorator
@inline function finish4(
  a: v128,
  c: v128,
  d: v128,
  e: v128,
  blockSize: i32,
  dst: usize,
): void {
  // Transpose so vector Xk holds lane k of the four blocks.
  const t0 = i32x4.shuffle(a, c, 0, 4, 1, 5);
  const t1 = i32x4.shuffle(d, e, 0, 4, 1, 5);
  const t2 = i32x4.shuffle(a, c, 2, 6, 3, 7);
  const t3 = i32x4.shuffle(d, e, 2, 6, 3, 7);
  const x0 = i32x4.shuffle(t0, t1, 0, 1, 4, 5);
  const x1 = i32x4.shuffle(t0, t1, 2, 3, 6, 7);
  const x2 = i32x4.shuffle(t2, t3, 0, 1, 4, 5);
  const x3 = i32x4.shuffle(t2, t3, 2, 3, 6, 7);
  let lo = i32x4.add(
    i32x4.add(rotlv(x0, 1), rotlv(x1, 7)),
    i32x4.add(rotlv(x2, 12), rotlv(x3, 18)),
  );
  lo = avalancheLo(i32x4.add(lo, i32x4.splat(blockSize)));
  const p4 = i32x4(<i32>P4, <i32>P4, <i32>P4, <i32>P4);
  let hi = i32x4.add(
    v128.xor(x0, rotlv(x2, 16)),
    i32x4.mul(rotlv(v128.xor(x1, x3), 5), p4),
  );
  hi = avalancheHi(i32x4.add(hi, i32x4.splat(blockSize * <i32>P5)));
  v128.store(dst, i32x4.shuffle(lo, hi, 0, 4, 1, 5));
  v128.store(dst, i32x4.shuffle(lo, hi, 2, 6, 3, 7), 16);
}

/**
 * Hash eight consecutive blocks at `p` into `dst` (16 u32). Eight
 * independent lane chains hide the i32x4.mul latency.
 */
// @ts-ignore: decorator
@inline function hash8(p: usize, blockSize: i32, dst: usize): void {
  const b = <usize>blockSize;
  let a = initLanes();
  let c = a;
  let d = a;
  let e = a;
  let f = a;
  let g = a;
  let h = a;
  let k = a;
  const end = p + b;
  while (p < end) {
    a = round(a, v128.load(p));
    c = round(c, v128.load(p + b));
    d = round(d, v128.load(p + 2 * b));
    e = round(e, v128.load(p + 3 * b));
    f = round(f, v128.load(p + 4 * b));
    g = round(g, v128.load(p + 5 * b));
    h = round(h, v128.load(p + 6 * b));
    k = round(k, v128.load(p + 7 * b));
    p += 16;
  }
  finish4(a, c, d, e, blockSize, dst);
  finish4(f, g, h, k, blockSize, dst + 32);
}

/** Hash four consecutive blocks at `p` into `dst` (8 u32). */
// @ts-ignore: decorator
@inline function hash4(p: usize, blockSize: i32, dst: usize): void {
  const b = <usize>blockSize;
  let a = initLanes();
  let c = a;
  let d = a;
  let e = a;
  const end = p + b;
  while (p < end) {
    a = round(a, v128.load(p));
    c = round(c, v128.load(p + b));
    d = round(d, v128.load(p + 2 * b));
    e = round(e, v128.load(p + 3 * b));
    p += 16;
  }
  finish4(a, c, d, e, blockSize, dst);
}

/** 2-bit mask of which of the two 64-bit hashes in `x` and `y` differ. */
// @ts-ignore: decorator
@inline function diff2(x: v128, y: v128): u32 {
  return <u32>i64x2.bitmask(i64x2.ne(x, y));
}

// Result of `hash1`'s hi half (lo is returned).
let hi1: u32 = 0;

// @ts-ignore: decorator
@inline function hash1(p: usize, blockSize: i32): u32 {
  let a = initLanes();
  const end = p + <usize>blockSize;
  while (p < end) {
    a = round(a, v128.load(p));
    p += 16;
  }
  const a0 = <u32>i32x4.extract_lane(a, 0);
  const a1 = <u32>i32x4.extract_lane(a, 1);
  const a2 = <u32>i32x4.extract_lane(a, 2);
  const a3 = <u32>i32x4.extract_lane(a, 3);
  let h = rotl<u32>(a0, 1) + rotl<u32>(a1, 7) + rotl<u32>(a2, 12) +
    rotl<u32>(a3, 18) + <u32>blockSize;
  h ^= h >> 15;
  h *= P2;
  h ^= h >> 13;
  h *= P3;
  h ^= h >> 16;
  let g = (a0 ^ rotl<u32>(a2, 16)) + rotl<u32>(a1 ^ a3, 5) * P4 +
    <u32>blockSize * P5;
  g ^= g >> 16;
  g *= P3;
  g ^= g >> 13;
  g *= P2;
  g ^= g >> 16;
  hi1 = g;
  return h;
}

/**
 * Hash `nBlocks` blocks of `blockSize` bytes starting at `src`, writing two
 * u32 per block at `out`.
 */
export function hashBlocks(
  src: usize,
  nBlocks: i32,
  blockSize: i32,
  out: usize,
): void {
  const b = <usize>blockSize;
  let i = 0;
  for (; i + 8 <= nBlocks; i += 8) {
    hash8(src, blockSize, out);
    src += 8 * b;
    out += 64;
  }
  if (i + 4 <= nBlocks) {
    hash4(src, blockSize, out);
    src += 4 * b;
    out += 32;
    i += 4;
  }
  for (; i < nBlocks; i++) {
    const lo = hash1(src, blockSize);
    store<u32>(out, lo);
    store<u32>(out, hi1, 4);
    src += b;
    out += 8;
  }
}

/**
 * Compare-and-update scan of `nBlocks` blocks at `src` against the stored
 * hashes at `hashes` (updated in place). ORs one u32 dirty word per 32
 * blocks into `dirty` (bit i = block i changed; bits of clean blocks are
 * left as they were). Returns the number of dirty blocks.
 */
export function scanBlocks(
  src: usize,
  nBlocks: i32,
  blockSize: i32,
  hashes: usize,
  dirty: usize,
): i32 {
  const b = <usize>blockSize;
  let count = 0;
  let word: u32 = 0;
  let i = 0;
  for (; i + 8 <= nBlocks; i += 8) {
    // Keep the old hashes, overwrite them unconditionally (cheaper than a
    // branch; clean blocks store what they had), then compare.
    const o0 = v128.load(hashes);
    const o1 = v128.load(hashes, 16);
    const o2 = v128.load(hashes, 32);
    const o3 = v128.load(hashes, 48);
    hash8(src, blockSize, hashes);
    const m = diff2(o0, v128.load(hashes)) |
      (diff2(o1, v128.load(hashes, 16)) << 2) |
      (diff2(o2, v128.load(hashes, 32)) << 4) |
      (diff2(o3, v128.load(hashes, 48)) << 6);
    word |= m << <u32>(i & 31);
    if ((i & 31) == 24) {
      if (word != 0) {
        store<u32>(dirty, load<u32>(dirty) | word);
        count += popcnt<u32>(word);
        word = 0;
      }
      dirty += 4;
    }
    src += 8 * b;
    hashes += 64;
  }
  // Fewer than 8 blocks remain, so the dirty word cannot fill up here.
  if (i + 4 <= nBlocks) {
    const o0 = v128.load(hashes);
    const o1 = v128.load(hashes, 16);
    hash4(src, blockSize, hashes);
    const m = diff2(o0, v128.load(hashes)) |
      (diff2(o1, v128.load(hashes, 16)) << 2);
    word |= m << <u32>(i & 31);
    src += 4 * b;
    hashes += 32;
    i += 4;
  }
  for (; i < nBlocks; i++) {
    const lo = hash1(src, blockSize);
    const hi = hi1;
    if (lo != load<u32>(hashes) || hi != load<u32>(hashes, 4)) {
      word |= <u32>1 << <u32>(i & 31);
      store<u32>(hashes, lo);
      store<u32>(hashes, hi, 4);
    }
    src += b;
    hashes += 8;
  }
  if (word != 0) {
    store<u32>(dirty, load<u32>(dirty) | word);
    count += popcnt<u32>(word);
  }
  return count;
}
