/**
 * A seeded, deterministic workload that changes memory images the way
 * high-availability benchmarks do: hot and cold pages, sparse word writes,
 * page copies and moves, zeroing, allocation churn, content shifted inside a
 * page by a few bytes, data copied to unaligned places, and pages shared
 * between images (guests booted from the same kernel).
 * @module
 */

import type { ImageSpec } from "./encoder.ts";

const PAGE = 4096;

/** Options of {@linkcode SyntheticWorkload}. */
export interface SyntheticOptions {
  /** PRNG seed; the same seed gives the same images and mutations. Default 1. */
  seed?: number;
  /** Number of images. Default 2. */
  images?: number;
  /** Bytes per image (need not be a multiple of 4096). Default 8 MiB. */
  size?: number;
  /** Fraction of pages touched per epoch, roughly. Default 0.02. */
  dirtyFraction?: number;
}

/** mulberry32: a tiny, good-enough seeded PRNG. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** Next u32. */
  u32(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 4294967296) * n);
  }
  /** Fills bytes with random data. */
  fill(bytes: Uint8Array): void {
    for (let i = 0; i < bytes.length; i++) bytes[i] = this.u32() & 0xff;
  }
}

const WORDS = [
  "checkpoint",
  "replica",
  "epoch",
  "page",
  "buffer",
  "tuple",
  "index",
  "commit",
  "session",
  "request",
  "kernel",
  "cache",
];

/**
 * Several images and a `step()` that changes them like a running system.
 *
 * @example
 * ```ts
 * const w = new SyntheticWorkload({ seed: 7, images: 2, size: 4 << 20 });
 * w.step(); // mutate
 * w.images[0]; // current contents of image 0
 * ```
 */
export class SyntheticWorkload {
  readonly images: Uint8Array[];
  readonly specs: ImageSpec[];
  readonly rng: Rng;
  readonly dirtyFraction: number;
  /**
   * Per image, a bitmap of the pages the last {@linkcode step} wrote (bit
   * `p & 31` of word `p >>> 5`): the dirty log a hypervisor would keep.
   */
  readonly touched: Uint32Array[];
  #hot: Uint32Array[];

