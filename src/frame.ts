/**
 * Frames: the versioned, checksummed unit that crosses the network.
 *
 * Every frame is one msgpack array:
 *
 *     [magic "PWR", version, flags, type, epoch, imageId, body, checksum]
 *
 * - `flags`  the codec level: 0 fast, 1 max (other values are refused).
 * - `type`   1 PATCH (one chunk of one image's patch), 2 COMMIT (ends an epoch:
 *            the image table with each image's digest after applying it).
 * - `body`   msgpack bytes of the type's object (see {@linkcode PatchBody},
 *            {@linkcode CommitBody}).
 * - `checksum` XXH32 of `body`, seeded with epoch, type and flags so that a
 *            frame moved to another epoch or type is rejected too.
 *
 * Decoding checks each field and names what was wrong and what was expected.
 * @module
 */

import { Packr } from "msgpackr/pack";
import { Unpackr } from "msgpackr/unpack";
import { xxh32 } from "./checksum.ts";
import { type Level, levelCode, levelFromCode } from "./level.ts";

/** Frame magic: the first element of every frame. */
export const FRAME_MAGIC = "PWR";
/** Wire format version this build writes and accepts. */
export const FRAME_VERSION = 4;

/** How a patch's op stream or LZ section is compressed. */
export const SectionCodec = { RAW: 0, ZSTD: 1, LZMA2: 2 } as const;
/** A section codec number. */
export type SectionCodec = typeof SectionCodec[keyof typeof SectionCodec];

/** Frame types. */
export const FrameType = { PATCH: 1, COMMIT: 2 } as const;
/** A frame type number. */
export type FrameType = typeof FrameType[keyof typeof FrameType];

/** One chunk of one image's patch for an epoch. */
export interface PatchBody {
  /** Epoch the receiver must hold committed before applying this one. */
  base: number;
  /** Image slot (position in the commit's image table). */
  slot: number;
  /** Chunk number within this image's patch, from 0. */
  chunk: number;
  /** Number of page operations in the chunk. */
  pages: number;
  /** Op stream (see patch.ts), compressed per `opsCodec`. */
  ops: Uint8Array;
  /** Uncompressed size of the op stream. */
  opsSize: number;
  /** {@linkcode SectionCodec}: 0 raw, 1 zstd, 2 raw LZMA2. */
  opsCodec: number;
  /**
   * LZ section: the LZ pages, compressed with their reference pages as the
   * zstd prefix or the LZMA2 preset dictionary (per `lzCodec`).
   */
  lz?: Uint8Array;
  /** Codec of the LZ section: 1 zstd (also when absent), 2 raw LZMA2. */
  lzCodec?: number;
  /** Uncompressed size of the LZ section (4096 × LZ pages). */
  lzSize?: number;
}

/** One image's entry in a commit frame. */
export interface CommitImage {
  id: string;
  size: number;
  /**
   * Bytes in use after the epoch, for a sized image (a guest's device state,
   * whose size changes between checkpoints: contents, then zeros up to
   * `size`); absent when every byte is contents. Covered by the digest.
   */
  length?: number;
  /** PATCH chunks sent for this image in this epoch. */
  chunks: number;
  /** Digest lanes after applying the epoch. */
  digestLo: number;
  digestHi: number;
}

/** Ends an epoch. */
export interface CommitBody {
  base: number;
  pageSize: number;
  blockSize: number;
  images: CommitImage[];
}

/** A decoded frame. */
export type Frame =
  | {
    type: typeof FrameType.PATCH;
    level: Level;
    epoch: number;
    imageId: string;
    body: PatchBody;
  }
  | {
    type: typeof FrameType.COMMIT;
    level: Level;
    epoch: number;
    imageId: string;
    body: CommitBody;
  };

const packr = new Packr({ useRecords: false, variableMapSize: true });
const unpackr = new Unpackr({ useRecords: false });

/** A decoded value for an error message (JSON cannot show a bigint). */
function show(v: unknown): string {
  return typeof v === "string" ? JSON.stringify(v) : String(v);
}

function seedOf(epoch: number, type: number, flags: number): number {
  return (Math.imul(epoch >>> 0, 0x9e3779b1) ^ (type << 8) ^ flags ^
    Math.floor(epoch / 4294967296)) >>> 0;
}

/**
 * Encodes a frame.
 * @example
 * ```ts
 * const bytes = encodeFrame(FrameType.COMMIT, "fast", 7, "", commitBody);
 * decodeFrame(bytes).epoch; // 7
 * ```
 */
