/**
 * Bad-input fuzzing of everything that decodes bytes from a peer or a
 * client: the frame decoder, the epoch decoder, control messages, the
 * handshake (a real backup and a real relay behind `memory:`), the
 * length-prefixed stream parser of tcp/tls/quic, the peer-certificate check
 * and the HTTP control API.
 *
 * Every case starts from VALID input made by the real encoders (epochs of a
 * seeded workload, control messages, base syncs, requests) and breaks it:
 * bit and byte flips, truncation, junk appended, oversized length and size
 * fields, fields of the wrong type (with checksums recomputed so the damage
 * reaches past the first check), a sized image's committed length (in a
 * COMMIT, a STATE, a BASE_END) changed to another one that only the digest
 * can tell, or to one past the size or of the wrong type, splices from
 * another lineage, and dropped, duplicated and reordered messages. Each
 * case checks that:
 *
 * - nothing escapes but the module's own error (`FrameError`,
 *   `ProtocolError`, `DecodeError`, `TransportError`, an ERROR message, a
 *   4xx): a `TypeError` or `RangeError` escaping is a crash;
 * - every rejection says what was wrong (not an engine message such as
 *   "Cannot read properties of undefined");
 * - nothing hangs (async steps have deadlines; {@linkcode runFuzzIsolated}
 *   also watches synchronous code from outside, in a worker);
 * - after a rejected input the receiver's images (bytes, block hashes,
 *   lengths, digests, and a backup's store) are exactly what they were, and
 *   valid input sent afterwards is still accepted; an accepted epoch leaves
 *   each image with the length and digest its COMMIT names, and the store
 *   with the replica's.
 *
 * Cases are numbered per target and derive all their randomness from
 * `(seed, target, index)`, so any one of them can be rerun alone
 * (`tools/fuzz.ts --seed S --target T --case I`).
 * @module
 */

import { Packr } from "msgpackr/pack";
import { Unpackr } from "msgpackr/unpack";
import { EpochEncoder, type ImageSpec } from "../src/encoder.ts";
import {
  type AppliedEpoch,
  DecodeError,
  EpochDecoder,
} from "../src/decoder.ts";
import {
  decodeFrame,
  FRAME_VERSION,
  FrameError,
  FrameType,
} from "../src/frame.ts";
import { xxh32 } from "../src/checksum.ts";
import {
  AckLevel,
  type ControlMessage,
  decodeControl,
  encodeControl,
  type ImageDigestInfo,
  type Proof,
  ProtocolError,
} from "../src/protocol.ts";
import { createZstd, type Zstd } from "../src/compress/zstd.ts";
import { createLzma, type Lzma } from "../src/compress/lzma.ts";

/** LZMA2 for reading max frames' op streams, opened on first use. */
let fuzzLzma: Lzma | undefined;
import { digestOf } from "../src/base_sync.ts";
import { bindLength } from "../src/digest.ts";
import { Backup } from "../src/backup.ts";
import { Relay } from "../src/relay.ts";
import { Primary } from "../src/primary.ts";
import { PeerAuth } from "../src/peer_auth.ts";
import { makeDevCerts } from "../src/_dev_certs.ts";
import {
  FUZZ_CA,
  FUZZ_CHALLENGE,
  FUZZ_CHECK_TIME,
  FUZZ_PROOF,
  STRANGER_PROOF,
} from "./_fuzz_certs.ts";
import { createControlApp } from "../src/control_plane.ts";
import { imageDigestInfo, type UpstreamServer } from "../src/_upstream.ts";
import { openSource } from "../src/open_source.ts";
import { parseAckLevel, parseAckWho } from "../src/ack_policy.ts";
import { parseLevel } from "../src/level.ts";
import { TransportError } from "../src/transport.ts";
import { memoryTransport } from "../transports/memory.ts";
import { tcpTransport } from "../transports/tcp.ts";
import {
  type ByteDuplex,
  LengthPrefixedConnection,
} from "../transports/_length_prefixed.ts";

// ---------------------------------------------------------------------------
// Randomness: xorshift128, seeded through splitmix32. No dependencies, and
// the same numbers on every platform.

/** A seeded, deterministic PRNG (xorshift128). */
export class FuzzRng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(seed: number) {
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#a = next();
    this.#b = next();
    this.#c = next();
    this.#d = next() | 1; // never all zero
  }

  /** The next unsigned 32-bit integer. */
  u32(): number {
    let t = this.#d;
    const s = this.#a;
    this.#d = this.#c;
    this.#c = this.#b;
    this.#b = s;
    t ^= t << 11;
    t ^= t >>> 8;
    this.#a = (t ^ s ^ (s >>> 19)) >>> 0;
    return this.#a;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 4294967296) * n);
  }

  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.u32() < p * 4294967296;
  }

  /** One element of `items`. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  /** One of `items`, each with its weight. */
  weighted<T>(items: readonly (readonly [number, T])[]): T {
    let total = 0;
    for (const [w] of items) total += w;
    let r = this.u32() / 4294967296 * total;
    for (const [w, item] of items) {
      if ((r -= w) < 0) return item;
    }
    return items[items.length - 1][1];
  }

  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}

/** The seed of case `index` of `target` in a run seeded with `seed`. */
export function caseSeed(seed: number, target: string, index: number): number {
  let h = 0x811c9dc5 ^ (seed >>> 0);
  for (let i = 0; i < target.length; i++) {
    h = Math.imul(h ^ target.charCodeAt(i), 0x01000193);
  }
  h = Math.imul(h ^ (index >>> 0), 0x9e3779b1);
  h = Math.imul(h ^ Math.floor(index / 4294967296), 0x85ebca6b);
  return (h ^ (h >>> 15)) >>> 0;
}

// ---------------------------------------------------------------------------
// Mutations of raw bytes.

/** Bytes that mean something to msgpack, varints or lengths. */
const INTERESTING_BYTES = [
  0x00,
  0x01,
  0x02,
  0x03,
  0x05,
  0x06,
  0x7f,
  0x80,
  0xff,
  0xc0, // nil
  0xc1, // never used
  0xc2, // false
  0xc3, // true
  0xc4, // bin8
  0xc6, // bin32
  0xc7, // ext8
  0xca, // float32
  0xcb, // float64
  0xcc, // uint8
  0xce, // uint32
  0xcf, // uint64
  0xd0, // int8
  0xd3, // int64
  0xd4, // fixext1
  0xd9, // str8
  0xdb, // str32
  0xdc, // array16
  0xdd, // array32
  0xde, // map16
  0xdf, // map32
  0x90, // fixarray 0
  0x9f, // fixarray 15
  0x8f, // fixmap 15
  0xa0, // fixstr 0
  0xbf, // fixstr 31
  0xe0, // negative fixint -32
];

/** 32-bit values that are lengths, limits and sizes, or just past them. */
const INTERESTING_U32 = [
  0,
  1,
  3,
  4,
  0x7f,
  0x80,
  0xff,
  0x100,
  0xfff,
  0x1000,
  0x1001,
  0xffff,
  0x10000,
  0x10001,
  0x100000,
  0x100001,
  0x10000000,
  0x10000001,
  0x7fffffff,
  0x80000000,
  0xfffffffe,
  0xffffffff,
];

/** One byte-level damage. `pool` supplies other inputs to splice from. */
export function mutateBytes(
  rng: FuzzRng,
  input: Uint8Array,
  pool: readonly Uint8Array[] = [],
): { bytes: Uint8Array; op: string } {
  const n = input.length;
  const op = n === 0 ? "extend" : rng.weighted(
    [
      [6, "bitflip"],
      [4, "byte"],
      [4, "interesting"],
      [3, "u32"],
      [2, "insert"],
      [2, "delete"],
      [3, "truncate"],
      [2, "extend"],
      [1, "dup"],
      [2, "splice"],
      [1, "zero"],
      [1, "swap"],
    ] as const,
  );
  const copy = () => input.slice();
  switch (op) {
    case "bitflip": {
      const out = copy();
      for (let k = rng.range(1, 4); k > 0; k--) {
        out[rng.int(n)] ^= 1 << rng.int(8);
      }
      return { bytes: out, op };
    }
    case "byte": {
      const out = copy();
      for (let k = rng.range(1, 3); k > 0; k--) {
        out[rng.int(n)] = rng.int(256);
      }
      return { bytes: out, op };
    }
    case "interesting": {
      const out = copy();
      out[rng.int(n)] = rng.pick(INTERESTING_BYTES);
      return { bytes: out, op };
    }
    case "u32": {
      const out = copy();
      const v = rng.pick(INTERESTING_U32);
      const width = rng.pick([1, 2, 4, 4]);
      const at = rng.int(Math.max(1, n - width + 1));
      for (let i = 0; i < width && at + i < n; i++) {
        out[at + i] = (v >>> (8 * (width - 1 - i))) & 0xff;
      }
      return { bytes: out, op: `u32 ${v}` };
    }
    case "insert": {
      const at = rng.int(n + 1);
      const junk = rng.bytes(rng.range(1, 16));
      const out = new Uint8Array(n + junk.length);
      out.set(input.subarray(0, at));
      out.set(junk, at);
      out.set(input.subarray(at), at + junk.length);
      return { bytes: out, op };
    }
    case "delete": {
      const at = rng.int(n);
      const len = Math.min(n - at, rng.range(1, 16));
      const out = new Uint8Array(n - len);
      out.set(input.subarray(0, at));
      out.set(input.subarray(at + len), at);
      return { bytes: out, op };
    }
    case "truncate":
      return { bytes: input.slice(0, rng.int(n)), op };
    case "extend": {
      const junk = rng.chance(0.05)
        ? rng.bytes(rng.range(1, 8192))
        : rng.bytes(rng.range(1, 64));
      const out = new Uint8Array(n + junk.length);
      out.set(input);
      out.set(junk, n);
      return { bytes: out, op };
    }
    case "dup": {
      const at = rng.int(n);
      const len = Math.min(n - at, rng.range(1, 64));
      const out = new Uint8Array(n + len);
      out.set(input.subarray(0, at + len));
      out.set(input.subarray(at, at + len), at + len);
      out.set(input.subarray(at + len), at + 2 * len);
      return { bytes: out, op };
    }
    case "splice": {
      const other = pool.length ? rng.pick(pool) : rng.bytes(32);
      const head = rng.int(n + 1), tail = rng.int(other.length + 1);
      const out = new Uint8Array(head + other.length - tail);
      out.set(input.subarray(0, head));
      out.set(other.subarray(tail), head);
      return { bytes: out, op };
    }
    case "zero": {
      const out = copy();
      const at = rng.int(n);
      out.fill(0, at, at + rng.range(1, 32));
      return { bytes: out, op };
    }
    case "swap": {
      const out = copy();
      const len = rng.range(1, Math.max(1, n >> 2));
      const a = rng.int(Math.max(1, n - len)),
        b = rng.int(Math.max(1, n - len));
      const x = input.slice(a, a + len);
      out.copyWithin(a, b, b + len);
      out.set(x.subarray(0, Math.min(len, n - b)), b);
      return { bytes: out, op };
    }
  }
}

/** Applies 1 to `max` byte-level damages. */
function damage(
  rng: FuzzRng,
  input: Uint8Array,
  pool: readonly Uint8Array[] = [],
  max = 3,
): { bytes: Uint8Array; op: string } {
  let bytes = input;
  const ops: string[] = [];
  for (let k = rng.range(1, max); k > 0; k--) {
    const m = mutateBytes(rng, bytes, pool);
    bytes = m.bytes;
    ops.push(m.op);
  }
  return { bytes, op: ops.join("+") };
}

// ---------------------------------------------------------------------------
// Mutations of msgpack structure: decode, damage one value, encode again.

const packr = new Packr({ useRecords: false, variableMapSize: true });
const unpackr = new Unpackr({ useRecords: false });

/** msgpack bytes of `value`, as a plain (copied) Uint8Array. */
export function pack(value: unknown): Uint8Array {
  const b = packr.pack(value);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength).slice();
}

/** The value `bytes` hold, or `undefined` if they are not msgpack. */
function unpack(bytes: Uint8Array): unknown {
  try {
    return unpackr.unpack(bytes);
  } catch {
    return undefined;
  }
}

/** Map keys worth adding: field names of every message, and prototype traps. */
const KEYS = [
  "type",
  "epoch",
  "images",
  "token",
  "level",
  "message",
  "base",
  "slot",
  "chunk",
  "pages",
  "ops",
  "opsSize",
  "opsCodec",
  "lz",
  "lzSize",
  "lzCodec",
  "size",
  "id",
  "digestLo",
  "digestHi",
  "data",
  "offset",
  "durable",
  "blockSize",
  "pageSize",
  "auth",
  "__proto__",
  "constructor",
  "toString",
  "length",
];

/** Values a careless check lets through. */
function weirdValue(rng: FuzzRng): unknown {
  switch (rng.int(14)) {
    case 0:
      return rng.pick([-1, -2147483648, -0.5, -0]);
    case 1:
      return rng.pick([
        2 ** 31,
        2 ** 32,
        2 ** 32 + 1,
        2 ** 40,
        2 ** 53 - 1,
        2 ** 53 + 2,
        2 ** 64,
        1e308,
      ]);
    case 2:
      return rng.pick([0.5, 1.5, 4096.5, NaN, Infinity, -Infinity]);
    case 3:
      return rng.pick([0, 1, 2, 3, 4095, 4096, 4097, 65536, 1 << 20]);
    case 4:
      return rng.pick(["", "x", "é", "\u0000", "../x", "PWR", "PWC", "img0"]);
    case 5:
      return "a".repeat(rng.pick([255, 256, 300, 70000]));
    case 6:
      return rng.pick([true, false, null, undefined]);
    case 7:
      return rng.pick([[], [1, 2], [[]], ["x"]]);
    case 8:
      return rng.pick([{}, { a: 1 }, { id: "img0", size: 1 }]);
    case 9:
      return rng.bytes(rng.pick([0, 1, 16, 100, 5000]));
    case 10:
      return rng.pick([-1n, 123456789012345678n, 0n]);
    case 11:
      return rng.u32();
    case 12:
      return rng.int(64);
    default:
      return new Date(rng.pick([0, 8.64e15, -1]));
  }
}

/** `v` if it is a number, else 0 (damaged fields may hold anything). */
function num(v: unknown): number {
  return typeof v === "number" ? v : 0;
}

/** A value near `v`: an off-by-one, a flipped flag, a damaged string or binary. */
function nearValue(rng: FuzzRng, v: unknown): unknown {
  if (typeof v === "number") {
    return rng.pick([v + 1, v - 1, v * 2, -v, v + 2 ** 32, v / 2, v ^ 1]);
  }
  if (typeof v === "boolean") return !v;
  if (typeof v === "string") {
    if (v.length === 0) return "x";
    const i = rng.int(v.length);
    return rng.pick([
      v.slice(0, i),
      v + v,
      v.slice(0, i) + String.fromCharCode(v.charCodeAt(i) ^ 1) +
      v.slice(i + 1),
      v.toUpperCase(),
    ]);
  }
  if (v instanceof Uint8Array) return mutateBytes(rng, v).bytes;
  return weirdValue(rng);
}

type Container = unknown[] | Record<string, unknown>;
interface ValueNode {
  parent: Container | null;
  key: string | number;
  value: unknown;
}

function nodesOf(root: unknown, limit = 200): ValueNode[] {
  const out: ValueNode[] = [{ parent: null, key: 0, value: root }];
  for (let i = 0; i < out.length && out.length < limit; i++) {
    const v = out[i].value;
    if (Array.isArray(v)) {
      v.forEach((x, k) => out.push({ parent: v, key: k, value: x }));
    } else if (isPlainObject(v)) {
      for (const [k, x] of Object.entries(v)) {
        out.push({ parent: v, key: k, value: x });
      }
    }
  }
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) &&
    !(v instanceof Uint8Array) && !(v instanceof Date);
}

/** Options of {@linkcode mutateValue}. */
export interface ValueMutationOptions {
  /** Whether a map may gain a "type" key (see KNOWN_ISSUES: control-type-override). */
  typeKey?: boolean;
}

/**
 * Damages one value somewhere inside `root` (mutating it) and returns the
 * new root: replaced by a weird or a near value, deleted, a key added, an
 * array grown or shrunk, a value wrapped in an array.
 */
export function mutateValue(
  rng: FuzzRng,
  root: unknown,
  options: ValueMutationOptions = {},
): { value: unknown; op: string } {
  const nodes = nodesOf(root);
  const node = nodes.length > 1 && rng.chance(0.9)
    ? nodes[1 + rng.int(nodes.length - 1)]
    : nodes[0];
  const set = (value: unknown): unknown => {
    if (node.parent === null) return value;
    (node.parent as Record<string | number, unknown>)[node.key] = value;
    return root;
  };
  const op = rng.weighted(
    [
      [5, "weird"],
      [5, "near"],
      [2, "delete"],
      [2, "addKey"],
      [1, "grow"],
      [1, "wrap"],
    ] as const,
  );
  const where = String(node.key);
  switch (op) {
    case "weird":
      return { value: set(weirdValue(rng)), op: `${where}=weird` };
    case "near":
      return { value: set(nearValue(rng, node.value)), op: `${where}=near` };
    case "delete":
      if (Array.isArray(node.parent)) {
        node.parent.splice(node.key as number, 1);
        return { value: root, op: `${where} deleted` };
      }
      if (node.parent) {
        delete (node.parent as Record<string, unknown>)[node.key as string];
        return { value: root, op: `${where} deleted` };
      }
      return { value: set(undefined), op: "root deleted" };
    case "addKey": {
      const target = nodes.filter((n) => isPlainObject(n.value));
      if (target.length === 0) {
        return { value: set(weirdValue(rng)), op: `${where}=weird` };
      }
      const map = rng.pick(target).value as Record<string, unknown>;
      let key = rng.pick(KEYS);
      if (key === "type" && options.typeKey === false) key = "extra";
      const value = key === "type"
        ? rng.pick([
          "hello",
          "state",
          "base",
          "base_end",
          "ack",
          "error",
          "challenge",
          "proof",
          "rejoin",
          "region_query",
          "region_digests",
          3,
        ])
        : rng.chance(0.5)
        ? weirdValue(rng)
        : rng.u32() % 100;
      Object.defineProperty(map, key, {
        value,
        enumerable: true,
        writable: true,
        configurable: true,
      });
      return { value: root, op: `+${key}` };
    }
    case "grow": {
      const arrays = nodes.filter((n) => Array.isArray(n.value));
      if (arrays.length === 0) {
        return { value: set([node.value]), op: `${where} wrapped` };
      }
      const a = rng.pick(arrays).value as unknown[];
      if (rng.chance(0.5) && a.length) {
        a.pop();
        return { value: root, op: "array popped" };
      }
      a.push(a.length ? structuredCloneish(rng.pick(a)) : weirdValue(rng));
      return { value: root, op: "array grown" };
    }
    case "wrap":
      return { value: set([node.value]), op: `${where} wrapped` };
  }
}

