/**
 * Control messages between an upstream role (primary or relay) and a
 * downstream one (relay or backup), beside the codec's frames on the same
 * connection.
 *
 * Every control message is one msgpack array:
 *
 *     [magic "PWC", version, type, body]
 *
 * Codec frames start with "PWR" instead (`frame.ts`), so a receiver tells
 * them apart by the magic alone.
 *
 * The conversation, upstream → downstream unless marked:
 *
 *     HELLO  {token, images, epoch, blockSize, durable, level, term}
 *     then, where the downstream requires a client certificate (`peer_auth.ts`):
 *     CHALLENGE {nonce}                                downstream → upstream
 *     PROOF  {chain, serverName, signature}            (or ERROR: no certificate)
 *     STATE  {epoch, images (with digests), level}     downstream → upstream
 *     then either frames from STATE.epoch + 1 (catch-up from the retained log),
 *     or      BASE {epoch, slot, offset, size, data}…  BASE_END {epoch, images}
 *             then frames from BASE_END.epoch + 1
 *     or      REJOIN {epoch}, then per image: REGION_QUERY {epoch, slot, unit,
 *             regions, rehash} answered by REGION_DIGESTS {epoch, slot, unit,
 *             digests} (64 KiB regions, then the pages of those that differ),
 *             then BASE only for the pages that differ, BASE_END {epoch, images}:
 *             a base sync over what the downstream already holds (`rejoin.ts`)
 *     ACK    {epoch, level}                            downstream → upstream, any time
 *     REGION_QUERY / REGION_DIGESTS                    any time after the handshake, with
 *                                                      rehash: online verify of what the
 *                                                      downstream stores, at `epoch`
 *     PING   {}                                        upstream → downstream, any time
 *     PONG   {}                                        downstream → upstream: answers a
 *                                                      PING, and is sent unasked at most
 *                                                      once a second while data arrives
 *     ERROR  {message}                                 either way, then close
 *
 * PING and PONG tell the upstream its peer is alive when no ack is due (an
 * idle link, a long base sync): a link that hears nothing for its timeout
 * is closed and reconnected, rather than waiting out TCP's retransmissions.
 * A downstream acks only at the levels HELLO's `level` asks for and above
 * (a `received` ack nobody needs would be a second small write per epoch,
 * which TLS listeners, without TCP_NODELAY, hold back for a round trip).
 * @module
 */

import { Packr } from "msgpackr/pack";
import { Unpackr } from "msgpackr/unpack";

/** Control message magic. */
export const CONTROL_MAGIC = "PWC";
/** Control protocol version this build speaks. */
export const CONTROL_VERSION = 5;

/** How far a peer has taken an epoch; higher levels imply the lower ones. */
export const AckLevel = { received: 0, applied: 1, durable: 2 } as const;
/** An ack level number. */
export type AckLevel = typeof AckLevel[keyof typeof AckLevel];
/** Ack level names, by number. */
export const ACK_LEVEL_NAMES = ["received", "applied", "durable"] as const;
/** An ack level name. */
export type AckLevelName = typeof ACK_LEVEL_NAMES[number];

/** An image as the handshake names it. */
export interface ImageInfo {
  id: string;
  size: number;
}

/** An image with its digest at some epoch. */
export interface ImageDigestInfo extends ImageInfo {
  /** Bytes in use, for a sized image (see `CommitImage.length`); absent: all of `size`. */
  length?: number;
  digestLo: number;
  digestHi: number;
}

/** Bytes of a CHALLENGE's nonce. */
export const CHALLENGE_BYTES = 32;

/**
 * The downstream asks the upstream to prove it holds a certificate: a fresh
 * random nonce for this connection only (see `peer_auth.ts`).
 */
export interface Challenge {
  type: "challenge";
  nonce: Uint8Array;
}

/**
 * The upstream's answer to a CHALLENGE: its certificate chain and a
 * signature with the certificate's key over the server name it dialed and
 * the challenge's nonce.
 */
export interface Proof {
  type: "proof";
  /** PEM: the upstream's certificate first. */
  chain: string;
  serverName: string;
  signature: Uint8Array;
}

/** Upstream introduces itself and what it replicates. */
export interface Hello {
  type: "hello";
  token: string;
  images: ImageInfo[];
  /** Upstream's latest epoch. */
  epoch: number;
  blockSize: number;
  /** Whether upstream needs durable acks (the downstream then fsyncs). */
  durable: boolean;
  /** The lowest ack level the upstream's policy needs. */
  level: AckLevel;
  /**
   * The cluster term of the primary the stream comes from (0 outside a
   * cluster). A downstream that has seen a higher term refuses it: that
   * primary was replaced (fencing, see `cluster.ts`). Every frame on the
   * connection belongs to this term.
   */
  term: number;
}