  constructor(options: SyntheticOptions = {}) {
    const n = options.images ?? 2;
    const size = options.size ?? 8 << 20;
    if (!Number.isInteger(n) || n < 1) {
      throw new RangeError(`synthetic images must be >= 1, got ${n}`);
    }
    if (!Number.isInteger(size) || size < 1) {
      throw new RangeError(`synthetic size must be >= 1 byte, got ${size}`);
    }
    this.rng = new Rng(options.seed ?? 1);
    this.dirtyFraction = options.dirtyFraction ?? 0.02;
    this.specs = Array.from({ length: n }, (_, i) => ({ id: `img${i}`, size }));
    this.images = this.specs.map(() => new Uint8Array(size));
    this.touched = this.specs.map(() =>
      new Uint32Array(Math.ceil(Math.ceil(size / PAGE) / 32))
    );
    // A "kernel" region common to all images, then private data.
    const shared = new Uint8Array(Math.min(size, 64 * PAGE) & ~(PAGE - 1));
    this.#fillMemoryLike(shared, 0, shared.length);
    for (const image of this.images) {
      image.set(shared);
      this.#fillMemoryLike(image, shared.length, size);
    }
    const pages = Math.ceil(size / PAGE);
    // Hot set: a fixed ~5% of pages that take most writes.
    this.#hot = this.images.map(() => {
      const hot = new Uint32Array(Math.max(1, Math.floor(pages * 0.05)));
      for (let i = 0; i < hot.length; i++) hot[i] = this.rng.int(pages);
      return hot;
    });
  }

  /** Memory-like contents: zero pages, text, pointer arrays, counters and random bytes. */
  #fillMemoryLike(image: Uint8Array, from: number, to: number): void {
    const rng = this.rng;
    const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
    for (let off = from; off < to; off += PAGE) {
      const end = Math.min(off + PAGE, to);
      const kind = rng.int(10);
      if (kind < 4) continue; // zero page
      if (kind < 6) {
        let p = off;
        while (p < end) {
          const w = WORDS[rng.int(WORDS.length)] + " ";
          for (let i = 0; i < w.length && p < end; i++) {
            image[p++] = w.charCodeAt(i);
          }
        }
      } else if (kind < 8) {
        // Pointers into a heap: high bytes shared, low bytes vary.
        const base = 0x7f00_0000 + rng.int(0x10000) * 0x1000;
        for (let p = off; p + 8 <= end; p += 8) {
          view.setUint32(p, base + rng.int(0x100000) * 16, true);
          view.setUint32(p + 4, 0x5555, true);
        }
      } else if (kind < 9) {
        for (let p = off; p + 4 <= end; p += 4) {
          view.setUint32(p, (p - off) >>> 2, true);
        }
      } else {
        rng.fill(image.subarray(off, end));
      }
    }
  }

  /** Advances every image by one epoch's worth of changes. */
  step(): void {
    this.images.forEach((image, i) => {
      this.touched[i].fill(0);
      this.#mutate(image, this.#hot[i], this.touched[i]);
    });
  }

  #mutate(image: Uint8Array, hot: Uint32Array, touched: Uint32Array): void {
    const rng = this.rng;
    const mark = (from: number, to: number) => {
      for (let p = Math.floor(from / PAGE); p * PAGE < to; p++) {
        touched[p >>> 5] |= 1 << (p & 31);
      }
    };
    const pages = Math.ceil(image.length / PAGE);
    const touches = Math.max(1, Math.round(pages * this.dirtyFraction));
    const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
    const pageEnd = (p: number) => Math.min((p + 1) * PAGE, image.length);
    for (let t = 0; t < touches; t++) {
      const r = rng.int(100);
      const page = rng.int(10) < 8 ? hot[rng.int(hot.length)] : rng.int(pages);
      const off = page * PAGE;
      const end = pageEnd(page);
      mark(off, end);
      if (r < 50) {
        // Sparse word writes: counters and pointers.
        const n = 1 + rng.int(8);
        for (let k = 0; k < n; k++) {
          const p = off + (rng.int((end - off) >>> 2) << 2);
          if (p + 4 <= end) {
            view.setUint32(p, view.getUint32(p, true) + 1 + rng.int(300), true);
          }
        }
      } else if (r < 60) {
        // Page copy from elsewhere (page cache, fork, dedup-able).
        const src = rng.int(pages - 1) * PAGE;
        image.copyWithin(off, src, src + (end - off));
      } else if (r < 65) {
        // Move: copy then free the source.
        const src = rng.int(pages - 1) * PAGE;
        image.copyWithin(off, src, src + (end - off));
        image.fill(0, src, src + PAGE);
        mark(src, src + PAGE);
      } else if (r < 72) {
        image.fill(0, off, end); // free
      } else if (r < 80) {
        // Allocation churn: a fresh object with a recognisable header.
        const len = Math.min(end - off, 256 + rng.int(3840));
        for (let p = off; p < off + len; p++) image[p] = (p * 31 + t) & 0xff;
        view.setUint32(off, 0xa110c8ed, true);
      } else if (r < 90) {
        // Compaction: content inside the page shifted by a few bytes.
        const shift = 1 + rng.int(24);
        const from = off + rng.int(1024);
        if (from + shift < end) {
          image.copyWithin(from, from + shift, end);
          image.fill(0, end - shift, end);
        }
      } else {
        // Data copied to an unaligned place (a buffer copy, a string).
        const len = 64 + rng.int(2048);
        const src = rng.int(Math.max(1, image.length - len));
        const dst = rng.int(Math.max(1, image.length - len));
        image.copyWithin(dst, src, src + len);
        mark(dst, dst + len);
      }
    }
  }
}

/** Parses a `synthetic:` source spec like `images=2,size=8M,seed=3,dirty=0.02`. */
export function parseSyntheticSpec(spec: string): SyntheticOptions {
  const options: SyntheticOptions = {};
  if (spec.trim() === "") return options;
  for (const part of spec.split(",")) {
    const [key, value] = part.split("=");
    if (value === undefined) {
      throw new RangeError(`synthetic option "${part}" must be key=value`);
    }
    const num = parseSize(value, key);
    if (key === "images") options.images = num;
    else if (key === "size") options.size = num;
    else if (key === "seed") options.seed = num;
    else if (key === "dirty") options.dirtyFraction = num;
    else {throw new RangeError(
        `unknown synthetic option "${key}", expected images, size, seed or dirty`,
      );}
  }
  return options;
}

/** Parses `123`, `4K`, `8M`, `1G` (binary units). */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMG]i?B?)?$/i.exec(text.trim());
  if (!m) {
    throw new RangeError(
      `${what}: "${text}" is not a number (units K, M, G allowed)`,
    );
  }
  const unit = (m[2] ?? "").toUpperCase()[0];
  const scale = unit === "K"
    ? 1024
    : unit === "M"
    ? 1 << 20
    : unit === "G"
    ? 1 << 30
    : 1;
  return Number(m[1]) * scale;
}