export function encodeFrame(
  type: FrameType,
  level: Level,
  epoch: number,
  imageId: string,
  body: PatchBody | CommitBody,
): Uint8Array {
  const flags = levelCode(level);
  const bodyBytes = packr.pack(body);
  const checksum = xxh32(bodyBytes, seedOf(epoch, type, flags));
  const frame = packr.pack([
    FRAME_MAGIC,
    FRAME_VERSION,
    flags,
    type,
    epoch,
    imageId,
    bodyBytes,
    checksum,
  ]);
  // A plain Uint8Array view, not msgpackr's Buffer (whose slice() does not copy).
  return new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength);
}

/** Thrown for any frame that fails a check; the message names the field. */
export class FrameError extends Error {
  override name = "FrameError";
}

function isUint(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0;
}

function need(cond: boolean, message: string): asserts cond {
  if (!cond) throw new FrameError(message);
}

/** Decodes and verifies a frame; throws {@linkcode FrameError} on anything unexpected. */
export function decodeFrame(bytes: Uint8Array): Frame {
  let outer: unknown;
  try {
    outer = unpackr.unpack(bytes);
  } catch (e) {
    throw new FrameError(
      `frame is not valid msgpack (${bytes.length} bytes): ${
        (e as Error).message
      }`,
    );
  }
  need(
    Array.isArray(outer) && outer.length === 8,
    "frame must be an 8-element msgpack array",
  );
  const [magic, version, flags, type, epoch, imageId, body, checksum] =
    outer as unknown[];
  need(
    magic === FRAME_MAGIC,
    `bad frame magic ${show(magic)}, expected "${FRAME_MAGIC}"`,
  );
  need(
    version === FRAME_VERSION,
    `unsupported frame version ${version}, expected ${FRAME_VERSION}`,
  );
  need(
    flags === 0 || flags === 1,
    `bad frame flags ${show(flags)}, expected 0 (level fast) or 1 (level max)`,
  );
  need(
    type === FrameType.PATCH || type === FrameType.COMMIT,
    `unknown frame type ${type}, expected 1 or 2`,
  );
  need(
    isUint(epoch),
    `bad frame epoch ${epoch}, expected a non-negative integer`,
  );
  need(typeof imageId === "string", "frame image id must be a string");
  need(body instanceof Uint8Array, "frame body must be binary");
  need(isUint(checksum), "frame checksum must be an unsigned integer");
  const actual = xxh32(body, seedOf(epoch, type, flags));
  need(
    actual === checksum,
    `frame checksum mismatch for epoch ${epoch} type ${type}: computed ${
      actual.toString(16)
    }, frame says ${checksum.toString(16)}`,
  );
  const level = levelFromCode(flags as number);
  let decoded: unknown;
  try {
    decoded = unpackr.unpack(body);
  } catch (e) {
    throw new FrameError(
      `frame body is not valid msgpack: ${(e as Error).message}`,
    );
  }
  need(
    typeof decoded === "object" && decoded !== null,
    "frame body must be a map",
  );
  if (type === FrameType.PATCH) {
    const b = decoded as PatchBody;
    need(
      isUint(b.base) && isUint(b.slot) && isUint(b.chunk) && isUint(b.pages) &&
        isUint(b.opsSize) &&
        (b.opsCodec === SectionCodec.RAW || b.opsCodec === SectionCodec.ZSTD ||
          b.opsCodec === SectionCodec.LZMA2) &&
        b.ops instanceof Uint8Array,
      `patch body must have base, slot, chunk, pages, ops, opsSize and opsCodec 0 (raw), 1 (zstd) or 2 (LZMA2); opsCodec is ${
        show(b.opsCodec)
      }`,
    );
    need(
      b.lz === undefined || (b.lz instanceof Uint8Array && isUint(b.lzSize)),
      "patch body lz section needs binary lz and integer lzSize",
    );
    need(
      b.lzCodec === undefined || b.lzCodec === SectionCodec.ZSTD ||
        b.lzCodec === SectionCodec.LZMA2,
      `patch body lzCodec is ${
        show(b.lzCodec)
      }, expected 1 (zstd) or 2 (LZMA2)`,
    );
    return { type, level, epoch, imageId, body: b };
  }
  const c = decoded as CommitBody;
  need(
    isUint(c.base) && isUint(c.pageSize) && isUint(c.blockSize) &&
      Array.isArray(c.images),
    "commit body must have base, pageSize, blockSize and images",
  );
  for (const image of c.images) {
    need(
      typeof image === "object" && image !== null &&
        typeof image.id === "string" && isUint(image.size) &&
        isUint(image.chunks) && isUint(image.digestLo) &&
        isUint(image.digestHi),
      "commit image entries need id, size, chunks, digestLo and digestHi",
    );
    need(
      image.length === undefined ||
        (isUint(image.length) && image.length <= image.size),
      `commit image "${image.id}" has length ${
        show(image.length)
      }, expected a byte count within its size ${image.size}`,
    );
  }
  return { type: FrameType.COMMIT, level, epoch, imageId, body: c };
}