/** Downstream's committed state: where catch-up starts. */
export interface State {
  type: "state";
  epoch: number;
  /** Empty for an empty store. */
  images: ImageDigestInfo[];
  /**
   * How far the downstream holds `epoch` (applied in memory, or durable):
   * if the upstream continues from it, this is its ack. Acks proper only
   * follow the handshake, so none can be taken for another lineage.
   */
  level: AckLevel;
}

/** One compressed range of one image of a base sync. */
export interface Base {
  type: "base";
  epoch: number;
  slot: number;
  offset: number;
  /** Uncompressed bytes. */
  size: number;
  /** zstd-compressed bytes. */
  data: Uint8Array;
}

/** Ends a base sync: the images' digests at its epoch. */
export interface BaseEnd {
  type: "base_end";
  epoch: number;
  images: ImageDigestInfo[];
}

/**
 * The BASE messages that follow, up to BASE_END, are a base sync of `epoch`
 * over the images the downstream holds now: it copies them and overwrites
 * only the ranges sent (rejoin by block hashes).
 */
export interface Rejoin {
  type: "rejoin";
  epoch: number;
}

/** Smallest and largest region a REGION_QUERY may name. */
export const MIN_REGION_UNIT = 4096;
/** Largest region a REGION_QUERY may name. */
export const MAX_REGION_UNIT = 1 << 30;

/**
 * Upstream asks for the digests of regions of one image: `regions` are u32
 * region numbers (little-endian; empty: every region) of `unit` bytes each.
 * With `rehash`, the downstream hashes the bytes it stores again rather
 * than answering from the block hashes it keeps (online verify), once what
 * it applied up to `epoch` is in its store.
 */
export interface RegionQuery {
  type: "region_query";
  epoch: number;
  slot: number;
  unit: number;
  regions: Uint8Array;
  rehash: boolean;
}

/** The answer to a REGION_QUERY: two u32 (little-endian) per region asked, at the downstream's `epoch`. */
export interface RegionDigests {
  type: "region_digests";
  epoch: number;
  slot: number;
  unit: number;
  digests: Uint8Array;
}

/** Downstream took `epoch` (and every earlier one) to `level`. */
export interface Ack {
  type: "ack";
  epoch: number;
  level: AckLevel;
}

/** Upstream asks whether its peer is alive. */
export interface Ping {
  type: "ping";
}

/** Downstream is alive (the answer to a PING, or unasked while receiving). */
export interface Pong {
  type: "pong";
}

/** The sender refuses to go on, and says why. */
export interface ErrorMessage {
  type: "error";
  message: string;
}

/** Any control message. */
export type ControlMessage =
  | Hello
  | Challenge
  | Proof
  | State
  | Base
  | BaseEnd
  | Rejoin
  | RegionQuery
  | RegionDigests
  | Ack
  | Ping
  | Pong
  | ErrorMessage;

const TYPE_CODES = {
  hello: 1,
  state: 2,
  base: 3,
  base_end: 4,
  ack: 5,
  error: 6,
  ping: 7,
  pong: 8,
  challenge: 9,
  proof: 10,
  rejoin: 11,
  region_query: 12,
  region_digests: 13,
} as const;
const TYPE_NAMES = Object.fromEntries(
  Object.entries(TYPE_CODES).map(([k, v]) => [v, k]),
) as Record<number, ControlMessage["type"]>;

const packr = new Packr({ useRecords: false, variableMapSize: true });
const unpackr = new Unpackr({ useRecords: false });

/** A control message failed a check; the message names what and what was expected. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/**
 * Encodes a control message.
 * @example
 * ```ts
 * const bytes = encodeControl({ type: "ack", epoch: 7, level: AckLevel.applied });
 * decodeControl(bytes); // { type: "ack", epoch: 7, level: 1 }
 * ```
 */