function structuredCloneish(v: unknown): unknown {
  if (v instanceof Uint8Array) return v.slice();
  if (Array.isArray(v)) return v.map(structuredCloneish);
  if (isPlainObject(v)) {
    return Object.fromEntries(
      Object.entries(v).map(([k, x]) => [k, structuredCloneish(x)]),
    );
  }
  return v;
}

// ---------------------------------------------------------------------------
// Frames: structure-aware damage with the checksum recomputed, so the
// damage gets past the checksum to the checks behind it.

/** Mirror of frame.ts `seedOf` (checked against real frames at startup). */
function frameChecksumSeed(epoch: number, type: number, flags: number): number {
  return (Math.imul(epoch >>> 0, 0x9e3779b1) ^ (type << 8) ^ flags ^
    Math.floor(epoch / 4294967296)) >>> 0;
}

/** Re-packs a frame's outer array, with a checksum that matches its body if it can. */
function packFrame(outer: unknown, fixChecksum: boolean): Uint8Array {
  if (
    fixChecksum && Array.isArray(outer) && outer.length >= 8 &&
    typeof outer[2] === "number" && typeof outer[3] === "number" &&
    typeof outer[4] === "number" && outer[6] instanceof Uint8Array
  ) {
    outer[7] = xxh32(
      outer[6],
      frameChecksumSeed(outer[4], outer[3], outer[2]),
    );
  }
  return pack(outer);
}

/** A frame's outer array and body map, or null if `frame` is not shaped like one (damaged already). */
function frameParts(
  frame: Uint8Array,
): { outer: unknown[]; body: Record<string, unknown> } | null {
  const outer = unpack(frame);
  if (
    !Array.isArray(outer) || outer.length !== 8 ||
    !(outer[6] instanceof Uint8Array)
  ) return null;
  const body = unpack(outer[6]);
  return isPlainObject(body) ? { outer, body } : null;
}

/** Damages the frame's header fields (magic, version, flags, type, epoch, image id, checksum). */
function mutateFrameOuter(
  rng: FuzzRng,
  frame: Uint8Array,
  options: ValueMutationOptions,
): { bytes: Uint8Array; op: string } {
  const parts = frameParts(frame);
  if (!parts) return mutateBytes(rng, frame);
  const outer = parts.outer;
  const fix = rng.chance(0.8);
  const field = rng.int(9);
  let op: string;
  if (field < 8 && rng.chance(0.7)) {
    const names = [
      "magic",
      "version",
      "flags",
      "type",
      "epoch",
      "imageId",
      "body",
      "checksum",
    ];
    const v = outer[field];
    const choices: unknown[] = field === 0
      ? ["PWC", "pwr", "", "PWRX", 0x505752]
      : field === 1
      ? [1, 3, 0, "2", 2.5]
      : field === 2
      ? [1, 2, 3, 4, 255, -1, 0.5]
      : field === 3
      ? [0, 1, 2, 3, 255, "1"]
      : field === 4
      ? [0, num(v) + 1, num(v) - 1, 2 ** 32 + num(v)]
      : field === 5
      ? ["", "img0", "vm-1.mem", "nope", 7]
      : field === 6
      ? [new Uint8Array(0), mutateBytes(rng, v as Uint8Array).bytes]
      : [0, 2 ** 32, -1, "x"];
    outer[field] = rng.chance(0.8) ? rng.pick(choices) : weirdValue(rng);
    op = `${names[field]}=${String(outer[field]).slice(0, 12)}`;
  } else {
    const m = mutateValue(rng, outer, options);
    return { bytes: packFrame(m.value, fix), op: `outer ${m.op}` };
  }
  return {
    bytes: packFrame(outer, fix),
    op: `${op}${fix ? "" : " (old sum)"}`,
  };
}

/** Damages the frame's body map (PATCH or COMMIT fields); the checksum is recomputed. */
function mutateFrameBody(
  rng: FuzzRng,
  frame: Uint8Array,
  options: ValueMutationOptions,
): { bytes: Uint8Array; op: string } {
  const parts = frameParts(frame);
  if (!parts) return mutateBytes(rng, frame);
  const { outer, body } = parts;
  let op: string;
  if (outer[3] === FrameType.PATCH && rng.chance(0.6)) {
    const field = rng.pick(
      [
        "base",
        "slot",
        "chunk",
        "pages",
        "opsSize",
        "opsCodec",
        "ops",
        "lz",
        "lzSize",
        "lzCodec",
      ] as const,
    );
    const v = body[field];
    const sizes = [0, 1, 4096, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53 - 1];
    const choices: unknown[] = field === "ops" || field === "lz"
      ? [
        v instanceof Uint8Array ? mutateBytes(rng, v).bytes : rng.bytes(8),
        new Uint8Array(0),
        undefined,
      ]
      : field === "opsCodec" || field === "lzCodec"
      ? [0, 1, 2, 3, undefined]
      : field === "opsSize" || field === "lzSize"
      ? [...sizes, (Number(v) || 0) + 1, (Number(v) || 0) - 1]
      : [0, 1, 2, (Number(v) || 0) + 1, (Number(v) || 0) - 1, 2 ** 32];
    body[field] = rng.chance(0.85) ? rng.pick(choices) : weirdValue(rng);
    op = `patch.${field}`;
  } else if (outer[3] === FrameType.COMMIT && rng.chance(0.6)) {
    const list = Array.isArray(body.images) ? body.images as unknown[] : [];
    const images = list.filter(isPlainObject);
    const what = rng.int(8);
    if (what >= 6) {
      // The length in use: only the digest tells a wrong one within the size.
      return {
        bytes: withBody(outer, body, true),
        op: `commit.image.length ${damageLength(rng, list) ?? "(no images)"}`,
      };
    } else if (what === 0) {
      const f = rng.pick(["base", "pageSize", "blockSize"] as const);
      body[f] = rng.pick([0, 1, 32, 128, 4095, 8192, num(body[f]) + 1]);
      op = `commit.${f}`;
    } else if (what === 1 && list.length) {
      list.splice(rng.int(list.length), 1);
      op = "commit image dropped";
    } else if (what === 2 && list.length) {
      list.push(structuredCloneish(rng.pick(list)));
      op = "commit image duplicated";
    } else if (what === 3 && list.length > 1) {
      list.reverse();
      op = "commit images reversed";
    } else if (images.length) {
      const image = rng.pick(images);
      const f = rng.pick(
        ["id", "size", "chunks", "digestLo", "digestHi"] as const,
      );
      image[f] = f === "id"
        ? rng.pick(["", "img0", "vm-1.mem", "..", "other", "IMG0"])
        : f === "size"
        ? rng.pick([0, 1, 4096, num(image.size) + 1, 2 ** 40])
        : f === "chunks"
        ? rng.pick([0, 1, 2, 3, num(image.chunks) + 1])
        : (num(image[f]) ^ (1 << rng.int(32))) >>> 0;
      op = `commit.image.${f}`;
    } else {
      op = "commit (no images)";
    }
  } else {
    const m = mutateValue(rng, body, options);
    return {
      bytes: withBody(outer, m.value, true),
      op: `body ${m.op}`,
    };
  }
  return { bytes: withBody(outer, body, rng.chance(0.95)), op };
}

/**
 * Damages the `length` of one image entry (mostly the sized image's) in
 * `list`, the images of a COMMIT body, STATE or BASE_END, in place: another
 * length within the size (well-formed, saying the wrong thing: only the
 * digest can tell), the same with the digest rebound to it (a consistent
 * checkpoint of another length, to be taken whole), removed, added where
 * there was none, or past the size, negative, a float, a string, a bigint,
 * another type. Returns what it did, or null if `list` has no entries.
 */
function damageLength(rng: FuzzRng, list: unknown[]): string | null {
  const entries = list.filter(isPlainObject);
  if (entries.length === 0) return null;
  const image = isPlainObject(list[SIZED_SLOT]) && rng.chance(0.7)
    ? list[SIZED_SLOT] as Record<string, unknown>
    : rng.pick(entries);
  const size = num(image.size);
  const had = image.length !== undefined;
  const was = typeof image.length === "number" ? image.length : size;
  const kind = rng.weighted(
    [
      [6, "within"],
      [3, "rebound"],
      [had ? 1 : 0, "removed"],
      [2, "past"],
      [1, "negative"],
      [1, "float"],
      [1, "string"],
      [1, "bigint"],
      [1, "other"],
    ] as const,
  );
  let value: unknown;
  switch (kind) {
    case "removed":
      delete image.length;
      return `of "${image.id}" (${was}) removed`;
    case "within":
    case "rebound": {
      const choices = [
        0,
        1,
        size,
        size - 1,
        was + 1,
        was - 1,
        was ^ 1,
        was + 4096,
        was - 4096,
        rng.int(size + 1),
      ].filter((v) => v >= 0 && v <= size && v !== was);
      value = choices.length ? rng.pick(choices) : 0;
      if (
        kind === "rebound" && typeof image.digestLo === "number" &&
        typeof image.digestHi === "number"
      ) {
        // bindLength XORs a mask of the length: it undoes itself.
        const raw = bindLength(image.digestLo, image.digestHi, size, was);
        const d = bindLength(raw.lo, raw.hi, size, value as number);
        image.digestLo = d.lo;
        image.digestHi = d.hi;
        if (value === size && rng.chance(0.5)) {
          delete image.length;
          return `of "${image.id}" ${was} → whole, digest rebound`;
        }
      }
      break;
    }
    case "past":
      value = rng.pick([
        size + 1,
        size + 4096,
        2 ** 32,
        2 ** 32 + was,
        2 ** 53 - 1,
        2 ** 53 + 2,
        2 ** 64,
        Infinity,
      ]);
      break;
    case "negative":
      value = rng.pick([-1, -size, -(2 ** 32), -(2 ** 53), -Infinity]);
      break;
    case "float":
      value = rng.pick([was + 0.5, 0.5, size - 0.25, 1e-9, NaN]);
      break;
    case "string":
      value = rng.pick([String(was), "", "0x10", "length"]);
      break;
    case "bigint":
      value = rng.pick([
        // An earlier damage of the same case may have left NaN or Infinity.
        BigInt(Number.isFinite(was) ? Math.max(0, Math.floor(was)) : 0),
        0n,
        -1n,
        BigInt(size) + 1n,
        2n ** 64n - 1n,
      ]);
      break;
    case "other":
      value = rng.pick([null, true, [], [was], {}, new Uint8Array(4)]);
      break;
  }
  image.length = value;
  const shown = typeof value === "bigint"
    ? `${value}n`
    : typeof value === "string"
    ? JSON.stringify(value)
    : value instanceof Uint8Array
    ? "binary"
    : Array.isArray(value)
    ? `[${value}]`
    : String(value);
  return `of "${image.id}" ${had ? was : "(none)"} → ${shown}${
    kind === "rebound" ? ", digest rebound" : ` (${kind})`
  }`;
}

/**
 * A COMMIT frame with an image's `length` damaged (see
 * {@linkcode damageLength}), its checksum recomputed; null if `frame` is not
 * a COMMIT (or no longer shaped like a frame).
 */
function mutateCommitLength(
  rng: FuzzRng,
  frame: Uint8Array,
): { bytes: Uint8Array; op: string } | null {
  const parts = frameParts(frame);
  if (
    !parts || parts.outer[3] !== FrameType.COMMIT ||
    !Array.isArray(parts.body.images)
  ) return null;
  const what = damageLength(rng, parts.body.images);
  if (what === null) return null;
  return {
    bytes: withBody(parts.outer, parts.body, true),
    op: `commit.image.length ${what}`,
  };
}

/**
 * A control message with an image's `length` damaged (see
 * {@linkcode damageLength}): in a STATE's or BASE_END's images, or added to
 * a HELLO's (which name no lengths). Null if `bytes` has no images.
 */
function mutateControlLength(
  rng: FuzzRng,
  bytes: Uint8Array,
): { bytes: Uint8Array; op: string } | null {
  const outer = unpack(bytes);
  if (!Array.isArray(outer) || !isPlainObject(outer[3])) return null;
  const images = outer[3].images;
  if (!Array.isArray(images)) return null;
  const what = damageLength(rng, images);
  if (what === null) return null;
  return { bytes: pack(outer), op: `images.length ${what}` };
}

/**
 * A frame with its header (`outer`: the 8-element array) and/or its body map
 * edited, and its checksum recomputed: a well-formed frame saying something
 * else.
 */
export function editFrame(
  frame: Uint8Array,
  edit: {
    outer?: (outer: unknown[]) => void;
    body?: (body: Record<string, unknown>) => void;
  },
): Uint8Array {
  const parts = frameParts(frame);
  if (!parts) throw new TypeError("editFrame: not a frame");
  edit.body?.(parts.body);
  parts.outer[6] = pack(parts.body);
  edit.outer?.(parts.outer);
  return packFrame(parts.outer, true);
}

function withBody(outer: unknown[], body: unknown, fix: boolean): Uint8Array {
  outer[6] = pack(body);
  return packFrame(outer, fix);
}

