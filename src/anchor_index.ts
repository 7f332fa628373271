/**
 * The anchor index: finds committed pages that hold some of a dirty page's
 * content at *any* 8-byte-aligned offset — objects a garbage collector moved,
 * buffers copied to new places — which the block-aligned content index
 * cannot see. Those pages join the page's LZ references (zstd prefix), where
 * byte-level matching takes the copies.
 *
 * Anchors are content-defined: every 8-byte-aligned 32-byte window is
 * fingerprinted, and the windows whose fingerprint has its low bits zero
 * (about 1 in 64) are the page's anchors. Identical content yields the same
 * anchors wherever it lies, so a lookup of the new page's anchors lands on
 * the pages the content came from. A wrong or stale hit costs only
 * compression, never correctness: references are committed pages both ends
 * hold.
 * @module
 */

const WORDS = 1024;
const UNITS = WORDS / 2;
const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

/** Options of {@linkcode AnchorIndex}. */
export interface AnchorIndexOptions {
  /** One window in `1 << sampleBits` is an anchor. Default 6 (8 anchors per 4 KiB page). */
  sampleBits?: number;
}

/**
 * Content-defined anchors → committed page (global page number).
 *
 * @example
 * ```ts
 * const anchors = new AnchorIndex(totalPages);
 * anchors.insertPage(words, 0, 7); // index page 7's contents
 * const n = anchors.candidates(newWords, 0, 7, out, 2); // pages sharing content
 * ```
 */
export class AnchorIndex {
  #keys: Uint32Array;
  #pages: Uint32Array;
  #used = 0;
  #mask: number;
  #units = new Uint32Array(UNITS);
  #found = new Uint32Array(64);
  #votes = new Uint32Array(64);

  constructor(totalPages: number, options: AnchorIndexOptions = {}) {
    const bits = options.sampleBits ?? 6;
    this.#mask = (1 << bits) - 1;
    const capacity = Math.max(
      1024,
      Math.ceil(totalPages * (UNITS >>> bits) * 1.5),
    );
    this.#keys = new Uint32Array(capacity);
    this.#pages = new Uint32Array(capacity);
  }

  /** Bytes of memory the index uses. */
  get byteLength(): number {
    return this.#keys.byteLength + this.#pages.byteLength;
  }

  /** Computes the anchors of the page at `words[off..off+1024)` into `this.#found`; returns their count. */
  #anchors(words: Uint32Array, off: number): number {
    const u = this.#units;
    for (let j = 0; j < UNITS; j++) {
      u[j] = Math.imul(words[off + 2 * j], P1) ^
        rotl(Math.imul(words[off + 2 * j + 1], P2), 15);
    }
    let n = 0;
    const mask = this.#mask;
    for (let j = 0; j + 3 < UNITS && n < 64; j++) {
      const a = u[j], b = u[j + 1], c = u[j + 2], d = u[j + 3];
      // Skip zero and repeated-word windows: they are everywhere and say nothing.
      if (a === b && b === c && c === d) continue;
      const key = fmix(a ^ rotl(b, 7) ^ rotl(c, 14) ^ rotl(d, 21));
      if ((key & mask) !== 0 || key === 0) continue;
      this.#found[n++] = key;
    }
    return n;
  }

  /** Indexes committed page `page` (global number) whose words start at `off`. */
  insertPage(words: Uint32Array, off: number, page: number): void {
    const n = this.#anchors(words, off);
    const keys = this.#keys, pages = this.#pages;
    const cap = keys.length;
    for (let i = 0; i < n; i++) {
      const key = this.#found[i];
      let s = Math.floor((key * cap) / 4294967296);
      for (let probes = 0; probes < cap; probes++) {
        if (keys[s] === 0) {
          keys[s] = key;
          pages[s] = page;
          this.#used++;
          break;
        }
        if (keys[s] === key) {
          pages[s] = page; // newest holder of this content
          break;
        }
        if (++s === cap) s = 0;
      }
    }
    if (this.#used > cap * 0.9) {
      // Stale anchors piled up: forget them all; new epochs refill the index.
      keys.fill(0);
      this.#used = 0;
    }
  }

  /**
   * Up to `max` committed pages (global numbers, most shared anchors first)
   * that hold content of the page at `words[off..]`, excluding `self`.
   * Returns how many were written to `out`.
   */
  candidates(
    words: Uint32Array,
    off: number,
    self: number,
    out: Uint32Array,
    max: number,
  ): number {
    const n = this.#anchors(words, off);
    const keys = this.#keys, pages = this.#pages;
    const cap = keys.length;
    const found = this.#found, votes = this.#votes;
    let distinct = 0;
    for (let i = 0; i < n; i++) {
      const key = found[i];
      let s = Math.floor((key * cap) / 4294967296);
      let page = -1;
      for (let probes = 0; probes < cap; probes++) {
        const k = keys[s];
        if (k === 0) break;
        if (k === key) {
          page = pages[s];
          break;
        }
        if (++s === cap) s = 0;
      }
      if (page < 0 || page === self) continue;
      // found[] is consumed in order, so the front of it can hold the distinct pages.
      let j = 0;
      while (j < distinct && found[j] !== page) j++;
      if (j === distinct) {
        found[distinct] = page;
        votes[distinct++] = 1;
      } else {
        votes[j]++;
      }
    }
    let written = 0;
    while (written < max && distinct > 0) {
      let best = 0;
      for (let j = 1; j < distinct; j++) if (votes[j] > votes[best]) best = j;
      out[written++] = found[best];
      found[best] = found[distinct - 1];
      votes[best] = votes[distinct - 1];
      distinct--;
    }
    return written;
  }
}