export function encodeControl(message: ControlMessage): Uint8Array {
  const { type, ...body } = message;
  const bytes = packr.pack([
    CONTROL_MAGIC,
    CONTROL_VERSION,
    TYPE_CODES[type],
    body,
  ]);
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// msgpack: fixarray header, then fixstr(3) "PW?" — frames and control
// messages differ in the third letter of the magic.
function magicLetter(bytes: Uint8Array): number {
  return bytes.length >= 5 && bytes[1] === 0xa3 && bytes[2] === 0x50 &&
      bytes[3] === 0x57
    ? bytes[4]
    : -1;
}

/** True if `bytes` is a control message (magic "PWC"), false for anything else (a codec frame has "PWR"). */
export function isControl(bytes: Uint8Array): boolean {
  return magicLetter(bytes) === 0x43;
}

/** True if `bytes` starts like a codec frame (magic "PWR"). */
export function isFrame(bytes: Uint8Array): boolean {
  return magicLetter(bytes) === 0x52;
}

function isUint(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function need(cond: boolean, message: string): asserts cond {
  if (!cond) throw new ProtocolError(message);
}

function checkImages(v: unknown, digests: boolean, what: string): void {
  need(Array.isArray(v), `${what}: images must be an array`);
  for (const i of v as Record<string, unknown>[]) {
    need(
      typeof i === "object" && i !== null && typeof i.id === "string" &&
        isUint(i.size) &&
        (!digests || (isUint(i.digestLo) && isUint(i.digestHi))),
      `${what}: each image needs id and size${
        digests ? ", digestLo and digestHi" : ""
      }`,
    );
    need(
      i.length === undefined ||
        (digests && isUint(i.length) && i.length <= (i.size as number)),
      `${what}: image ${JSON.stringify(i.id)} has length ${
        String(i.length)
      }, expected a byte count within its size ${i.size}`,
    );
  }
}

/** Decodes and checks a control message; throws {@linkcode ProtocolError}. */
export function decodeControl(bytes: Uint8Array): ControlMessage {
  let outer: unknown;
  try {
    outer = unpackr.unpack(bytes);
  } catch (e) {
    throw new ProtocolError(
      `control message is not valid msgpack (${bytes.length} bytes): ${
        (e as Error).message
      }`,
    );
  }
  need(
    Array.isArray(outer) && outer.length === 4,
    "control message must be a 4-element msgpack array",
  );
  const [magic, version, code, body] = outer as unknown[];
  need(
    magic === CONTROL_MAGIC,
    `bad control magic ${
      typeof magic === "string" ? JSON.stringify(magic) : String(magic)
    }, expected "${CONTROL_MAGIC}"`,
  );
  need(
    version === CONTROL_VERSION,
    `unsupported control protocol version ${version}, expected ${CONTROL_VERSION}`,
  );
  // A number, not a key that merely looks like one ("6", 6n).
  const type = typeof code === "number" ? TYPE_NAMES[code] : undefined;
  need(
    type !== undefined,
    `unknown control message type ${code}, expected 1..13`,
  );
  need(
    typeof body === "object" && body !== null,
    `${type} body must be a map`,
  );
  const b = body as Record<string, unknown>;
  switch (type) {
    case "hello":
      need(
        typeof b.token === "string" && isUint(b.epoch) &&
          isUint(b.blockSize) && typeof b.durable === "boolean" &&
          (b.level === 0 || b.level === 1 || b.level === 2) && isUint(b.term),
        "hello needs token, epoch, blockSize, durable, level 0, 1 or 2 and term",
      );
      checkImages(b.images, false, "hello");
      break;
    case "challenge":
      need(
        b.nonce instanceof Uint8Array && b.nonce.length === CHALLENGE_BYTES,
        `challenge needs a ${CHALLENGE_BYTES}-byte nonce`,
      );
      break;
    case "proof":
      need(
        typeof b.chain === "string" && b.chain.length <= 64 << 10 &&
          typeof b.serverName === "string" && b.serverName.length <= 255 &&
          b.signature instanceof Uint8Array && b.signature.length <= 1024,
        "proof needs chain (PEM, at most 64 KiB), serverName (at most 255 characters) and a signature (at most 1024 bytes)",
      );
      break;
    case "state":
      need(
        isUint(b.epoch) && (b.level === 0 || b.level === 1 || b.level === 2),
        "state needs an epoch and level 0, 1 or 2",
      );
      checkImages(b.images, true, "state");
      break;
    case "base":
      need(
        isUint(b.epoch) && isUint(b.slot) && isUint(b.offset) &&
          isUint(b.size) && b.data instanceof Uint8Array,
        "base needs epoch, slot, offset, size and binary data",
      );
      break;
    case "base_end":
      need(isUint(b.epoch), "base_end needs an epoch");
      checkImages(b.images, true, "base_end");
      break;
    case "rejoin":
      need(isUint(b.epoch), "rejoin needs an epoch");
      break;
    case "region_query":
      need(
        isUint(b.epoch) && isUint(b.slot) && isUint(b.unit) &&
          b.unit >= MIN_REGION_UNIT && b.unit <= MAX_REGION_UNIT &&
          (b.unit & (b.unit - 1)) === 0 && b.regions instanceof Uint8Array &&
          b.regions.length % 4 === 0 && typeof b.rehash === "boolean",
        `region_query needs epoch, slot, a power-of-two unit from ${MIN_REGION_UNIT} to ${MAX_REGION_UNIT} bytes, regions (u32 list) and rehash`,
      );
      break;
    case "region_digests":
      need(
        isUint(b.epoch) && isUint(b.slot) && isUint(b.unit) &&
          b.digests instanceof Uint8Array && b.digests.length % 8 === 0,
        "region_digests needs epoch, slot, unit and digests (8 bytes each)",
      );
      break;
    case "ack":
      need(
        isUint(b.epoch) && (b.level === 0 || b.level === 1 || b.level === 2),
        "ack needs an epoch and level 0, 1 or 2",
      );
      break;
    case "error":
      need(typeof b.message === "string", "error needs a message");
      break;
    case "ping":
    case "pong":
      break;
  }
  // The checked type last: a "type" key in the body must not override it.
  return { ...b, type } as ControlMessage;
}