/** LEB128 of `v` (up to 2^53). */
function uvarint(v: number): number[] {
  const out: number[] = [];
  while (v >= 0x80) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

/** A plausible but wrong op (see patch.ts grammar). */
function opSnippet(rng: FuzzRng): number[] {
  const delta = rng.pick([
    [0],
    [1],
    uvarint(rng.int(12)),
    uvarint(2 ** 31),
    uvarint(2 ** 53 - 1),
    [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
  ]);
  const slot = () => rng.pick([[0], [1], [2], uvarint(300)]);
  const page = () => rng.pick([[0], [4], [5], [7], [8], [9], uvarint(2 ** 40)]);
  const ref = () =>
    rng.pick([[0], [2], [1, ...slot(), ...page()], [3, ...slot(), ...page()], [
      9,
    ]]);
  switch (rng.int(8)) {
    case 0:
      return [0, ...delta];
    case 1:
      return [1, ...delta, ...ref()];
    case 2:
      return [
        2,
        ...delta,
        ...ref(),
        ...uvarint(rng.pick([0, 1, 5, 4096])),
        0x01,
      ];
    case 3:
      return [
        3,
        ...delta,
        ...Array.from({ length: 8 }, () => rng.pick([0, 1, 0x80, 0xff])),
        rng.pick([0, 1, 2]),
        ...slot(),
        ...page(),
      ];
    case 4:
      return [4, ...delta, ...rng.bytes(rng.pick([0, 10, 4096]))];
    case 5:
      return [
        5,
        ...delta,
        ...ref(),
        rng.pick([0, 1, 255]),
        ...slot(),
        ...page(),
      ];
    default:
      return [rng.range(6, 255), ...delta];
  }
}

/**
 * Damages a PATCH frame's op stream itself (decompressed, damaged, stored raw
 * or compressed again with matching sizes), so the op parser sees it.
 */
function mutatePatchOps(
  rng: FuzzRng,
  frame: Uint8Array,
  zstd: Zstd,
): { bytes: Uint8Array; op: string } {
  const parts = frameParts(frame);
  if (!parts || !(parts.body.ops instanceof Uint8Array)) {
    return mutateBytes(rng, frame);
  }
  const { outer, body } = parts;
  let ops = body.ops as Uint8Array;
  if (body.opsCodec === 1 || body.opsCodec === 2) {
    try {
      ops = body.opsCodec === 1
        ? zstd.decompress(ops, body.opsSize as number)
        : (fuzzLzma ??= createLzma()).decompress(ops, body.opsSize as number);
    } catch {
      ops = new Uint8Array(0);
    }
  }
  let op: string;
  if (rng.chance(0.5)) {
    const m = damage(rng, ops, [], 2);
    ops = m.bytes;
    op = `ops ${m.op}`;
  } else {
    const snippet = new Uint8Array(opSnippet(rng));
    const at = rng.chance(0.5) ? ops.length : 0;
    const out = new Uint8Array(ops.length + snippet.length);
    out.set(ops.subarray(0, at));
    out.set(snippet, at);
    out.set(ops.subarray(at), at + snippet.length);
    ops = out;
    op = `ops +op ${snippet[0]}`;
    if (rng.chance(0.7)) body.pages = num(body.pages) + 1;
  }
  const codec = rng.weighted([[6, 0], [3, 1], [1, -1]] as const);
  if (codec === 1 && ops.length > 0) {
    body.ops = zstd.compress(ops, { level: 1 });
    body.opsCodec = 1;
    body.opsSize = ops.length;
  } else {
    body.ops = ops;
    body.opsCodec = 0;
    body.opsSize = codec === -1 ? ops.length + rng.pick([1, -1]) : ops.length;
  }
  return { bytes: withBody(outer, body, true), op };
}

// ---------------------------------------------------------------------------
// The corpus: valid epochs of a small seeded workload, encoded by the real
// encoder at both levels, plus an unrelated lineage to splice from.

/**
 * The images every corpus epoch is for: odd sizes, a short last page, and a
 * sized image (a guest's device state: its length in use changes per epoch
 * and is committed with it; the bytes past it are zeros).
 */
export const FUZZ_SPECS: readonly ImageSpec[] = [
  { id: "img0", size: 5 * 4096 + 77 },
  { id: "vm-1.mem", size: 8 * 4096 },
  { id: "vm-1.state", size: 4 * 4096 + 100, sized: true },
];
/** The slot of the sized image in {@linkcode FUZZ_SPECS}. */
export const SIZED_SLOT = 2;
/** Epochs per chain. */
export const CHAIN_EPOCHS = 24;
/** Token the fuzzed backup and relay require. */
export const FUZZ_TOKEN = "fuzz-token";

/** What a receiver holds at one epoch of a chain. */
export interface ChainState {
  epoch: number;
  /** Per image: committed bytes, padded to whole pages (as `ImageState.committed`). */
  committed: Uint8Array[];
  /** Per image: the contents (unpadded views of `committed`). */
  contents: Uint8Array[];
  /** Per image: the length in use (its size, but for a sized image). */
  lengths: number[];
  hashes: Uint32Array[];
  /** As a STATE or BASE_END names them (with `length` where it is not the size). */
  info: ImageDigestInfo[];
}

/** Epochs of one workload encoded at one level: `frames[e]` takes a receiver from epoch e-1 to e. */
export interface Chain {
  name: string;
  frames: Uint8Array[][];
  states: ChainState[];
}

/** Everything the targets build their cases from. */
export interface Corpus {
  fast: Chain;
  /** The same workload at the max level (same states, other frames). */
  max: Chain;
  /** An unrelated workload over the same images (a different lineage). */
  other: Chain;
  /** Every frame of every chain. */
  allFrames: Uint8Array[];
  /** Valid control messages of every type. */
  controls: Uint8Array[];
}

/** Per epoch, each image's contents and length in use (as a source captures them). */
interface Workload {
  contents: Uint8Array[][];
  lengths: number[][];
}

/**
 * Memory-like contents changing a little per epoch: words, pages rewritten,
 * copied, shifted, zeroed; and the sized image (see {@linkcode sizedEpoch}).
 */
function workload(seed: number): Workload {
  const rng = new FuzzRng(seed);
  // The whole images (their own numbers: the sized image draws from another generator).
  const images = FUZZ_SPECS.slice(0, SIZED_SLOT).map((s) =>
    new Uint8Array(s.size)
  );
  const sized = new Uint8Array(FUZZ_SPECS[SIZED_SLOT].size);
  const srng = new FuzzRng(seed ^ 0x5173d);
  // Epoch 0: every image all zeros and whole (as a new replica starts).
  let length = sized.length;
  const out = [[...images, sized].map((i) => i.slice())];
  const lengths = [FUZZ_SPECS.map((s) => s.size)];
  const page = (img: Uint8Array) => rng.int(Math.ceil(img.length / 4096));
  const span = (img: Uint8Array, p: number) =>
    img.subarray(p * 4096, Math.min(img.length, (p + 1) * 4096));
  for (let e = 1; e <= CHAIN_EPOCHS; e++) {
    if (e === 1) {
      for (const img of images) {
        for (let p = 0; p * 4096 < img.length; p++) {
          const s = span(img, p);
          const kind = rng.int(4);
          if (kind === 1) s.set(rng.bytes(s.length));
          if (kind === 2) {
            for (let i = 0; i < s.length; i++) s[i] = 97 + ((i * 7 + p) % 26);
          }
          if (kind === 3) {
            for (let i = 0; i < s.length; i += 8) s[i] = (i >> 3) & 0xff;
          }
        }
      }
    } else {
      for (let k = rng.range(1, 6); k > 0; k--) {
        const img = rng.pick(images);
        const p = page(img);
        const s = span(img, p);
        switch (rng.int(7)) {
          case 0: // a few words
            for (let w = rng.range(1, 8); w > 0; w--) {
              s[rng.int(s.length)] = rng.int(256);
            }
            break;
          case 1:
            s.set(rng.bytes(s.length));
            break;
          case 2:
            s.fill(0);
            break;
          case 3: { // copied from elsewhere, maybe another image
            const from = rng.pick(images);
            const q = span(from, page(from)).slice();
            s.set(q.subarray(0, s.length));
            break;
          }
          case 4: // shifted by a few bytes
            s.copyWithin(rng.range(1, 16), 0, s.length - 16);
            break;
          case 5: { // the same new page in both images
            const fresh = rng.bytes(4096);
            span(images[0], page(images[0])).set(fresh.subarray(0, 77));
            s.set(fresh.subarray(0, s.length));
            images[1].set(fresh, 4096 * page(images[1]));
            break;
          }
          default: // the short last page
            images[0][images[0].length - 1 - rng.int(77)] = rng.int(256);
        }
      }
    }
    length = sizedEpoch(srng, e, sized, length, images);
    out.push([...images, sized].map((i) => i.slice()));
    lengths.push(FUZZ_SPECS.map((s, k) => k === SIZED_SLOT ? length : s.size));
  }
  return { contents: out, lengths };
}

/** Names of device-state sections, for text runs in the sized image. */
const SECTION_NAMES = [
  "timer",
  "cpu_common",
  "cpu",
  "apic",
  "kvmclock",
  "fw_cfg",
  "PCIBUS",
  "virtio-net",
  "virtio-blk",
  "mc146818rtc",
  "i8259",
  "serial",
];

/**
 * One epoch of the sized image (a guest's device state): a new length in use
 * (kept, grown, shrunk, a page boundary, its whole capacity every eighth
 * epoch, none at epoch 13), a few words changed, what it grew by filled with
 * sections (names, counters, random bytes, zeros, a page of RAM), and zeros
 * past the length. Returns the length.
 */
function sizedEpoch(
  rng: FuzzRng,
  e: number,
  image: Uint8Array,
  was: number,
  ram: readonly Uint8Array[],
): number {
  const cap = image.length;
  const length = e % 8 === 6 ? cap : e === 13 ? 0 : rng.weighted(
    [
      [3, Math.min(was, cap - 1)],
      [4, rng.range(1, cap - 1)],
      [3, Math.max(0, Math.min(cap - 1, was + rng.range(-300, 300)))],
      [1, 4096 * rng.range(1, 3)],
      [1, cap - 1],
    ] as const,
  );
  const fill = (from: number, to: number) => {
    for (let at = from; at < to;) {
      const n = Math.min(to - at, rng.range(16, 900));
      const s = image.subarray(at, at + n);
      switch (rng.int(5)) {
        case 0: {
          const name = new TextEncoder().encode(
            `\x04${rng.pick(SECTION_NAMES)}\x00\x00\x00${rng.int(8)}`,
          );
          for (let i = 0; i < n; i++) s[i] = name[i % name.length];
          break;
        }
        case 1:
          for (let i = 0; i < n; i += 4) s[i] = (i >> 2) & 0xff;
          break;
        case 2:
          s.set(rng.bytes(n));
          break;
        case 3:
          s.fill(0);
          break;
        default: { // a page of RAM (the content index may find it)
          const from = rng.pick(ram);
          const off = 4096 * rng.int(Math.floor(from.length / 4096));
          s.set(from.subarray(off, off + n));
        }
      }
      at += n;
    }
  };
  if (e === 1 || rng.chance(0.15)) fill(0, length);
  else {
    for (let k = rng.range(0, 12); k > 0 && length > 0; k--) {
      image[rng.int(length)] = rng.int(256);
    }
    if (length > was) fill(was, length);
  }
  image.fill(0, length);
  return length;
}

function buildChain(
  name: string,
  { contents, lengths }: Workload,
  level: "fast" | "max",
): Chain {
  const specs = FUZZ_SPECS.map((s) => ({ ...s }));
  // Small chunks: several PATCH frames per image, to drop, repeat and reorder.
  const encoder = new EpochEncoder(specs, {
    level,
    chunkBytes: 100,
    tuning: { lzChunkBytes: 2 * 4096 },
  });
  const decoder = new EpochDecoder(specs);
  const frames: Uint8Array[][] = [[]];
  const states: ChainState[] = [snapshot(decoder)];
  try {
    for (let e = 1; e < contents.length; e++) {
      // The lengths as a source reports them: none for a whole image.
      const f = encoder.encode(
        contents[e],
        undefined,
        FUZZ_SPECS.map((spec, k) => spec.sized ? lengths[e][k] : undefined),
      ).frames;
      decoder.applyEpoch(f);
      frames.push(f);
      const s = snapshot(decoder);
      s.contents.forEach((c, i) => {
        if (!bytesEqual(c, contents[e][i]) || s.lengths[i] !== lengths[e][i]) {
          throw new Error(
            `corpus chain ${name}: epoch ${e} does not round-trip`,
          );
        }
      });
      states.push(s);
    }
  } finally {
    encoder.close();
    decoder.close();
  }
  return { name, frames, states };
}

function snapshot(decoder: EpochDecoder): ChainState {
  const committed = decoder.images.map((i) => i.committed.slice());
  return {
    epoch: decoder.epoch,
    committed,
    contents: committed.map((c, s) => c.subarray(0, decoder.images[s].size)),
    lengths: decoder.images.map((i) => i.length),
    hashes: decoder.images.map((i) => i.hashes.slice()),
    // As a replica's STATE names them.
    info: decoder.images.map(imageDigestInfo),
  };
}

let corpusCache: Corpus | null = null;

/** Builds (once) the corpus every target uses. */
export function fuzzCorpus(): Corpus {
  if (corpusCache) return corpusCache;
  const main = workload(0xc0ffee);
  const fast = buildChain("fast", main, "fast");
  const max = buildChain("max", main, "max");
  const other = buildChain("other", workload(0xbad5eed), "fast");
  const allFrames = [fast, max, other].flatMap((c) => c.frames.flat());
  // The checksum mirror must agree with frame.ts, or damage stops at the checksum.
  for (const f of allFrames) {
    const outer = unpack(f) as unknown[];
    const sum = xxh32(
      outer[6] as Uint8Array,
      frameChecksumSeed(
        outer[4] as number,
        outer[3] as number,
        outer[2] as number,
      ),
    );
    if (sum !== outer[7]) {
      throw new Error(
        "fuzz harness out of date: its frame checksum seed no longer matches src/frame.ts seedOf",
      );
    }
  }
  // The sized image's length must change and travel in COMMIT frames, or
  // nothing here fuzzes it.
  const carried = fast.frames.filter((f) => {
    const images = f.length ? frameParts(f[f.length - 1])?.body.images : null;
    return Array.isArray(images) &&
      typeof images[SIZED_SLOT]?.length === "number";
  }).length;
  const distinct = new Set(fast.states.map((s) => s.lengths[SIZED_SLOT]));
  if (carried < CHAIN_EPOCHS / 2 || distinct.size < CHAIN_EPOCHS / 2) {
    throw new Error(
      `fuzz harness out of date: the sized image's length is in ${carried} COMMIT frames and takes ${distinct.size} values`,
    );
  }
  const info = fast.states[3].info;
  const controls: Uint8Array[] = [
    helloBytes({ epoch: 3 }),
    helloBytes({ token: "", images: [], durable: true }),
    encodeControl({ type: "state", epoch: 3, images: info, level: 1 }),
    encodeControl({ type: "state", epoch: 0, images: [], level: 0 }),
    // The sized image empty (length 0), and whole (no length).
    encodeControl({
      type: "state",
      epoch: 13,
      images: fast.states[13].info,
      level: 2,
    }),
    encodeControl({
      type: "base_end",
      epoch: 6,
      images: fast.states[6].info,
    }),
    ...baseMessages(fast.states[2], 12 << 10, createZstd()),
    encodeControl({ type: "ack", epoch: 7, level: AckLevel.durable }),
    encodeControl({ type: "error", message: "upstream is going away" }),
    encodeControl({ type: "error", message: "" }),
    encodeControl({ type: "challenge", nonce: fixtureChallenge() }),
    encodeControl(fixtureProof(FUZZ_PROOF)),
    // Rejoin by block hashes and verify: the queries a downstream answers.
    encodeControl({ type: "rejoin", epoch: 6 }),
    encodeControl({
      type: "region_query",
      epoch: 3,
      slot: 0,
      unit: 65536,
      regions: new Uint8Array(0),
      rehash: false,
    }),
    encodeControl({
      type: "region_query",
      epoch: 3,
      slot: 0,
      unit: 4096,
      regions: new Uint8Array([1, 0, 0, 0, 3, 0, 0, 0]),
      rehash: true,
    }),
    encodeControl({
      type: "region_digests",
      epoch: 3,
      slot: 0,
      unit: 65536,
      digests: new Uint8Array(16),
    }),
    // Types newer protocol versions add (PING, PONG), where this one has them.
    ...["ping", "pong"].map((type) =>
      encodeControl({ type } as unknown as ControlMessage)
    ).filter((m) => {
      try {
        decodeControl(m);
        return true;
      } catch {
        return false;
      }
    }),
  ];
  corpusCache = { fast, max, other, allFrames, controls };
  return corpusCache;
}

/** What a HELLO may say; the rest is filled in. */
export interface HelloFields {
  token?: string;
  images?: { id: string; size: number }[];
  epoch?: number;
  blockSize?: number;
  durable?: boolean;
  term?: number;
}

/**
 * A HELLO as this build's upstreams send it: the fields given, the corpus
 * images and token by default, and the ack level they need (`applied`; the
 * cast lets this compile against protocol versions with and without
 * HELLO.level, which decoders of the older one ignore).
 */
export function helloBytes(fields: HelloFields = {}): Uint8Array {
  return encodeControl({
    type: "hello",
    token: FUZZ_TOKEN,
    // As an upstream names them: id and size (a sized image's length is per epoch).
    images: FUZZ_SPECS.map((s) => ({ id: s.id, size: s.size })),
    epoch: 0,
    blockSize: 64,
    durable: false,
    level: AckLevel.applied,
    term: 0,
    ...fields,
  } as unknown as ControlMessage);
}

/** BASE messages and a BASE_END for `state`, in chunks of `chunk` bytes. */
export function baseMessages(
  state: ChainState,
  chunk: number,
  zstd: Zstd,
): Uint8Array[] {
  const out: Uint8Array[] = [];
  state.contents.forEach((image, slot) => {
    for (let offset = 0; offset < image.length; offset += chunk) {
      const raw = image.subarray(offset, offset + chunk);
      out.push(encodeControl({
        type: "base",
        epoch: state.epoch,
        slot,
        offset,
        size: raw.length,
        data: zstd.compress(raw, { level: 1 }),
      }));
    }
  });
  out.push(encodeControl({
    type: "base_end",
    epoch: state.epoch,
    images: state.info,
  }));
  return out;
}

// ---------------------------------------------------------------------------
// Verdicts.

/** Engine messages: an error carrying one of these did not come from a check. */
const ENGINE_MESSAGE =
  /Cannot read propert|Cannot set propert|is not a function|is not iterable|is not an object|is not a constructor|undefined is not|null is not|Cannot convert|Cannot destructure|Invalid typed array length|Invalid array length|Array buffer allocation failed|Maximum call stack|out of bounds|outside the bounds|is not defined|Reduce of empty|Invalid time value|Invalid Date/;

/**
 * Why `message` does not tell an operator what was wrong, or null if it
 * does. An engine message is acceptable only as the detail of "... is not
 * valid msgpack" (what msgpackr says about bytes that are not msgpack).
 */
export function unclearReason(message: unknown): string | null {
  if (typeof message !== "string" || message.trim().length < 8) {
    return `the error message ${
      JSON.stringify(message)
    } is empty or too short to say what was wrong`;
  }
  const m = ENGINE_MESSAGE.exec(message);
  if (m && !/not valid msgpack/.test(message.slice(0, m.index))) {
    return `the error message is a JavaScript engine error ("${
      m[0]
    }"), not a description of the bad input`;
  }
  return null;
}

/** A short class of an error message, for the error tables. */
export function errorKind(name: string, message: string): string {
  const m = message
    .replace(/^epoch \d+ rejected: /, "")
    .replace(/^frame for epoch \d+ rejected: .*/, "frame for another epoch")
    .replace(/^image "[^"]*" chunk \d+: /, "")
    .replace(/^upstream says: .*/, "upstream says …")
    .replace(/"[^"]*"/g, "…")
    .replace(/\b0x[0-9a-f]+\b|\b[0-9a-f]{8,}\b|\d+(\.\d+)?/gi, "N")
    .replace(/\(.*$/, "")
    .replace(/^(.{16,}?):.*$/, "$1")
    .trim();
  return `${name}: ${m.length > 56 ? m.slice(0, 55) + "…" : m}`;
}

/** What went wrong in a case. */
export type ViolationKind =
  /** An exception other than the module's own error, a 5xx, an unhandled rejection. */
  | "crash"
  /** A case did not finish in time. */
  | "hang"
  /** A rejection whose message does not say what was wrong (or no message at all). */
  | "unclear"
  /** The receiver's images (or store) changed after a rejected input, or are torn. */
  | "changed"
  /** Valid input was refused after a rejected one. */
  | "wedged"
  /** Accepted input or an answer that breaks the module's own contract. */
  | "contract";

/**
 * Known bugs, reported and waiting for a fix: what each is, and the pattern
 * its violations' messages match. Tolerated (counted, not failed) only when
 * listed in `known`.
 */
export const KNOWN_ISSUES = {
  "control-type-override": {
    summary:
      "decodeControl returns `{ type, ...body }`: a `type` key in the body overrides the checked type, so a message checked as one type is handled as another, with unchecked fields (src/protocol.ts)",
    pattern: /a "type" key in the body overrides it/,
  },
  "json-bigint-magic": {
    summary:
      "decodeFrame and decodeControl format a bad magic with JSON.stringify, which throws TypeError for a BigInt (a msgpack uint64/int64 magic) instead of FrameError/ProtocolError (src/frame.ts, src/protocol.ts)",
    pattern: /serialize a BigInt/,
  },
  "frame-level-flags": {
    summary:
      "decodeFrame accepts flags 2 and 3 ('expected 0..3') and then levelFromCode throws RangeError, which EpochDecoder.receive lets through instead of a DecodeError (src/frame.ts)",
    pattern: /unknown codec level code/,
  },
  "ops-size-unbounded": {
    summary:
      "the decoder allocates (and zstd fills) whatever opsSize a PATCH claims before any check: a 16 KiB frame claiming 512 MiB of zeros costs 512 MiB; 1 TiB fails with an engine message (src/decoder.ts #stageChunk)",
    pattern: /Array buffer allocation failed/,
  },
  "stale-pending-after-reconnect": {
    summary:
      "PATCH frames the decoder holds when a session ends (a broken link, a refused control message) stay pending; the next session's first epoch is refused ('chunk N received twice', 'patch chunk based on epoch …') and only a resend gets through (src/_upstream.ts)",
    pattern: /PATCH frames of the earlier session were still held/,
  },
  "hello-drops-replica": {
    summary:
      "a HELLO with the right token naming other images (or another block size) replaces the replica with an all-zero one before anything of the new images verifies; the next correct upstream then finds epoch 0 and must resync, and the store is later rewritten from that (src/backup.ts and src/relay.ts prepare)",
    pattern: /dropped the replica/,
  },
  "promote-non-object-body": {
    summary:
      "POST /promote passes any JSON body (null, a number, an array) as the options object; tools/backup.ts then answers 400 'Cannot read properties of null (reading 'to')' (src/control_plane.ts)",
    pattern: /POST \/promote handed the target|reading 'to'/,
  },
  "auth-check-throws": {
    summary:
      "PeerAuth.check throws instead of refusing: RangeError 'Invalid time value' for a proof time past the year 275760 (a valid msgpack uint), and @peculiar/x509's errors ('offset is out of bounds', 'End of input reached…') for a leaf whose CA signature does not parse; the upstream is then not counted as refused and gets an engine message (src/peer_auth.ts)",
    pattern: /PeerAuth\.check threw|Invalid time value/,
  },
} as const;
/** A known issue's id. */
export type KnownIssue = keyof typeof KNOWN_ISSUES;

/** The known issue a violation message is an instance of, if any. */
export function knownIssueOf(message: string): KnownIssue | undefined {
  for (const [id, k] of Object.entries(KNOWN_ISSUES)) {
    if (k.pattern.test(message)) return id as KnownIssue;
  }
  return undefined;
}

/** One broken promise, with what reproduces it. */
export interface Violation {
  target: TargetName;
  kind: ViolationKind;
  seed: number;
  caseIndex: number;
  message: string;
  /** What the case did to its input. */
  input: string;
  /** A known issue this is an instance of. */
  issue?: KnownIssue;
  /** The command that reruns this case alone. */
  repro: string;
}

/** Thrown by a target at its first violation unless `keepGoing`. */
export class FuzzViolationError extends Error {
  override name = "FuzzViolationError";
  constructor(readonly violation: Violation) {
    super(
      `${violation.target} case ${violation.caseIndex} (seed ${violation.seed}): ${violation.kind}: ${violation.message}\n  input: ${violation.input}\n  rerun: ${violation.repro}`,
    );
  }
}

/** The targets, in the order runFuzz runs them. */
export const TARGETS = [
  "frame",
  "control",
  "decoder",
  "stream",
  "handshake",
  "relay",
  "auth",
  "http",
] as const;
/** A target's name. */
export type TargetName = typeof TARGETS[number];

/** Share of a run's cases per target (about equal time per target at these weights). */
export const TARGET_WEIGHTS: Record<TargetName, number> = {
  frame: 26,
  control: 22,
  decoder: 16,
  stream: 14,
  handshake: 8,
  relay: 5,
  auth: 2,
  http: 7,
};

/** Options of every target function. */
export interface TargetOptions {
  /** Number of cases. */
  cases: number;
  seed: number;
  /** Index of the first case (default 0): `first: I, cases: 1` reruns case I alone. */
  first?: number;
  /** Collect violations and go on (default: throw at the first). */
  keepGoing?: boolean;
  /** Known issues to tolerate: counted, not failed (and not generated where avoidable). */
  known?: readonly KnownIssue[];
  /** Called as each case starts, with its index. */
  onCase?: (index: number) => void;
  /** Deadline of an asynchronous step (default 10 s). */
  stepTimeoutMs?: number;
  /** Harness self-test: the third case hangs (synchronously or not) or crashes. */
  selfTest?: SelfTest;
}

/** What {@linkcode TargetOptions.selfTest} injects. */
export type SelfTest = "hang-sync" | "hang-async" | "crash";

/** What one target did. */
export interface TargetResult {
  target: TargetName;
  cases: number;
  /** Cases whose input was taken without an error. */
  accepted: number;
  /** Cases with at least one input rejected with an error. */
  rejected: number;
  /** Rejections by error class and message shape. */
  errorsByKind: Record<string, number>;
  crashes: number;
  hangs: number;
  imagesChanged: number;
  /** Unclear messages, wedged receivers, broken contracts. */
  otherViolations: number;
  /** Violations that are instances of tolerated known issues. */
  known: number;
  violations: Violation[];
  ms: number;
}

/** How to rerun one case. */
export function reproCommand(
  seed: number,
  target: string,
  index: number,
  known: readonly KnownIssue[] = TOLERATED,
): string {
  // The known issues tolerated shape the cases too (see ValueMutationOptions).
  const same = known.length === TOLERATED.length &&
    known.every((k) => TOLERATED.includes(k));
  const flag = same
    ? ""
    : ` --known ${known.length ? known.join(",") : "none"}`;
  return `node_modules/.bin/deno run -A --unstable-net tools/fuzz.ts --seed ${seed} --target ${target} --case ${index}${flag}`;
}

/** Violations kept (with their repro) per target; more are only counted. */
const MAX_KEPT_VIOLATIONS = 100;

/** Counts and violations of one target run. */
class Tally {
  readonly result: TargetResult;
  readonly #known: Set<KnownIssue>;
  readonly #keepGoing: boolean;
  index = 0;
  input = "";
  #rejectedThisCase = false;
  #violatedThisCase = false;
  #knownThisCase: KnownIssue | null = null;

  constructor(
    readonly target: TargetName,
    readonly seed: number,
    options: TargetOptions,
  ) {
    this.#known = new Set(options.known ?? []);
    this.#keepGoing = options.keepGoing ?? false;
    this.result = {
      target,
      cases: 0,
      accepted: 0,
      rejected: 0,
      errorsByKind: {},
      crashes: 0,
      hangs: 0,
      imagesChanged: 0,
      otherViolations: 0,
      known: 0,
      violations: [],
      ms: 0,
    };
  }

  tolerates(issue: KnownIssue): boolean {
    return this.#known.has(issue);
  }

  begin(index: number): void {
    this.index = index;
    this.input = "";
    this.#rejectedThisCase = false;
    this.#violatedThisCase = false;
    this.#knownThisCase = null;
  }

  end(): void {
    this.result.cases++;
    if (this.#rejectedThisCase) this.result.rejected++;
    else this.result.accepted++;
  }

  /** Counts one rejection; returns a violation message if it is unclear. */
  rejection(name: string, message: string): void {
    this.#rejectedThisCase = true;
    const kind = errorKind(name, message);
    this.result.errorsByKind[kind] = (this.result.errorsByKind[kind] ?? 0) + 1;
    const why = unclearReason(message);
    if (why) this.violation("unclear", `${name}: ${why}: ${message}`);
  }

  /** Records a violation (one per case: the first says the most). */
  violation(kind: ViolationKind, message: string, issue?: KnownIssue): void {
    issue ??= knownIssueOf(message);
    if ((issue && this.#known.has(issue)) || this.#knownThisCase) {
      // What follows a tolerated issue in the same case is its consequence.
      const k = `known issue: ${issue ?? this.#knownThisCase}`;
      if (!this.#knownThisCase) this.result.known++;
      this.#knownThisCase ??= issue ?? null;
      this.result.errorsByKind[k] = (this.result.errorsByKind[k] ?? 0) + 1;
      return;
    }
    if (this.#violatedThisCase) return;
    this.#violatedThisCase = true;
    const v: Violation = {
      target: this.target,
      kind,
      seed: this.seed,
      caseIndex: this.index,
      message,
      input: this.input,
      issue,
      repro: reproCommand(this.seed, this.target, this.index, [
        ...this.#known,
      ]),
    };
    // Counted always, kept up to a bound (a bug hit by every case of a long run).
    if (this.result.violations.length < MAX_KEPT_VIOLATIONS) {
      this.result.violations.push(v);
    }
    if (kind === "crash") this.result.crashes++;
    else if (kind === "hang") this.result.hangs++;
    else if (kind === "changed") this.result.imagesChanged++;
    else this.result.otherViolations++;
    if (!this.#keepGoing) throw new FuzzViolationError(v);
  }

  /** Counts an event that is neither acceptance nor rejection (a skipped input, an off-lineage acceptance). */
  note(kind: string): void {
    this.result.errorsByKind[kind] = (this.result.errorsByKind[kind] ?? 0) + 1;
  }
}

/** Runs `fn` over the cases, with the bookkeeping every target shares. */
async function runCases(
  target: TargetName,
  options: TargetOptions,
  fn: (rng: FuzzRng, tally: Tally) => void | Promise<void>,
  isAsync: boolean,
): Promise<TargetResult> {
  const tally = new Tally(target, options.seed, options);
  const first = options.first ?? 0;
  const t0 = performance.now();
  for (let i = first; i < first + options.cases; i++) {
    options.onCase?.(i);
    tally.begin(i);
    const rng = new FuzzRng(caseSeed(options.seed, target, i));
    try {
      if (options.selfTest && i === first + 2) await selfTest(options.selfTest);
      await fn(rng, tally);
    } catch (e) {
      if (e instanceof FuzzViolationError) throw e;
      // The harness itself failed on this case: report it as a crash (it is
      // where a receiver threw what it should not).
      tally.violation(
        "crash",
        `uncaught ${(e as Error)?.name}: ${(e as Error)?.message}\n${
          (e as Error)?.stack?.split("\n").slice(1, 4).join("\n")
        }`,
      );
    }
    tally.end();
    // Let timers, progress messages and the watchdog run.
    if (!isAsync && (i & 255) === 255) await new Promise((r) => setTimeout(r));
  }
  tally.result.ms = performance.now() - t0;
  return tally.result;
}

/** Misbehaves on purpose, to show the harness notices. */
async function selfTest(what: SelfTest): Promise<void> {
  if (what === "crash") throw new TypeError("self-test: an escaped TypeError");
  if (what === "hang-async") await new Promise(() => {});
  let spins = 0;
  while (spins >= 0) spins++; // an endless synchronous loop
}

/** Rejects with a hang error if `promise` takes longer than `ms`. */
async function deadline<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new HangError(`${what} did not finish in ${ms} ms`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

class HangError extends Error {
  override name = "HangError";
}

/** True if two byte arrays are equal. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function wordsEqual(a: Uint32Array, b: Uint32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Where a decoder's images differ from `state`, or null if they are exactly it. */
function imagesDiffer(decoder: EpochDecoder, state: ChainState): string | null {
  if (decoder.epoch !== state.epoch) {
    return `the receiver is at epoch ${decoder.epoch}, expected ${state.epoch}`;
  }
  for (let s = 0; s < decoder.images.length; s++) {
    const image = decoder.images[s];
    if (!bytesEqual(image.committed, state.committed[s])) {
      let at = 0;
      while (image.committed[at] === state.committed[s][at]) at++;
      return `image "${image.id}" bytes differ from epoch ${state.epoch} at offset ${at}`;
    }
    if (!wordsEqual(image.hashes, state.hashes[s])) {
      return `image "${image.id}" block hashes differ from epoch ${state.epoch}`;
    }
    if (image.length !== state.lengths[s]) {
      return `image "${image.id}" has length ${image.length}, at epoch ${state.epoch} it is ${
        state.lengths[s]
      }`;
    }
    const d = image.digestValue();
    if (
      d.lo !== state.info[s].digestLo || d.hi !== state.info[s].digestHi
    ) {
      return `image "${image.id}" digest differs from epoch ${state.epoch}`;
    }
  }
  return null;
}

/** Null if every image's digest, hashes and bytes agree with each other (an epoch off the corpus, applied whole). */
function selfInconsistent(decoder: EpochDecoder): string | null {
  for (const image of decoder.images) {
    if (
      !Number.isSafeInteger(image.length) || image.length < 0 ||
      image.length > image.size
    ) {
      return `image "${image.id}" has length ${image.length}, not within its size ${image.size}`;
    }
    const contents = image.committed.subarray(0, image.size);
    const raw = digestOf(decoder.hasher, contents);
    const d = bindLength(raw.lo, raw.hi, image.size, image.length);
    const v = image.digestValue();
    if (d.lo !== v.lo || d.hi !== v.hi) {
      return `image "${image.id}" holds bytes and a length (${image.length}) whose digest is not the one it reports (torn)`;
    }
    for (let i = image.size; i < image.committed.length; i++) {
      if (image.committed[i] !== 0) {
        return `image "${image.id}" has non-zero bytes past its end`;
      }
    }
  }
  return null;
}

// ---------------------------------------------------------------------------
// Target: decodeFrame.

/** The frame decoder: damaged frames are a FrameError or a well-typed frame. */
export function fuzzFrames(options: TargetOptions): Promise<TargetResult> {
  const corpus = fuzzCorpus();
  const typeKey = !(options.known ?? []).includes("control-type-override");
  const reference = corpus.fast.frames[2];
  const expected = reference.map((f) => decodeFrame(f));
  return runCases("frame", options, (rng, tally) => {
    const base = rng.chance(0.05)
      ? rng.pick(corpus.controls)
      : rng.pick(corpus.allFrames);
    const { bytes, op } = frameInput(rng, base, corpus, typeKey);
    tally.input = `${op} of a ${bytes.length}-byte input`;
    let frame;
    try {
      frame = decodeFrame(bytes);
    } catch (e) {
      if (!(e instanceof FrameError)) {
        tally.violation(
          "crash",
          `decodeFrame threw ${(e as Error).name}: ${(e as Error).message}`,
        );
        return;
      }
      tally.rejection(e.name, e.message);
      // The decoder keeps no state between frames: a valid one still decodes.
      const k = rng.int(reference.length);
      const again = decodeFrame(reference[k]);
      if (
        again.epoch !== expected[k].epoch || again.type !== expected[k].type
      ) {
        tally.violation(
          "wedged",
          "a valid frame decodes differently after a rejection",
        );
      }
      return;
    }
    const problem = frameContract(frame);
    if (problem) tally.violation("contract", `accepted frame: ${problem}`);
  }, false);
}

function frameInput(
  rng: FuzzRng,
  base: Uint8Array,
  corpus: Corpus,
  typeKey: boolean,
): { bytes: Uint8Array; op: string } {
  const isFrameBase = unpack(base) instanceof Array &&
    (unpack(base) as unknown[])[0] === "PWR";
  const mode = rng.weighted(
    [
      [35, "bytes"],
      [22, "outer"],
      [25, "body"],
      [8, "ops"],
      [4, "valid"],
      [6, "junk"],
      [6, "length"],
    ] as const,
  );
  if (!isFrameBase || mode === "bytes") {
    return damage(rng, base, corpus.allFrames);
  }
  switch (mode) {
    case "length":
      return mutateCommitLength(rng, base) ??
        mutateCommitLength(rng, rng.pick(corpus.fast.frames.slice(1)).at(-1)!)!;
    case "outer":
      return mutateFrameOuter(rng, base, { typeKey });
    case "body":
      return mutateFrameBody(rng, base, { typeKey });
    case "ops": {
      const outer = unpack(base) as unknown[];
      if (outer[3] !== FrameType.PATCH) {
        return mutateFrameBody(rng, base, { typeKey });
      }
      return mutatePatchOps(rng, base, zstdForCases());
    }
    case "valid":
      return { bytes: base, op: "unchanged" };
    case "junk":
      return junkInput(rng);
  }
}

let caseZstd: Zstd | null = null;
/** One zstd context for making cases (never closed: it lives as long as the corpus). */
function zstdForCases(): Zstd {
  caseZstd ??= createZstd();
  return caseZstd;
}

/** Inputs that are not damaged valid ones: empty, random, deeply nested, huge. */
function junkInput(rng: FuzzRng): { bytes: Uint8Array; op: string } {
  switch (rng.int(6)) {
    case 0:
      return { bytes: new Uint8Array(0), op: "empty" };
    case 1:
      return { bytes: rng.bytes(rng.range(1, 300)), op: "random bytes" };
    case 2: {
      const depth = rng.pick([100, 10_000, 200_000]);
      const b = new Uint8Array(depth + 1).fill(rng.pick([0x91, 0x81]));
      b[depth] = 0xc0;
      return { bytes: b, op: `nested ${depth} deep` };
    }
    case 3:
      return {
        bytes: pack([
          "PWR",
          FRAME_VERSION,
          0,
          1,
          1,
          "img0",
          rng.bytes(1 << 20),
          0,
        ]),
        op: "1 MiB body",
      };
    case 4:
      return {
        bytes: new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff, 0xa3, 0x50, 0x57]),
        op: "array32 header claiming 4G elements",
      };
    default:
      return {
        bytes: new Uint8Array([0x98, 0xa3, 0x50, 0x57, 0x52, 0xc6, 0x7f, 0xff]),
        op: "bin32 claiming 2 GiB",
      };
  }
}

/** Null if a decoded frame has the shape frame.ts promises. */
function frameContract(f: ReturnType<typeof decodeFrame>): string | null {
  const uint = (v: unknown) =>
    typeof v === "number" && Number.isInteger(v) && v >= 0;
  if (f.level !== "fast" && f.level !== "max") return `level ${f.level}`;
  if (!uint(f.epoch)) return `epoch ${f.epoch}`;
  if (typeof f.imageId !== "string") return "image id is not a string";
  if (f.type === FrameType.PATCH) {
    const b = f.body;
    if (
      ![b.base, b.slot, b.chunk, b.pages, b.opsSize].every(uint) ||
      !(b.ops instanceof Uint8Array) ||
      (b.opsCodec !== 0 && b.opsCodec !== 1 && b.opsCodec !== 2)
    ) return "patch body fields of the wrong type";
    if (b.lzCodec !== undefined && b.lzCodec !== 1 && b.lzCodec !== 2) {
      return `patch lzCodec ${b.lzCodec}`;
    }
    if (b.lz !== undefined && !(b.lz instanceof Uint8Array && uint(b.lzSize))) {
      return "patch lz section of the wrong type";
    }
    return null;
  }
  if (f.type === FrameType.COMMIT) {
    const c = f.body;
    if (
      ![c.base, c.pageSize, c.blockSize].every(uint) || !Array.isArray(c.images)
    ) return "commit body fields of the wrong type";
    for (const i of c.images) {
      if (
        typeof i.id !== "string" ||
        ![i.size, i.chunks, i.digestLo, i.digestHi].every(uint)
      ) return "commit image entry of the wrong type";
      if (i.length !== undefined && !(uint(i.length) && i.length <= i.size)) {
        return `commit image "${i.id}" has length ${
          String(i.length)
        }, not a byte count within its size ${i.size}`;
      }
    }
    return null;
  }
  return `type ${(f as { type: unknown }).type}`;
}

// ---------------------------------------------------------------------------
// Target: decodeControl.

/** The code encodeControl writes for a message type (undefined for a type it does not know). */
function controlCode(type: string): unknown {
  return (unpack(encodeControl({ type } as unknown as ControlMessage)) as
    | unknown[]
    | undefined)?.[2];
}

/** Control messages: damaged ones are a ProtocolError or a message of the type and shape their code says. */
export function fuzzControl(options: TargetOptions): Promise<TargetResult> {
  const corpus = fuzzCorpus();
  const typeKey = !(options.known ?? []).includes("control-type-override");
  const reference = corpus.controls[0];
  // Messages naming images: HELLO, STATE, BASE_END.
  const withImages = corpus.controls.filter((c) => {
    const images = (unpack(c) as unknown[])[3] as Record<string, unknown>;
    return Array.isArray(images?.images) && images.images.length > 0;
  });
  return runCases("control", options, (rng, tally) => {
    const base = rng.chance(0.05)
      ? rng.pick(corpus.allFrames)
      : rng.pick(corpus.controls);
    const mode = rng.weighted(
      [
        [35, "bytes"],
        [50, "struct"],
        [5, "valid"],
        [10, "junk"],
        [10, "length"],
      ] as const,
    );
    let input: { bytes: Uint8Array; op: string };
    if (mode === "bytes") input = damage(rng, base, corpus.controls);
    else if (mode === "junk") input = junkInput(rng);
    else if (mode === "valid") input = { bytes: base, op: "unchanged" };
    else if (mode === "length") {
      input = mutateControlLength(rng, rng.pick(withImages))!;
    } else {
      const m = mutateValue(rng, unpack(base), { typeKey });
      input = { bytes: pack(m.value), op: m.op };
    }
    const { bytes, op } = input;
    tally.input = `${op} of a ${bytes.length}-byte control message`;
    let message: ControlMessage;
    try {
      message = decodeControl(bytes);
    } catch (e) {
      if (!(e instanceof ProtocolError)) {
        tally.violation(
          "crash",
          `decodeControl threw ${(e as Error).name}: ${(e as Error).message}`,
        );
        return;
      }
      tally.rejection(e.name, e.message);
      const again = decodeControl(reference);
      if (again.type !== "hello") {
        tally.violation(
          "wedged",
          "a valid HELLO decodes differently after a rejection",
        );
      }
      return;
    }
    const raw = unpack(bytes) as unknown[];
    const problem = controlContract(message, raw[2]);
    if (problem) {
      tally.violation("contract", `accepted control message: ${problem}`);
    }
  }, false);
}

/** Null if `m` has the type its code says and the fields that type promises. */
export function controlContract(
  m: ControlMessage,
  code: unknown,
): string | null {
  if (controlCode(m.type) !== code) {
    return `code ${code} was checked as one type but is returned as type "${m.type}" (a "type" key in the body overrides it)`;
  }
  const r = m as unknown as Record<string, unknown>;
  const uint = (v: unknown) =>
    typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  // A length (the bytes in use of a sized image) only with digests, within the size.
  const images = (digests: boolean) =>
    Array.isArray(r.images) &&
    (r.images as Record<string, unknown>[]).every((i) =>
      typeof i === "object" && i !== null && typeof i.id === "string" &&
      uint(i.size) && (!digests || (uint(i.digestLo) && uint(i.digestHi))) &&
      (i.length === undefined ||
        (digests && uint(i.length) &&
          (i.length as number) <= (i.size as number)))
    );
  const own = (k: string) => Object.prototype.hasOwnProperty.call(r, k);
  switch (m.type) {
    case "hello":
      return own("token") && typeof r.token === "string" && uint(r.epoch) &&
          uint(r.blockSize) && typeof r.durable === "boolean" &&
          uint(r.term) && images(false)
        ? null
        : "hello fields missing or of the wrong type";
    case "state":
      return uint(r.epoch) && [0, 1, 2].includes(r.level as number) &&
          images(true)
        ? null
        : "state fields missing or of the wrong type";
    case "base":
      return uint(r.epoch) && uint(r.slot) && uint(r.offset) && uint(r.size) &&
          r.data instanceof Uint8Array
        ? null
        : "base fields missing or of the wrong type";
    case "base_end":
      return uint(r.epoch) && images(true)
        ? null
        : "base_end fields missing or of the wrong type";
    case "ack":
      return uint(r.epoch) && [0, 1, 2].includes(r.level as number)
        ? null
        : "ack fields missing or of the wrong type";
    case "error":
      return typeof r.message === "string"
        ? null
        : "error message missing or not a string";
    case "challenge":
      return r.nonce instanceof Uint8Array && r.nonce.length === 32
        ? null
        : "challenge nonce missing or not 32 bytes";
    case "proof":
      return typeof r.chain === "string" && r.chain.length <= 64 << 10 &&
          typeof r.serverName === "string" && r.serverName.length <= 255 &&
          r.signature instanceof Uint8Array && r.signature.length <= 1024
        ? null
        : "proof fields missing, of the wrong type or too long";
    case "rejoin":
      return uint(r.epoch) ? null : "rejoin epoch missing";
    case "region_query": {
      const unit = r.unit as number;
      return uint(r.epoch) && uint(r.slot) && uint(unit) && unit >= 4096 &&
          unit <= 1 << 30 && (unit & (unit - 1)) === 0 &&
          r.regions instanceof Uint8Array && r.regions.length % 4 === 0 &&
          typeof r.rehash === "boolean"
        ? null
        : "region_query fields missing, of the wrong type or out of bounds";
    }
    case "region_digests":
      return uint(r.epoch) && uint(r.slot) && uint(r.unit) &&
          r.digests instanceof Uint8Array && r.digests.length % 8 === 0
        ? null
        : "region_digests fields missing or of the wrong type";
  }
  return null; // a type with no fields (PING, PONG): its code was checked above
}

// ---------------------------------------------------------------------------
// Target: EpochDecoder.receive.

/** One case's frames: the valid epoch e+1, damaged 0-3 times. */
function decoderCase(
  rng: FuzzRng,
  corpus: Corpus,
  chain: Chain,
  e: number,
  typeKey: boolean,
): { frames: Uint8Array[]; how: string } {
  const zstd = zstdForCases();
  const frames = chain.frames[e + 1].slice();
  const how: string[] = [];
  const otherLevel = chain === corpus.fast ? corpus.max : corpus.fast;
  const n = rng.weighted([[4, 0], [46, 1], [32, 2], [18, 3]] as const);
  for (let k = 0; k < n; k++) {
    if (frames.length === 0) {
      frames.push(junkInput(rng).bytes);
      how.push("junk frame");
      continue;
    }
    const i = rng.int(frames.length);
    const last = frames.length - 1;
    const isPatch = (f: Uint8Array) =>
      (unpack(f) as unknown[] | undefined)?.[3] === FrameType.PATCH;
    const op = rng.weighted(
      [
        [14, "bytes"],
        [9, "outer"],
        [14, "body"],
        [18, "ops"],
        [9, "commit"],
        [5, "drop"],
        [4, "dup"],
        [4, "swap"],
        [3, "commitFirst"],
        [3, "stale"],
        [4, "future"],
        [5, "lineage"],
        [4, "level"],
        [3, "junk"],
        [3, "truncateSeq"],
        [2, "oversize"],
        [8, "length"],
      ] as const,
    );
    const decodable = unpack(frames[i]) instanceof Array;
    switch (op) {
      case "length": {
        const m = mutateCommitLength(rng, frames[last]);
        if (!m) break; // the COMMIT is gone or damaged already
        frames[last] = m.bytes;
        how.push(`frame ${last}: ${m.op}`);
        break;
      }
      case "bytes": {
        const m = damage(rng, frames[i], corpus.allFrames);
        frames[i] = m.bytes;
        how.push(`frame ${i}: ${m.op}`);
        break;
      }
      case "outer":
      case "body":
      case "commit":
      case "ops": {
        const j = op === "commit" ? last : i;
        if (!(unpack(frames[j]) instanceof Array) || !decodable) {
          frames[j] = mutateBytes(rng, frames[j]).bytes;
          how.push(`frame ${j}: bytes`);
          break;
        }
        const m = op === "outer"
          ? mutateFrameOuter(rng, frames[j], { typeKey })
          : op === "ops" && isPatch(frames[j])
          ? mutatePatchOps(rng, frames[j], zstd)
          : mutateFrameBody(rng, frames[j], { typeKey });
        frames[j] = m.bytes;
        how.push(`frame ${j}: ${m.op}`);
        break;
      }
      case "drop":
        frames.splice(i, 1);
        how.push(`frame ${i} dropped`);
        break;
      case "dup":
        frames.splice(rng.int(frames.length + 1), 0, frames[i]);
        how.push(`frame ${i} duplicated`);
        break;
      case "swap": {
        const j = rng.int(frames.length);
        [frames[i], frames[j]] = [frames[j], frames[i]];
        how.push(`frames ${i} and ${j} swapped`);
        break;
      }
      case "commitFirst":
        frames.unshift(frames.pop()!);
        how.push("COMMIT moved first");
        break;
      case "stale":
        if (e >= 1) {
          frames.splice(i, 0, rng.pick(chain.frames[e]));
          how.push(`a frame of epoch ${e} inserted at ${i}`);
        }
        break;
      case "future":
        if (e + 2 <= CHAIN_EPOCHS) {
          if (rng.chance(0.5)) {
            frames.push(...chain.frames[e + 2]);
            how.push(`epoch ${e + 2} appended`);
          } else {
            frames.splice(i, 0, rng.pick(chain.frames[e + 2]));
            how.push(`a frame of epoch ${e + 2} inserted at ${i}`);
          }
        }
        break;
      case "lineage":
        if (rng.chance(0.4)) {
          frames.splice(0, frames.length, ...corpus.other.frames[e + 1]);
          how.push(`epoch ${e + 1} of another lineage instead`);
        } else {
          frames[i] = rng.pick(corpus.other.frames[e + 1]);
          how.push(`frame ${i} from another lineage`);
        }
        break;
      case "level": {
        const alt = otherLevel.frames[e + 1];
        frames[i] = alt[Math.min(i, alt.length - 1)];
        how.push(`frame ${i} from the other level's encoding`);
        break;
      }
      case "junk": {
        const m = rng.chance(0.5)
          ? junkInput(rng)
          : { bytes: rng.pick(corpus.controls), op: "a control message" };
        frames.splice(i, 0, m.bytes);
        how.push(`${m.op} inserted at ${i}`);
        break;
      }
      case "truncateSeq":
        frames.length = i;
        how.push(`sequence cut after ${i} frames`);
        break;
      case "oversize": {
        const j = frames.findIndex(isPatch);
        if (j < 0) break;
        const parts = frameParts(frames[j]);
        if (!parts) break;
        const { outer, body } = parts;
        const what = rng.int(3);
        if (what === 0) {
          body.opsCodec = 1;
          body.opsSize = rng.pick([2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53 - 1]);
        } else if (what === 1) {
          body.ops = rng.bytes(1 << 20);
          body.opsCodec = 0;
          body.opsSize = 1 << 20;
        } else {
          body.lz = rng.bytes(64);
          body.lzSize = rng.pick([2 ** 31, 2 ** 32, 2 ** 40, 4096 * 1000]);
        }
        frames[j] = withBody(outer, body, true);
        how.push(
          `frame ${j}: oversized ${["opsSize", "op stream", "lzSize"][what]}`,
        );
        break;
      }
    }
  }
  return { frames, how: how.join("; ") || "valid epoch" };
}

/**
 * The epoch decoder: every frame is taken, held or refused with a
 * DecodeError; a refused frame leaves the images exactly as they were; a
 * valid epoch sent afterwards applies.
 */
export function fuzzDecoder(options: TargetOptions): Promise<TargetResult> {
  const corpus = fuzzCorpus();
  const typeKey = !(options.known ?? []).includes("control-type-override");
  const states = corpus.fast.states;
  const decoder = new EpochDecoder(FUZZ_SPECS.map((s) => ({ ...s })));
  /** The corpus epoch the decoder holds, or null (another lineage, or unknown). */
  let at: number | null = 0;
  /** Whether the decoder may hold PATCH frames of an unfinished epoch. */
  let holding = false;
  const run = runCases("decoder", options, (rng, tally) => {
    const e = tally.index % CHAIN_EPOCHS;
    const chain = Math.floor(tally.index / CHAIN_EPOCHS) % 2 === 0
      ? corpus.fast
      : corpus.max;
    // load() also drops PATCH frames an earlier case left held.
    if (at !== e || holding) {
      decoder.load(e, states[e].contents, states[e].lengths);
      at = e;
      holding = false;
    }
    const { frames, how } = decoderCase(rng, corpus, chain, e, typeKey);
    tally.input = `epoch ${e + 1} (${chain.name}): ${how}`;
    let pending = false;
    for (const f of frames) {
      const before = decoder.epoch;
      let applied: AppliedEpoch | null;
      try {
        applied = decoder.receive(f);
      } catch (err) {
        if (!(err instanceof DecodeError)) {
          at = null;
          tally.violation(
            "crash",
            `EpochDecoder.receive threw ${(err as Error).name}: ${
              (err as Error).message
            }`,
          );
          return;
        }
        tally.rejection(err.name, err.message);
        pending = false;
        const diff = decoder.epoch !== before
          ? `the receiver moved from epoch ${before} to ${decoder.epoch}`
          : at !== null
          ? imagesDiffer(decoder, states[before])
          : selfInconsistent(decoder);
        if (diff) {
          at = null;
          tally.violation(
            "changed",
            `after "${err.message}": ${diff}`,
          );
          return;
        }
        continue;
      }
      if (applied === null) {
        pending = true;
        continue;
      }
      pending = false;
      if (applied.epoch !== before + 1 || decoder.epoch !== before + 1) {
        at = null;
        tally.violation(
          "contract",
          `an epoch applied as ${applied.epoch} moved the receiver from ${before} to ${decoder.epoch}`,
        );
        return;
      }
      const unlike = unlikeCommit(decoder, f);
      if (unlike) {
        at = null;
        tally.violation(
          "contract",
          `epoch ${applied.epoch} applied: ${unlike}`,
        );
        return;
      }
      if (
        at !== null && before + 1 <= CHAIN_EPOCHS &&
        imagesDiffer(decoder, states[before + 1]) === null
      ) {
        at = before + 1;
      } else {
        at = null;
        const bad = selfInconsistent(decoder);
        if (bad) {
          tally.violation(
            "changed",
            `an accepted epoch left the images torn: ${bad}`,
          );
          return;
        }
        tally.note("accepted: an epoch of another lineage, applied whole");
      }
    }
    holding = pending;
    if (at !== e) return;
    // Not wedged: the valid epoch e+1 still applies (an incomplete epoch's
    // held frames may cost one refusal: the decoder holds PATCH frames until
    // a COMMIT, by design).
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        decoder.applyEpoch(chain.frames[e + 1]);
      } catch (err) {
        if (attempt === 0 && pending && err instanceof DecodeError) {
          tally.note("valid epoch refused once after an incomplete one");
          continue;
        }
        at = null;
        tally.violation(
          "wedged",
          `the valid epoch ${e + 1} was refused after the case: ${
            (err as Error).message
          }`,
        );
        return;
      }
      const diff = imagesDiffer(decoder, states[e + 1]);
      if (diff) {
        at = null;
        tally.violation(
          "changed",
          `the valid epoch ${e + 1} applied wrong: ${diff}`,
        );
        return;
      }
      at = e + 1;
      holding = false; // a whole epoch applied: nothing is held
      return;
    }
  }, false);
  return run.finally(() => decoder.close());
}

/**
 * Null if the decoder's images hold the lengths in use and digests that the
 * COMMIT frame `commit`, just applied, names.
 */
function unlikeCommit(
  decoder: EpochDecoder,
  commit: Uint8Array,
): string | null {
  let frame;
  try {
    frame = decodeFrame(commit);
  } catch (e) {
    return `by a frame that does not decode (${(e as Error).message})`;
  }
  if (frame.type !== FrameType.COMMIT) {
    return `by a frame of type ${frame.type}`;
  }
  for (let s = 0; s < decoder.images.length; s++) {
    const image = decoder.images[s], ci = frame.body.images[s];
    const length = ci.length ?? image.size;
    if (image.length !== length) {
      return `image "${image.id}" has length ${image.length}, its COMMIT says ${length}`;
    }
    const d = image.digestValue();
    if (d.lo !== ci.digestLo || d.hi !== ci.digestHi) {
      return `image "${image.id}" reports a digest other than its COMMIT's`;
    }
  }
  return null;
}

// ---------------------------------------------------------------------------
// Target: the length-prefixed stream parser (tcp:, tls:, quic: streams).

/** A byte stream as the parser should see it, and what it should make of it. */
interface StreamCase {
  chunks: Uint8Array[];
  max: number;
  preamble?: Uint8Array;
  /** The stream breaks (a read error) instead of ending. */
  breaks: boolean;
  how: string;
}

/** What a correct parser returns for a stream: the messages, then how it ends. */
function parseReference(
  bytes: Uint8Array,
  max: number,
  preamble: Uint8Array | undefined,
  breaks: boolean,
): {
  messages: Uint8Array[];
  end: "null" | "limit" | "middle" | "hello" | "broke";
} {
  const messages: Uint8Array[] = [];
  let pos = 0;
  const ended = (atBoundary: boolean) =>
    breaks
      ? "broke" as const
      : atBoundary
      ? "null" as const
      : "middle" as const;
  if (preamble) {
    if (bytes.length < preamble.length) {
      return { messages, end: ended(bytes.length === 0) };
    }
    for (let i = 0; i < preamble.length; i++) {
      if (bytes[i] !== preamble[i]) return { messages, end: "hello" };
    }
    pos = preamble.length;
  }
  for (;;) {
    if (bytes.length - pos < 4) {
      return { messages, end: ended(pos === bytes.length) };
    }
    const len = ((bytes[pos] << 24) | (bytes[pos + 1] << 16) |
      (bytes[pos + 2] << 8) | bytes[pos + 3]) >>> 0;
    if (len > max) return { messages, end: "limit" };
    if (bytes.length - pos - 4 < len) return { messages, end: ended(false) };
    messages.push(bytes.subarray(pos + 4, pos + 4 + len));
    pos += 4 + len;
  }
}

function streamCase(rng: FuzzRng, tcp: boolean): StreamCase {
  const max = tcp ? 64 << 10 : rng.pick([64 << 10, 64 << 10, 1 << 20]);
  const preamble = !tcp && rng.chance(0.2)
    ? new Uint8Array([0x50, 0x57, 0x51, 0x01]) // a QUIC-style hello
    : undefined;
  const parts: number[] = [];
  const headers: number[] = [];
  const payloads: Uint8Array[] = [];
  for (let k = rng.range(0, 6); k > 0; k--) {
    const size = rng.weighted(
      [
        [3, 0],
        [30, rng.range(1, 64)],
        [30, rng.range(65, 5000)],
        [4, rng.range(60 << 10, 64 << 10)],
        [1, max],
      ] as const,
    );
    payloads.push(rng.bytes(size));
  }
  let total = preamble?.length ?? 0;
  for (const p of payloads) total += 4 + p.length;
  let bytes: Uint8Array = new Uint8Array(total);
  let pos = 0;
  if (preamble) {
    bytes.set(preamble);
    pos = preamble.length;
  }
  for (const p of payloads) {
    headers.push(pos);
    new DataView(bytes.buffer).setUint32(pos, p.length);
    bytes.set(p, pos + 4);
    pos += 4 + p.length;
    parts.push(p.length);
  }
  const how: string[] = [`${payloads.length} messages (${parts.join(", ")})`];
  for (let k = rng.weighted([[10, 0], [50, 1], [25, 2]] as const); k > 0; k--) {
    const op = rng.weighted(
      [
        [5, "length"],
        [6, "bytes"],
        [3, "truncate"],
        [2, "junk"],
      ] as const,
    );
    if (op === "length" && headers.length) {
      const at = rng.pick(headers);
      const v = rng.pick([
        max + 1,
        0xffffffff,
        0x80000000,
        0x10000000,
        0,
        rng.int(100),
        parts[headers.indexOf(at)] + rng.pick([1, -1, 4]),
      ]);
      if (at + 4 <= bytes.length) {
        new DataView(bytes.buffer, bytes.byteOffset).setUint32(at, v >>> 0);
      }
      how.push(`length at ${at} = ${v >>> 0}`);
    } else if (op === "truncate") {
      bytes = bytes.slice(0, rng.int(bytes.length + 1));
      how.push(`cut at ${bytes.length}`);
    } else if (op === "junk") {
      const junk = rng.bytes(rng.range(1, 12));
      const out = new Uint8Array(bytes.length + junk.length);
      out.set(bytes);
      out.set(junk, bytes.length);
      bytes = out;
      how.push(`${junk.length} junk bytes appended`);
    } else if (bytes.length) {
      const m = mutateBytes(rng, bytes);
      bytes = m.bytes;
      how.push(m.op);
    }
  }
  // How the bytes arrive: whole, in random pieces, or one byte at a time.
  const chunks: Uint8Array[] = [];
  const mode = rng.weighted(
    [[3, "whole"], [6, "pieces"], [1, "bytes"]] as const,
  );
  for (let at = 0; at < bytes.length;) {
    const n = mode === "whole"
      ? bytes.length
      : mode === "bytes" && bytes.length < 4096
      ? 1
      : rng.range(1, rng.chance(0.5) ? 16 : 70_000);
    chunks.push(bytes.slice(at, at + n));
    at += n;
  }
  const breaks = !tcp && rng.chance(0.15);
  if (breaks) how.push("then the connection breaks");
  how.push(
    `arriving ${mode === "whole" ? "whole" : `in ${chunks.length} reads`}`,
  );
  return { chunks, max, preamble, breaks, how: how.join("; ") };
}

/** An in-memory byte stream that delivers `chunks`, then ends or breaks. */
function scriptedDuplex(chunks: Uint8Array[], breaks: boolean): ByteDuplex {
  let i = 0, off = 0, destroyed = false;
  return {
    remote: "fuzz-stream",
    read(into) {
      if (destroyed) return Promise.resolve(null);
      if (i >= chunks.length) {
        return breaks
          ? Promise.reject(new Error("connection reset (scripted)"))
          : Promise.resolve(null);
      }
      const c = chunks[i];
      const n = Math.min(into.length, c.length - off);
      into.set(c.subarray(off, off + n));
      off += n;
      if (off === c.length) {
        i++;
        off = 0;
      }
      return Promise.resolve(into.subarray(0, n));
    },
    write: () => Promise.resolve(),
    closeWrite: () => Promise.resolve(),
    destroy() {
      destroyed = true;
    },
  };
}

/** Receives until the end; compares with the reference parse. */
async function checkStream(
  conn: LengthPrefixedConnection,
  c: StreamCase,
  tally: Tally,
  ms: number,
): Promise<void> {
  const all = new Uint8Array(c.chunks.reduce((n, x) => n + x.length, 0));
  let p = 0;
  for (const x of c.chunks) {
    all.set(x, p);
    p += x.length;
  }
  const want = parseReference(all, c.max, c.preamble, c.breaks);
  let got = 0;
  for (;;) {
    let m: Uint8Array | null;
    try {
      m = await deadline(conn.receive(), ms, "receive()");
    } catch (e) {
      if (e instanceof HangError) throw e;
      if (!(e instanceof TransportError)) {
        tally.violation(
          "crash",
          `receive() threw ${(e as Error).name}: ${(e as Error).message}`,
        );
        return;
      }
      tally.rejection(e.name, e.message);
      const expect = {
        null: null,
        limit: /limit/,
        middle: /middle of a message/,
        hello: /expected the hello/,
        broke: /broke/,
      }[want.end];
      if (got !== want.messages.length || !expect || !expect.test(e.message)) {
        tally.violation(
          "contract",
          `after ${got} messages receive() failed with "${e.message}"; expected ${want.messages.length} messages then ${want.end}`,
        );
        return;
      }
      // Once failed, it stays failed (or ended): no message, no hang.
      try {
        const again = await deadline(
          conn.receive(),
          ms,
          "receive() after a failure",
        );
        if (again !== null) {
          tally.violation(
            "contract",
            "receive() returned a message after failing",
          );
        }
      } catch (e2) {
        if (e2 instanceof HangError) throw e2;
      }
      return;
    }
    if (m === null) {
      if (got !== want.messages.length || want.end !== "null") {
        tally.violation(
          "contract",
          `receive() ended cleanly after ${got} messages; expected ${want.messages.length} messages then ${want.end}`,
        );
      }
      return;
    }
    if (got >= want.messages.length || !bytesEqual(m, want.messages[got])) {
      tally.violation(
        "contract",
        `message ${got} (${m.length} bytes) is not what the stream holds there`,
      );
      return;
    }
    got++;
  }
}

/**
 * The length-prefixed parser: damaged byte streams (lengths past the limit,
 * cut in the middle, junk, a bad hello, broken connections), arriving in any
 * pieces, give exactly the whole messages before the damage, then a
 * TransportError naming it; one case in 25 goes through a real loopback TCP
 * socket.
 */
export async function fuzzStream(
  options: TargetOptions,
): Promise<TargetResult> {
  const ms = options.stepTimeoutMs ?? 10_000;
  let listener: Awaited<ReturnType<typeof tcpTransport.listen>> | null = null;
  try {
    return await runCases("stream", options, async (rng, tally) => {
      const tcp = rng.chance(0.04);
      const c = streamCase(rng, tcp);
      tally.input = `${tcp ? "tcp" : "scripted"} stream: ${c.how}`;
      if (!tcp) {
        const conn = new LengthPrefixedConnection(
          scriptedDuplex(c.chunks, c.breaks),
          { maxMessageBytes: c.max, expectPreamble: c.preamble },
        );
        try {
          await checkStream(conn, c, tally, ms);
        } catch (e) {
          if (e instanceof HangError) tally.violation("hang", e.message);
          else throw e;
        } finally {
          await deadline(conn.close(), ms, "close()").catch((e) =>
            tally.violation("hang", (e as Error).message)
          );
        }
        return;
      }
      listener ??= await tcpTransport.listen(new URL("tcp://127.0.0.1:0"), {
        maxMessageBytes: 64 << 10,
      });
      const port = Number(new URL(listener.url).port);
      const client = await Deno.connect({ hostname: "127.0.0.1", port });
      const writing = (async () => {
        try {
          for (const x of c.chunks) {
            let o = 0;
            while (o < x.length) o += await client.write(x.subarray(o));
          }
          await client.closeWrite();
          const sink = new Uint8Array(4096);
          while (await client.read(sink) !== null) { /* drain */ }
        } catch {
          // The server may close on us once it saw the damage.
        } finally {
          try {
            client.close();
          } catch {
            // closed already
          }
        }
      })();
      const conn = await deadline(listener.accept(), ms, "accept()");
      try {
        await checkStream(conn as LengthPrefixedConnection, c, tally, ms);
      } catch (e) {
        if (e instanceof HangError) tally.violation("hang", e.message);
        else throw e;
      } finally {
        await deadline(conn!.close(), ms, "close()").catch((e) =>
          tally.violation("hang", (e as Error).message)
        );
        await deadline(writing, ms, "the client").catch((e) =>
          tally.violation("hang", (e as Error).message)
        );
      }
    }, true);
  } finally {
    await (listener as { close(): Promise<void> } | null)?.close();
  }
}

// ---------------------------------------------------------------------------
// Targets: the handshake, i.e. UpstreamServer behind a real Backup (with a
// store on disk) and behind a real Relay, driven over `memory:` by a scripted
// upstream.

/** Sent last in every session: a correct server refuses it, so every session ends with an ERROR that says how far it got. */
const SENTINEL = encodeControl({ type: "ack", epoch: 0, level: 0 });
const SENTINEL_ANSWER = "unexpected ack from upstream";
/** Message limit of the fuzzed listeners (a bigger message is refused by the transport). */
const REPLICA_MAX_MESSAGE = 1 << 20;
/**
 * What the fuzzed replicas let a HELLO name (`--max-image-bytes`,
 * `--max-total-image-bytes`): HELLOs naming more are sent and must be
 * refused, before anything is allocated.
 */
const REPLICA_IMAGE_LIMITS = { image: 16 << 20, total: 32 << 20 };

/** The role under test, as the handshake target sees it. */
interface Replica {
  readonly url: string;
  readonly notes: string[];
  decoder(): EpochDecoder | null;
  upstream(): UpstreamServer;
  /** Role invariants once a session is over; `changed`: whether the session applied anything. */
  check(changed: boolean): string | null;
  /** Remembers what must not change during the next session. */
  mark(): void;
  close(): Promise<void>;
}

async function openBackup(name: string): Promise<Replica> {
  const dir = await Deno.makeTempDir({ prefix: "patchwire-fuzz-" });
  const notes: string[] = [];
  let backup: Backup;
  try {
    backup = await Backup.open({
      listen: `memory://${name}`,
      store: `${dir}/store`,
      auth: PeerAuth.withToken(FUZZ_TOKEN),
      imageLimits: REPLICA_IMAGE_LIMITS,
      flushMs: 3_600_000, // the harness flushes after each session
      transport: { maxMessageBytes: REPLICA_MAX_MESSAGE },
      note: (l) => notes.push(l),
    });
  } catch (e) {
    await Deno.remove(dir, { recursive: true });
    throw e;
  }
  let before: { epoch: number; images: string; bytes: Uint8Array[] } | null =
    null;
  const readStore = ():
    | { epoch: number; images: string; bytes: Uint8Array[] }
    | null => {
    const st = backup.store.state;
    if (!st) return null;
    return {
      epoch: st.epoch,
      images: JSON.stringify(st.images),
      bytes: st.images.map((im, s) => {
        const out = new Uint8Array(im.size);
        backup.store.readImage(s, out);
        return out;
      }),
    };
  };
  const same = (
    a: ReturnType<typeof readStore>,
    b: ReturnType<typeof readStore>,
  ) =>
    a === b || (a !== null && b !== null && a.epoch === b.epoch &&
      a.images === b.images && a.bytes.every((x, i) =>
        bytesEqual(x, b.bytes[i])
      ));
  return {
    url: backup.url,
    notes,
    decoder: () => backup.decoder,
    upstream: () => backup.upstream,
    mark() {
      before = readStore();
    },
    check(changed) {
      backup.flush();
      const now = readStore();
      if (!changed) {
        return same(before, now)
          ? null
          : `the store changed (epoch ${before?.epoch} → ${now?.epoch}) though nothing was applied`;
      }
      // Flushed: the store holds exactly the replica.
      const d = backup.decoder;
      if (!d || !now) {
        return d ? "the store is empty after an applied epoch" : null;
      }
      if (now.epoch !== d.epoch) {
        return `the store is at epoch ${now.epoch} after a flush, the replica at ${d.epoch}`;
      }
      const stored = backup.store.state!.images;
      for (let s = 0; s < d.images.length; s++) {
        const image = d.images[s];
        if (
          !bytesEqual(
            now.bytes[s] ?? new Uint8Array(0),
            image.committed.subarray(0, image.size),
          )
        ) {
          return `the store's "${image.id}" differs from the replica at epoch ${d.epoch}`;
        }
        // The length and digest are of the same epoch as the bytes.
        const length = stored[s].length ?? stored[s].size;
        if (length !== image.length) {
          return `the store's "${image.id}" has length ${length}, the replica's at epoch ${d.epoch} is ${image.length}`;
        }
        const digest = image.digestValue();
        if (
          stored[s].digestLo !== digest.lo || stored[s].digestHi !== digest.hi
        ) {
          return `the store's "${image.id}" digest differs from the replica's at epoch ${d.epoch}`;
        }
      }
      return null;
    },
    async close() {
      try {
        await backup.close();
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  };
}

async function openRelay(name: string): Promise<Replica> {
  const notes: string[] = [];
  const relay = await Relay.open({
    listen: `memory://${name}`,
    // Nobody listens there: the relay's own replica and log are what is fuzzed.
    to: [`memory://${name}-nowhere`],
    ack: { who: { kind: "none" }, level: AckLevel.applied },
    auth: PeerAuth.withToken(FUZZ_TOKEN),
    imageLimits: REPLICA_IMAGE_LIMITS,
    transport: { maxMessageBytes: REPLICA_MAX_MESSAGE },
    link: { backoffMs: 3_600_000, maxBackoffMs: 3_600_000 },
    note: (l) => notes.push(l),
  });
  return {
    url: relay.url,
    notes,
    decoder: () => relay.decoder,
    upstream: () => relay.upstream,
    mark() {},
    check() {
      // The log offers downstream peers only epochs its replica verified.
      return relay.retained.last === relay.epoch
        ? null
        : `the retained log ends at epoch ${relay.retained.last}, the replica is at ${relay.epoch}: peers would be sent an epoch the relay refused`;
    },
    close: () => relay.close(),
  };
}

/** What a scripted upstream saw of one session. */
interface SessionOutcome {
  replies: ControlMessage[];
  /** The ERROR the server ended with, if any. */
  error: string | null;
  /** Epochs acked at `applied` or above. */
  applied: number[];
  state: (ControlMessage & { type: "state" }) | null;
  /** Notes the role wrote during the session. */
  notes: string[];
  /** A reply that is not a valid control message. */
  garbage: string | null;
}

async function runSession(
  replica: Replica,
  messages: Uint8Array[],
  ms: number,
): Promise<SessionOutcome> {
  replica.notes.length = 0; // only this session's notes (and bounded memory)
  const conn = await memoryTransport.connect(new URL(replica.url), {
    maxMessageBytes: 4 << 20,
  });
  const raw: Uint8Array[] = [];
  const reading = (async () => {
    for (;;) {
      const m = await conn.receive();
      if (m === null) return;
      raw.push(m);
    }
  })();
  const sending = (async () => {
    for (const m of messages) {
      try {
        await conn.send(m);
      } catch {
        return; // the server ended the session
      }
    }
  })();
  try {
    await deadline(Promise.all([reading, sending]), ms, "the session");
  } finally {
    await conn.close();
  }
  // The server's side of the session is over once it dropped the connection.
  const end = Date.now() + ms;
  while (replica.upstream().connected) {
    if (Date.now() > end) {
      throw new HangError(`the server did not end the session in ${ms} ms`);
    }
    await new Promise((r) => setTimeout(r, 0));
  }
  const out: SessionOutcome = {
    replies: [],
    error: null,
    applied: [],
    state: null,
    notes: replica.notes.slice(),
    garbage: null,
  };
  for (const r of raw) {
    let m: ControlMessage;
    try {
      m = decodeControl(r);
    } catch (e) {
      out.garbage ??= `the server sent an invalid control message: ${
        (e as Error).message
      }`;
      continue;
    }
    out.replies.push(m);
    if (m.type === "error") out.error = m.message;
    else if (m.type === "ack" && m.level >= AckLevel.applied) {
      out.applied.push(m.epoch);
    } else if (m.type === "state") out.state ??= m;
  }
  return out;
}

/**
 * The term the harness's correct upstream speaks in: the replica's (a
 * damaged HELLO of a higher term that passed the token check legitimately
 * raised it, and an upstream of an older term is refused by design).
 */
let upstreamTerm = 0;

function helloMessage(epoch: number, durable = false): Uint8Array {
  return helloBytes({ epoch, durable, term: upstreamTerm });
}

/** True if the decoder replicates the corpus images (ids, sizes, block size). */
function onCorpusImages(d: EpochDecoder | null): boolean {
  return d === null || (d.hasher.blockSize === 64 &&
    d.images.length === FUZZ_SPECS.length &&
    d.images.every((i, s) =>
      i.id === FUZZ_SPECS[s].id && i.size === FUZZ_SPECS[s].size
    ));
}

/** A session from epoch e: valid messages, then 0-3 damages. */
function replicaSession(
  rng: FuzzRng,
  corpus: Corpus,
  e: number,
  typeKey: boolean,
): { messages: Uint8Array[]; how: string; hello: Uint8Array } {
  const zstd = zstdForCases();
  const chain = rng.chance(0.5) ? corpus.fast : corpus.max;
  const hello = helloMessage(e + 1, rng.chance(0.03));
  const can2 = e + 2 <= CHAIN_EPOCHS;
  const template = rng.weighted(
    [
      [55, "epoch"],
      [can2 ? 10 : 0, "epochs"],
      [20, "base"],
      [can2 ? 5 : 0, "base+epoch"],
      [5, "hello"],
      [5, "noHello"],
    ] as const,
  );
  const baseOf = (epoch: number) =>
    baseMessages(
      corpus.fast.states[epoch],
      rng.pick([4096, 12 << 10, 64 << 10]),
      zstd,
    );
  let messages: Uint8Array[] = [hello];
  if (template === "epoch") messages.push(...chain.frames[e + 1]);
  if (template === "epochs") {
    messages.push(...chain.frames[e + 1], ...chain.frames[e + 2]);
  }
  if (template === "base") messages.push(...baseOf(e + 1));
  if (template === "base+epoch") {
    messages.push(...baseOf(e + 1), ...chain.frames[e + 2]);
  }
  if (template === "noHello") {
    messages = [
      rng.pick([...corpus.controls.slice(2), ...chain.frames[e + 1]]),
      ...chain.frames[e + 1],
    ];
  }
  const how: string[] = [`${template} from epoch ${e} (${chain.name})`];
  const n = rng.weighted([[6, 0], [50, 1], [30, 2], [14, 3]] as const);
  for (let k = 0; k < n && messages.length; k++) {
    const i = rng.int(messages.length);
    const op = rng.weighted(
      [
        [8, "helloBytes"],
        [12, "helloStruct"],
        [3, "wrongToken"],
        [10, "bytes"],
        [16, "frame"],
        [10, "baseStruct"],
        [5, "drop"],
        [4, "dup"],
        [4, "swap"],
        [6, "control"],
        [3, "junk"],
        [4, "truncate"],
        [3, "stale"],
        [4, "lineage"],
        [1, "oversize"],
        [8, "length"],
      ] as const,
    );
    switch (op) {
      case "length": {
        // A COMMIT's or BASE_END's length, or one added to the HELLO's images.
        const targets = messages.map((m, j) => [m, j] as const).filter(
          ([m]) => {
            const v = unpack(m) as unknown[] | undefined;
            return (v?.[0] === "PWR" && v[3] === FrameType.COMMIT) ||
              (v?.[0] === "PWC" && v[2] === 4);
          },
        );
        const [m, j] = targets.length && rng.chance(0.9)
          ? rng.pick(targets)
          : [messages[0], 0];
        const d = (unpack(m) as unknown[] | undefined)?.[0] === "PWR"
          ? mutateCommitLength(rng, m)
          : mutateControlLength(rng, m);
        if (!d) break;
        messages[j] = d.bytes;
        how.push(`message ${j}: ${d.op}`);
        break;
      }
      case "helloBytes": {
        const m = damage(rng, messages[0], corpus.controls, 2);
        messages[0] = m.bytes;
        how.push(`HELLO ${m.op}`);
        break;
      }
      case "helloStruct": {
        const v = unpack(messages[0]);
        if (v === undefined) break;
        const m = mutateValue(rng, v, { typeKey });
        messages[0] = pack(m.value);
        how.push(`HELLO ${m.op}`);
        break;
      }
      case "wrongToken":
        messages[0] = encodeControl({
          ...(decodeControl(hello) as ControlMessage & { type: "hello" }),
          token: rng.pick([
            "",
            "fuzz-tokem",
            FUZZ_TOKEN + " ",
            "x".repeat(1000),
          ]),
        });
        how.push("HELLO with a wrong token");
        break;
      case "bytes": {
        const m = damage(rng, messages[i], corpus.allFrames, 2);
        messages[i] = m.bytes;
        how.push(`message ${i}: ${m.op}`);
        break;
      }
      case "frame": {
        const frames = messages.map((m, j) => [m, j] as const).filter(([m]) =>
          (unpack(m) as unknown[] | undefined)?.[0] === "PWR"
        );
        if (!frames.length) break;
        const [f, j] = rng.pick(frames);
        const kind = rng.int(3);
        const isPatch = (unpack(f) as unknown[])[3] === FrameType.PATCH;
        const m = kind === 0
          ? mutateFrameOuter(rng, f, { typeKey })
          : kind === 1 && isPatch
          ? mutatePatchOps(rng, f, zstd)
          : mutateFrameBody(rng, f, { typeKey });
        messages[j] = m.bytes;
        how.push(`message ${j}: ${m.op}`);
        break;
      }
      case "baseStruct": {
        const bases = messages.map((m, j) => [m, j] as const).filter(([m]) => {
          const v = unpack(m) as unknown[] | undefined;
          return v?.[0] === "PWC" && (v[2] === 3 || v[2] === 4);
        });
        if (!bases.length) break;
        const [b, j] = rng.pick(bases);
        const m = mutateValue(rng, unpack(b), { typeKey });
        messages[j] = pack(m.value);
        how.push(
          `message ${j} (${
            (unpack(b) as unknown[])[2] === 3 ? "BASE" : "BASE_END"
          }): ${m.op}`,
        );
        break;
      }
      case "drop":
        messages.splice(i, 1);
        how.push(`message ${i} dropped`);
        break;
      case "dup":
        messages.splice(rng.int(messages.length + 1), 0, messages[i]);
        how.push(`message ${i} duplicated`);
        break;
      case "swap": {
        const j = rng.int(messages.length);
        [messages[i], messages[j]] = [messages[j], messages[i]];
        how.push(`messages ${i} and ${j} swapped`);
        break;
      }
      case "control": {
        const c = rng.pick([...corpus.controls, hello]);
        const at = rng.int(messages.length + 1);
        messages.splice(at, 0, c);
        how.push(`a ${decodeControl(c).type} inserted at ${at}`);
        break;
      }
      case "junk": {
        const m = junkInput(rng);
        const at = rng.int(messages.length + 1);
        messages.splice(at, 0, m.bytes);
        how.push(`${m.op} inserted at ${at}`);
        break;
      }
      case "truncate":
        messages.length = Math.max(1, i);
        how.push(`session cut after ${messages.length} messages`);
        break;
      case "stale":
        if (e >= 1) {
          messages.splice(i + 1, 0, ...chain.frames[e]);
          how.push(`epoch ${e} resent at ${i + 1}`);
        }
        break;
      case "lineage":
        messages.splice(i + 1, 0, rng.pick(corpus.other.frames[e + 1]));
        how.push(`a frame of another lineage inserted at ${i + 1}`);
        break;
      case "oversize": {
        const big = new Uint8Array(REPLICA_MAX_MESSAGE + 1);
        big.set(chain.frames[e + 1][0].subarray(0, 64));
        messages.splice(i + 1, 0, big);
        how.push(`a ${big.length}-byte message (over the limit) at ${i + 1}`);
        break;
      }
    }
  }
  return { messages: [...messages, SENTINEL], how: how.join("; "), hello };
}

async function fuzzReplica(
  target: "handshake" | "relay",
  options: TargetOptions,
): Promise<TargetResult> {
  const corpus = fuzzCorpus();
  const states = corpus.fast.states;
  const typeKey = !(options.known ?? []).includes("control-type-override");
  const ms = options.stepTimeoutMs ?? 10_000;
  const open = () => {
    const name = `fuzz-${target}-${options.seed}-${crypto.randomUUID()}`;
    return target === "handshake" ? openBackup(name) : openRelay(name);
  };
  let replica = await open();
  const zstd = zstdForCases();
  /** The corpus epoch the replica holds, or null (other images, another lineage). */
  let at: number | null = 0;
  /** Whether the replica held any images when the current session began. */
  let hadReplica = false;

  /** Checks the replica against the session's acks; returns where it is. */
  const settle = (
    tally: Tally,
    o: SessionOutcome,
    start: number,
    what: string,
  ): number | null => {
    const d = replica.decoder();
    if (!onCorpusImages(d) && !hadReplica) {
      // Nothing to drop: a replica's first upstream names its images.
      tally.note("accepted: a first upstream's images became the replica");
      return null;
    }
    if (!onCorpusImages(d)) {
      tally.violation(
        "changed",
        `${what}: a HELLO with the right token naming other images (${
          d!.images.map((i) => `${i.id}:${i.size}`).join(", ")
        }, block size ${
          d!.hasher.blockSize
        }) dropped the replica of epoch ${start} before anything of the new images verified`,
        "hello-drops-replica",
      );
      return null;
    }
    const epoch = d?.epoch ?? 0;
    const acked = Math.max(start, ...o.applied);
    // An ack sent as the session broke may be lost (the upstream learns the
    // replica's epoch from STATE when it reconnects): a replica ahead of its
    // acks is right if the epoch it holds is whole (checked below). Behind
    // its acks it would have acked what it does not hold.
    const lostAck = epoch > acked;
    if (
      epoch !== acked && !lostAck &&
      !(o.applied.length === 0 && epoch === start)
    ) {
      tally.violation(
        "contract",
        `${what}: the replica is at epoch ${epoch}, the acks say ${acked}`,
      );
      return null;
    }
    if (epoch === start) {
      const diff = d ? imagesDiffer(d, states[start]) : null;
      if (diff) {
        tally.violation("changed", `${what}: nothing was applied, yet ${diff}`);
        return null;
      }
      return start;
    }
    if (epoch <= CHAIN_EPOCHS && d && imagesDiffer(d, states[epoch]) === null) {
      return epoch;
    }
    const bad = d ? selfInconsistent(d) : null;
    if (bad) {
      tally.violation(
        "changed",
        `${what}: an accepted epoch left the replica torn: ${bad}`,
      );
    } else tally.note("accepted: an epoch of another lineage, applied whole");
    return null;
  };

  /** Brings the replica to corpus epoch e (a base sync); false if it could not. */
  const reach = async (tally: Tally, e: number): Promise<boolean> => {
    if (at === e) return true;
    upstreamTerm = replica.upstream().term;
    const o = await runSession(replica, [
      helloMessage(e),
      ...baseMessages(states[e], 12 << 10, zstd),
      SENTINEL,
    ], ms);
    const d = replica.decoder();
    if (d && onCorpusImages(d) && imagesDiffer(d, states[e]) === null) {
      at = e;
      return true;
    }
    at = null;
    tally.violation(
      "wedged",
      `a correct base sync to epoch ${e} was refused: ${
        o.error ?? o.notes.at(-1)
      }`,
    );
    return false;
  };

  try {
    return await runCases(target, options, async (rng, tally) => {
      const e = tally.index % CHAIN_EPOCHS;
      try {
        if (!await reach(tally, e)) return;
        upstreamTerm = replica.upstream().term;
        const { messages, how, hello } = replicaSession(
          rng,
          corpus,
          e,
          typeKey,
        );
        tally.input = how;
        replica.mark();
        hadReplica = replica.decoder() !== null;
        const o = await runSession(replica, messages, ms);
        if (o.garbage) tally.violation("contract", o.garbage);
        if (o.error === SENTINEL_ANSWER) {
          // Everything up to the sentinel was taken.
        } else if (o.error !== null) tally.rejection("ERROR", o.error);
        else if (o.notes.length) tally.rejection("note", o.notes.at(-1)!);
        else {
          tally.violation(
            "unclear",
            "the session ended without an ERROR message or a note saying why",
          );
        }
        if (messages[0] === hello && !o.state) {
          tally.violation(
            "contract",
            `a correct HELLO got no STATE (${o.error ?? "no error"})`,
          );
        } else if (
          messages[0] === hello && o.state &&
          (o.state.epoch !== e ||
            JSON.stringify(o.state.images) !== JSON.stringify(states[e].info))
        ) {
          tally.violation(
            "contract",
            `STATE says epoch ${o.state.epoch} with other digests, the replica holds epoch ${e}`,
          );
        }
        at = settle(tally, o, e, "the case");
        if (at === null) return;
        const problem = replica.check(at !== e);
        if (problem) {
          at = null;
          tally.violation("changed", problem);
          return;
        }
        if (at !== e) return;
        // Not wedged: a correct upstream sending epoch e+1 is taken.
        let firstRefusal = "";
        for (let attempt = 0; attempt < 2; attempt++) {
          upstreamTerm = replica.upstream().term;
          replica.mark();
          const live = await runSession(replica, [
            helloMessage(e + 1),
            ...corpus.fast.frames[e + 1],
            SENTINEL,
          ], ms);
          at = settle(tally, live, e, "a correct upstream after the case");
          if (at === e + 1) {
            if (attempt === 1) {
              // Refused once, then taken as it was: what the earlier session
              // left behind (held PATCH frames) was in the way.
              tally.violation(
                "wedged",
                `a correct upstream's epoch ${
                  e + 1
                } was refused once after the case ("${firstRefusal}"), then taken when sent again: PATCH frames of the earlier session were still held`,
                "stale-pending-after-reconnect",
              );
            }
            break;
          }
          if (attempt === 0 && at === e) {
            firstRefusal = live.error ?? live.notes.at(-1) ?? "";
            continue;
          }
          tally.violation(
            "wedged",
            `a correct upstream's epoch ${e + 1} was refused after the case: ${
              live.error ?? live.notes.at(-1)
            }`,
          );
          at = null;
          return;
        }
        const problem2 = at === null ? null : replica.check(true);
        if (problem2) {
          at = null;
          tally.violation("changed", problem2);
        }
      } catch (err) {
        at = null;
        if (!(err instanceof HangError)) throw err;
        // A stuck session would stall every later one: go on with a new
        // replica (the old one is left to close when it can).
        const stuck = replica;
        replica = await open();
        at = 0;
        deadline(stuck.close(), ms, "closing a stuck replica").catch(() => {});
        tally.violation("hang", err.message);
      }
    }, true);
  } finally {
    await replica.close();
  }
}

/**
 * The handshake at a backup: damaged HELLOs, frames, base syncs and message
 * orders end the session with an ERROR (or a note) that says why; the
 * replica and its store are unchanged by whatever was refused, and a correct
 * upstream is taken afterwards.
 */
export function fuzzHandshake(options: TargetOptions): Promise<TargetResult> {
  return fuzzReplica("handshake", options);
}

/**
 * The handshake at a relay (deferred decodes, frames forwarded before they
 * verify): as for a backup, and its retained log never runs ahead of the
 * epochs its replica verified.
 */
export function fuzzRelay(options: TargetOptions): Promise<TargetResult> {
  return fuzzReplica("relay", options);
}

// ---------------------------------------------------------------------------
// Target: the token in a HELLO and the client-certificate PROOF answering a
// CHALLENGE (PeerAuth.checkToken, PeerAuth.checkProof).

/**
 * The checker the auth cases run against. Its own certificate only names it
 * (localhost); what it trusts (FUZZ_CA), the challenge and the proofs it is
 * shown and its clock (FUZZ_CHECK_TIME) are fixed, so every case is the
 * same on every run.
 */
export async function fuzzAuthChecker(): Promise<PeerAuth> {
  const own = await makeDevCerts();
  return await PeerAuth.create({
    token: FUZZ_TOKEN,
    cert: own.cert,
    key: own.key,
    ca: [FUZZ_CA],
  });
}

function fromHex(h: string): Uint8Array {
  return new Uint8Array(h.match(/../g)!.map((x) => parseInt(x, 16)));
}

/** The challenge the fixed proofs answer. */
export function fixtureChallenge(): Uint8Array {
  return fromHex(FUZZ_CHALLENGE);
}

/** A fixed proof (hex strings in `_fuzz_certs.ts`) as a PROOF message carries it. */
export function fixtureProof(
  p: typeof FUZZ_PROOF | typeof STRANGER_PROOF,
): Proof {
  return { type: "proof", ...p, signature: fromHex(p.signature) };
}

/**
 * The credentials check: a HELLO token or a PROOF (chain, server name,
 * signature) that is damaged, or a proof shown to another connection's
 * challenge (a replay), is refused with a reason, never accepted, and the
 * checks never throw.
 */
export async function fuzzAuth(options: TargetOptions): Promise<TargetResult> {
  const server = await fuzzAuthChecker();
  const proof = fixtureProof(FUZZ_PROOF);
  const strangerProof = fixtureProof(STRANGER_PROOF);
  const challenge = fixtureChallenge();
  const ms = options.stepTimeoutMs ?? 10_000;
  return runCases("auth", options, async (rng, tally) => {
    const m = structuredCloneish(proof) as Record<string, unknown>;
    let token: unknown = FUZZ_TOKEN;
    let shownChallenge = challenge;
    const how: string[] = [];
    for (let k = rng.range(1, 2); k > 0; k--) {
      const what = rng.weighted(
        [
          [3, "token"],
          [6, "chain"],
          [2, "serverName"],
          [3, "challenge"],
          [4, "signature"],
          [2, "swap"],
          [2, "struct"],
        ] as const,
      );
      how.push(what);
      const bytesOf = (v: unknown) =>
        v instanceof Uint8Array ? v : new Uint8Array(16);
      switch (what) {
        case "token":
          token = nearValue(rng, token);
          break;
        case "chain": {
          const pem = String(m.chain);
          m.chain = rng.pick([
            () => mutateBytes(rng, new TextEncoder().encode(pem)).bytes,
            () => pem.replace(/[A-Za-z0-9+/]{8}/, "AAAAAAAA"),
            () => "",
            () => pem + pem,
            () => Array(9).fill(pem).join(""),
            () => pem.slice(0, rng.int(pem.length)),
            () => FUZZ_CA,
            () => STRANGER_PROOF.chain,
            () =>
              pem +
              "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
          ])();
          if (m.chain instanceof Uint8Array) {
            m.chain = new TextDecoder().decode(m.chain);
          }
          break;
        }
        case "serverName":
          m.serverName = rng.pick([
            "",
            "LOCALHOST",
            "127.0.0.1",
            "evil",
            "localhost.",
          ]);
          break;
        case "challenge":
          // The proof replayed on a connection with another challenge.
          shownChallenge = rng.chance(0.5)
            ? mutateBytes(rng, challenge).bytes
            : rng.bytes(32);
          if (bytesEqual(shownChallenge, challenge)) how.pop();
          break;
        case "signature":
          m.signature = rng.chance(0.5)
            ? mutateBytes(rng, bytesOf(m.signature)).bytes
            : rng.bytes(rng.pick([0, 64, 71, 72, 1024]));
          break;
        case "swap":
          Object.assign(m, strangerProof);
          break;
        case "struct": {
          const v = mutateValue(rng, m, { typeKey: false });
          if (isPlainObject(v.value)) {
            for (const key of Object.keys(m)) delete m[key];
            Object.assign(m, v.value);
          }
          break;
        }
      }
    }
    if (how.length === 0) how.push("nothing");
    // What a peer can send is what decodeControl lets through.
    let checked: ControlMessage;
    try {
      checked = decodeControl(
        encodeControl({ ...m, type: "proof" } as unknown as ControlMessage),
      );
    } catch (e) {
      tally.input = how.join("+");
      if (e instanceof ProtocolError) {
        tally.rejection(e.name, e.message);
        return;
      }
      // encodeControl refuses some values (a BigInt out of range): not a case.
      tally.note("skipped: not encodable");
      return;
    }
    tally.input = `proof with damaged ${how.join(" and ")}`;
    let verdict;
    try {
      verdict = server.checkToken(typeof token === "string" ? token : "");
      if (verdict.ok) {
        verdict = await deadline(
          server.checkProof(
            checked as Proof,
            shownChallenge,
            FUZZ_CHECK_TIME,
          ),
          ms,
          "PeerAuth.checkProof",
        );
      }
    } catch (e) {
      if (e instanceof HangError) {
        tally.violation("hang", e.message);
        return;
      }
      tally.violation(
        "crash",
        `PeerAuth threw ${(e as Error).name}: ${(e as Error).message}`,
        "auth-check-throws",
      );
      return;
    }
    if (!verdict.ok) {
      tally.rejection(`refused (${verdict.reason})`, verdict.message);
      return;
    }
    const c = checked as Proof;
    // The chain may differ where it does not matter (certificates after
    // the leaf, PEM framing): the leaf's key must still verify the signature.
    const same = token === FUZZ_TOKEN && c.serverName === proof.serverName &&
      bytesEqual(c.signature, proof.signature) &&
      bytesEqual(shownChallenge, challenge);
    if (!same) {
      tally.violation(
        "contract",
        `credentials with a damaged ${
          how.join(" and ")
        } were accepted as ${verdict.peer}`,
      );
    }
  }, true);
}

// ---------------------------------------------------------------------------
// Target: the HTTP control API (hono), through app.fetch.

/**
 * What tools/backup.ts does with a POST /promote body (its `promoteOptions`
 * is not exported), short of promoting: parse every option.
 */
function dryRunPromote(body: Record<string, unknown>): Promise<unknown> {
  const to = Array.isArray(body.to) ? body.to.map(String) : [];
  const interval = body.interval;
  return Promise.resolve({
    promoted: false,
    dryRun: true,
    to,
    ack: typeof body.ack === "string" ? parseAckWho(body.ack) : null,
    ackLevel: typeof body.ackLevel === "string"
      ? parseAckLevel(body.ackLevel)
      : null,
    intervalMs: interval === "manual"
      ? null
      : typeof interval === "number"
      ? interval
      : 1000,
    level: typeof body.level === "string" ? parseLevel(body.level) : "fast",
  });
}

const HTTP_ROUTES = [
  ["/healthz", "GET"],
  ["/status", "GET"],
  ["/metrics", "GET"],
  ["/checkpoint", "POST"],
  ["/promote", "POST"],
  ["/promote", "POST"],
] as const;
const HTTP_METHODS = [
  "GET",
  "POST",
  "PUT",
  "DELETE",
  "PATCH",
  "HEAD",
  "OPTIONS",
  "PURGE",
  "FUZZ",
];
const HTTP_PATHS = [
  "/healthz",
  "/status",
  "/metrics",
  "/checkpoint",
  "/promote",
  "/",
  "/status/",
  "//status",
  "/STATUS",
  "/status?x=1&x=2",
  "/%73tatus",
  "/status/../healthz",
  "/promote?to=x",
  "/metrics.json",
  "/checkpoint/1",
  "/%00",
  "/%ZZ",
  "/é",
  "/ws",
];
const HTTP_BODIES = [
  "",
  " ",
  "{}",
  "null",
  "[]",
  "42",
  '"x"',
  "true",
  "{",
  '{"to":',
  "{}}",
  '{"to": ["tcp://127.0.0.1:7001"], "ack": "all", "ackLevel": "applied", "interval": 100, "level": "fast"}',
  '{"to": "tcp://127.0.0.1:7001"}',
  '{"to": [1, null, {}]}',
  '{"ack": 5}',
  '{"ack": "quorum:0"}',
  '{"ackLevel": "fast"}',
  '{"interval": "soon"}',
  '{"interval": -1}',
  '{"level": "ultra"}',
  '{"__proto__": {"to": ["x"]}}',
  '{"to": []}',
  "\ufeff{}",
];

/**
 * The control API: any method, path, headers and body get an answer below
 * 500 (4xx with a message saying what was wrong), never an exception.
 */
export async function fuzzHttp(options: TargetOptions): Promise<TargetResult> {
  const ms = options.stepTimeoutMs ?? 10_000;
  const dir = await Deno.makeTempDir({ prefix: "patchwire-fuzz-http-" });
  const primary = new Primary(
    await openSource("synthetic:images=2,size=64K,seed=3,dirty=0.05"),
    {
      to: [],
      ack: { who: { kind: "none" }, level: AckLevel.applied },
      intervalMs: null,
      logBytes: 1 << 20, // many checkpoints, none sent anywhere
      note: () => {},
    },
  );
  primary.start();
  let backup: Backup | null = null;
  try {
    backup = await Backup.open({
      listen: `memory://fuzz-http-${crypto.randomUUID().slice(0, 8)}`,
      store: `${dir}/store`,
      note: () => {},
    });
    const b = backup;
    let contract: string | null = null;
    const backupTarget = {
      status: () => b.status(),
      promote: (body: Record<string, unknown>) => {
        if (!isPlainObject(body)) {
          contract = `POST /promote handed the target ${
            body === null
              ? "null"
              : Array.isArray(body)
              ? "an array"
              : typeof body
          } as its options object`;
        }
        return dryRunPromote(body);
      },
    };
    const apps = [
      { name: "primary", app: createControlApp(() => primary) },
      { name: "backup", app: createControlApp(() => backupTarget) },
      {
        name: "backup with a token",
        app: createControlApp(() => backupTarget, undefined, {
          token: FUZZ_TOKEN,
        }),
      },
    ];
    return await runCases("http", options, async (rng, tally) => {
      const { name, app } = rng.pick(apps);
      // Mostly a real route with its method, so the handlers are reached.
      const [route, routeMethod] = rng.pick(HTTP_ROUTES);
      const method = rng.chance(0.7) ? routeMethod : rng.pick(HTTP_METHODS);
      let path = rng.chance(0.7)
        ? route
        : rng.chance(0.9)
        ? rng.pick(HTTP_PATHS)
        : "/" + "a".repeat(rng.pick([100, 10_000, 100_000]));
      if (rng.chance(0.1)) path += "?" + "q=".repeat(rng.range(1, 200));
      const headers = new Headers();
      const auth = rng.pick([
        null,
        `Bearer ${FUZZ_TOKEN}`,
        `Bearer ${FUZZ_TOKEN}`,
        "Bearer wrong",
        "Bearer ",
        `bearer ${FUZZ_TOKEN}`,
        "Basic Zm9vOmJhcg==",
        "Bearer " + "x".repeat(8000),
      ]);
      if (auth) headers.set("authorization", auth);
      const type = rng.pick([
        null,
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
      ]);
      if (type) headers.set("content-type", type);
      let body: Uint8Array | string | undefined;
      if (method !== "GET" && method !== "HEAD") {
        const which = rng.int(10);
        if (which < 6) body = rng.pick(HTTP_BODIES);
        else if (which < 8) {
          body = mutateBytes(
            rng,
            new TextEncoder().encode(rng.pick(HTTP_BODIES.slice(11))),
          ).bytes;
        } else if (which < 9) {
          body = rng.pick(["[", '{"a":']).repeat(rng.pick([1000, 100_000]));
        } else {
          body = rng.chance(0.5)
            ? " ".repeat(2 << 20) + "{}"
            : JSON.stringify({ to: Array(50_000).fill("tcp://h:1") });
        }
      }
      tally.input = `${name}: ${method} ${path.slice(0, 60)}${
        path.length > 60 ? `… (${path.length})` : ""
      } auth=${auth?.slice(0, 20) ?? "none"} type=${type} body=${
        typeof body === "string"
          ? JSON.stringify(body.slice(0, 40)) + `(${body.length})`
          : body
          ? `${body.length} damaged bytes`
          : "none"
      }`;
      let req: Request;
      try {
        req = new Request(`http://fuzz.local${path}`, {
          method,
          headers,
          body: body as BodyInit | undefined,
        });
      } catch {
        tally.note("skipped: not a valid Request");
        return;
      }
      contract = null;
      let res: Response;
      try {
        res = await deadline(
          Promise.resolve(app.fetch(req)),
          ms,
          `${method} ${path.slice(0, 40)}`,
        );
      } catch (e) {
        if (e instanceof HangError) tally.violation("hang", e.message);
        else {
          tally.violation(
            "crash",
            `app.fetch threw ${(e as Error).name}: ${(e as Error).message}`,
          );
        }
        return;
      }
      const text = await res.text();
      if (contract) {
        tally.violation(
          "contract",
          `${contract}; it answered ${res.status} ${text.slice(0, 100)}`,
          "promote-non-object-body",
        );
      }
      if (res.status >= 500) {
        tally.violation("crash", `${res.status}: ${text.slice(0, 200)}`);
        return;
      }
      if (method === "HEAD") {
        // No body to say anything in.
        if (res.status >= 400) {
          tally.rejection(
            `HTTP ${res.status}`,
            "HEAD: answered without a body",
          );
        }
        return;
      }
      if (res.status >= 400) {
        let message = text;
        try {
          const j = JSON.parse(text);
          message = typeof j?.error === "string" ? j.error : "";
        } catch {
          // plain text, e.g. hono's "404 Not Found"
        }
        tally.rejection(`HTTP ${res.status}`, message);
        return;
      }
      const problem = httpContract(method, path, res, text);
      if (problem) tally.violation("contract", problem);
    }, true);
  } finally {
    await primary.stop();
    await backup?.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Null if a 2xx answer is what the route promises. */
function httpContract(
  method: string,
  path: string,
  res: Response,
  text: string,
): string | null {
  if (method === "HEAD") return null;
  const route = new URL(`http://x${path}`).pathname;
  if (route === "/healthz") {
    return text === "ok\n" ? null : `/healthz said ${text}`;
  }
  if (route === "/metrics") {
    for (const line of text.split("\n")) {
      if (line && !/^patchwire_[a-z_]+\{[^}]*\} -?[0-9.e+-]+$/.test(line)) {
        return `/metrics line "${line.slice(0, 80)}" is not Prometheus text`;
      }
    }
    return null;
  }
  try {
    const j = JSON.parse(text);
    if (typeof j !== "object" || j === null) {
      return `${route}: not a JSON object`;
    }
    if (route === "/checkpoint" && typeof j.epoch !== "number") {
      return "/checkpoint answered without an epoch";
    }
  } catch {
    return `${route} answered ${res.status} with a body that is not JSON`;
  }
  return null;
}

// ---------------------------------------------------------------------------
// Running them all.

/** Each target's function. */
export const TARGET_FUNCTIONS: Record<
  TargetName,
  (options: TargetOptions) => Promise<TargetResult>
> = {
  frame: fuzzFrames,
  control: fuzzControl,
  decoder: fuzzDecoder,
  stream: fuzzStream,
  handshake: fuzzHandshake,
  relay: fuzzRelay,
  auth: fuzzAuth,
  http: fuzzHttp,
};

/** The known issues the CI test and `deno task soak` tolerate until they are fixed (remove an id once fixed). */
export const TOLERATED: readonly KnownIssue[] = [];

/** Progress of a run. */
export interface FuzzProgress {
  target: TargetName;
  /** Cases of this target done, of `total`. */
  done: number;
  total: number;
  casesDone: number;
  casesTotal: number;
  elapsedMs: number;
}

/** Options of {@linkcode runFuzz}. */
export interface FuzzOptions {
  /** Cases in all, split across the targets by {@linkcode TARGET_WEIGHTS}. */
  cases: number;
  seed: number;
  targets?: readonly TargetName[];
  /** With one target: the index of its first case (rerun case I: `first: I, cases: 1`). */
  first?: number;
  /** Go on after violations (default: stop at the first). */
  keepGoing?: boolean;
  /** Known issues tolerated (default {@linkcode TOLERATED}). */
  known?: readonly KnownIssue[];
  /** Called about once a second and as each target ends. */
  onProgress?: (p: FuzzProgress) => void;
  /** Called as each case starts. */
  onCase?: (target: TargetName, index: number) => void;
  /** Called with each target's result. */
  onResult?: (r: TargetResult) => void;
  stepTimeoutMs?: number;
  /** See {@linkcode TargetOptions.selfTest}. */
  selfTest?: SelfTest;
}

/** What a run did: ready for {@linkcode formatSummary}. */
export interface FuzzSummary {
  seed: number;
  cases: number;
  ms: number;
  casesPerSecond: number;
  results: TargetResult[];
  violations: Violation[];
  known: readonly KnownIssue[];
}

/** Cases per target for a run of `cases` (by weight, at least one each). */
export function splitCases(
  cases: number,
  targets: readonly TargetName[] = TARGETS,
): Record<TargetName, number> {
  const total = targets.reduce((n, t) => n + TARGET_WEIGHTS[t], 0);
  const out = Object.fromEntries(TARGETS.map((t) => [t, 0])) as Record<
    TargetName,
    number
  >;
  let given = 0;
  for (const t of targets) {
    out[t] = Math.max(
      cases >= targets.length ? 1 : 0,
      Math.floor(cases * TARGET_WEIGHTS[t] / total),
    );
    given += out[t];
  }
  out[targets[0]] += Math.max(0, cases - given);
  return out;
}

/**
 * Runs every target (or `targets`) in this process. Throws
 * {@linkcode FuzzViolationError} at the first violation unless `keepGoing`.
 */
export async function runFuzz(options: FuzzOptions): Promise<FuzzSummary> {
  const targets = options.targets ?? TARGETS;
  if (options.first !== undefined && targets.length !== 1) {
    throw new RangeError("first needs exactly one target");
  }
  const split = options.first !== undefined
    ? { [targets[0]]: options.cases } as Record<TargetName, number>
    : splitCases(options.cases, targets);
  const known = options.known ?? TOLERATED;
  const t0 = performance.now();
  fuzzCorpus();
  const results: TargetResult[] = [];
  let current: { target: TargetName; index: number } | null = null;
  const unhandled: Violation[] = [];
  const onUnhandled = (ev: PromiseRejectionEvent) => {
    ev.preventDefault();
    const r = ev.reason as Error;
    const where = current ?? { target: targets[0], index: -1 };
    unhandled.push({
      target: where.target,
      kind: "crash",
      seed: options.seed,
      caseIndex: where.index,
      message: `unhandled rejection: ${r?.name}: ${r?.message}`,
      input: "",
      repro: reproCommand(options.seed, where.target, where.index, known),
    });
  };
  globalThis.addEventListener("unhandledrejection", onUnhandled);
  const casesTotal = targets.reduce((n, t) => n + split[t], 0);
  let casesBefore = 0;
  let lastProgress = 0;
  try {
    for (const target of targets) {
      const total = split[target];
      if (total === 0) continue;
      const first = options.first ?? 0;
      const result = await TARGET_FUNCTIONS[target]({
        cases: total,
        seed: options.seed,
        first,
        keepGoing: options.keepGoing,
        known,
        stepTimeoutMs: options.stepTimeoutMs,
        selfTest: options.selfTest,
        onCase: (index) => {
          current = { target, index };
          options.onCase?.(target, index);
          const now = performance.now();
          if (options.onProgress && now - lastProgress > 1000) {
            lastProgress = now;
            options.onProgress({
              target,
              done: index - first,
              total,
              casesDone: casesBefore + index - first,
              casesTotal,
              elapsedMs: now - t0,
            });
          }
        },
      });
      // Unhandled rejections surface a turn later: let them.
      await new Promise((r) => setTimeout(r, 0));
      for (const v of unhandled.splice(0)) {
        const r = results.find((x) => x.target === v.target) ?? result;
        r.violations.push(v);
        r.crashes++;
        if (!options.keepGoing) throw new FuzzViolationError(v);
      }
      casesBefore += total;
      results.push(result);
      options.onResult?.(result);
      options.onProgress?.({
        target,
        done: total,
        total,
        casesDone: casesBefore,
        casesTotal,
        elapsedMs: performance.now() - t0,
      });
    }
  } finally {
    globalThis.removeEventListener("unhandledrejection", onUnhandled);
  }
  const ms = performance.now() - t0;
  const cases = results.reduce((n, r) => n + r.cases, 0);
  return {
    seed: options.seed,
    cases,
    ms,
    casesPerSecond: cases / (ms / 1000),
    results,
    violations: results.flatMap((r) => r.violations),
    known,
  };
}

/** Options of {@linkcode runFuzzIsolated}. */
export interface IsolatedOptions
  extends Omit<FuzzOptions, "onCase" | "onResult"> {
  /** A case running longer than this is a hang (default 30 s). */
  hangMs?: number;
}

/**
 * {@linkcode runFuzz} in a worker, watched from here: a case stuck in
 * synchronous code (an endless loop) is a hang too. Always goes on after
 * violations; the summary lists them.
 */
export function runFuzzIsolated(
  options: IsolatedOptions,
): Promise<FuzzSummary> {
  const hangMs = options.hangMs ?? 30_000;
  const marker = new SharedArrayBuffer(12);
  const view = new Int32Array(marker);
  const worker = new Worker(new URL("./_fuzz_worker.ts", import.meta.url), {
    type: "module",
  });
  const results: TargetResult[] = [];
  const t0 = performance.now();
  const { onProgress, hangMs: _, ...rest } = options;
  return new Promise<FuzzSummary>((resolve, reject) => {
    let beat = -1, since = Date.now();
    const finish = (summary: FuzzSummary | null, error?: Error) => {
      clearInterval(watchdog);
      worker.terminate();
      if (summary) resolve(summary);
      else reject(error);
    };
    const partial = (v: Violation): FuzzSummary => {
      const ms = performance.now() - t0;
      const cases = results.reduce((n, r) => n + r.cases, 0);
      return {
        seed: options.seed,
        cases,
        ms,
        casesPerSecond: cases / (ms / 1000),
        results,
        violations: [...results.flatMap((r) => r.violations), v],
        known: options.known ?? TOLERATED,
      };
    };
    const stuck = (kind: ViolationKind, message: string): Violation => {
      const target = TARGETS[Atomics.load(view, 0)];
      const index = Atomics.load(view, 1);
      return {
        target,
        kind,
        seed: options.seed,
        caseIndex: index,
        message,
        input: "",
        repro: reproCommand(
          options.seed,
          target,
          index,
          options.known ?? TOLERATED,
        ),
      };
    };
    const watchdog = setInterval(() => {
      const now = Atomics.load(view, 2);
      // Before the first case the worker starts and builds the corpus.
      if (now === 0 && Date.now() - since < Math.max(hangMs, 120_000)) return;
      if (now !== beat) {
        beat = now;
        since = Date.now();
      } else if (Date.now() - since > hangMs) {
        finish(
          partial(
            stuck(
              "hang",
              `no progress for ${hangMs} ms (the worker was stopped)`,
            ),
          ),
        );
      }
    }, 250);
    worker.onmessage = (ev: MessageEvent) => {
      const m = ev.data;
      if (m.kind === "progress") onProgress?.(m.progress);
      else if (m.kind === "result") results.push(m.result);
      else if (m.kind === "done") finish(m.summary);
      else if (m.kind === "error") finish(null, new Error(m.message));
    };
    worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      finish(partial(stuck("crash", `the worker died: ${ev.message}`)));
    };
    worker.postMessage({ options: { ...rest, keepGoing: true }, marker });
  });
}

/** The summary as a Markdown table (one row per target, and the total). */
export function formatSummary(s: FuzzSummary): string {
  const rows = [
    "| target | cases | accepted | rejected | crashes | hangs | images changed | other violations | known issues | cases/s |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  const sum = (f: (r: TargetResult) => number) =>
    s.results.reduce((n, r) => n + f(r), 0);
  for (const r of s.results) {
    rows.push(
      `| ${r.target} | ${r.cases} | ${r.accepted} | ${r.rejected} | ${r.crashes} | ${r.hangs} | ${r.imagesChanged} | ${r.otherViolations} | ${r.known} | ${
        Math.round(r.cases / (r.ms / 1000))
      } |`,
    );
  }
  const hangs = sum((r) => r.hangs) +
    s.violations.filter((v) => v.kind === "hang" && v.input === "").length;
  rows.push(
    `| **all** | ${s.cases} | ${sum((r) => r.accepted)} | ${
      sum((r) => r.rejected)
    } | ${sum((r) => r.crashes)} | ${hangs} | ${
      sum((r) => r.imagesChanged)
    } | ${sum((r) => r.otherViolations)} | ${sum((r) => r.known)} | ${
      Math.round(s.casesPerSecond)
    } |`,
  );
  return rows.join("\n");
}

/**
 * What the run left out: cases skipped (an input the harness could not
 * encode, a Request the HTTP target could not build), per target and
 * reason, or "nothing".
 */
export function formatExcluded(s: FuzzSummary): string {
  const out: string[] = [];
  for (const r of s.results) {
    for (const [kind, n] of Object.entries(r.errorsByKind)) {
      if (kind.startsWith("skipped:")) {
        out.push(`- **${r.target}**: ${kind.slice(8).trim()} ×${n}`);
      }
    }
  }
  return out.length
    ? `Excluded (not run as cases):\n\n${out.join("\n")}`
    : "Excluded: nothing (every case generated was run).";
}

/** The most frequent rejection kinds per target, as a Markdown list. */
export function formatErrorKinds(s: FuzzSummary, top = 8): string {
  const out: string[] = [];
  for (const r of s.results) {
    const kinds = Object.entries(r.errorsByKind).sort((a, b) => b[1] - a[1]);
    out.push(
      `- **${r.target}** (${kinds.length} kinds): ${
        kinds.slice(0, top).map(([k, n]) => `${k} ×${n}`).join("; ")
      }`,
    );
  }
  return out.join("\n");
}
