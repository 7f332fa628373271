/**
 * A minimal RFC 6455 WebSocket client (`ws:` and `wss:`), used by `ws.ts`
 * instead of the standard `WebSocket` for the client side.
 *
 * Why it exists: with Deno 2.9's `WebSocket` client, a small request/reply
 * exchange over `ws://` or `wss://` on loopback took ~43 ms per round trip
 * (0.1 ms over `tcp://`). strace showed the client switching Nagle's
 * algorithm on (`setsockopt(TCP_NODELAY, 0)`) and writing a frame with a
 * payload of some size (30 kB here; 100 bytes went in one write) as two
 * writes, the header and then the payload. The payload then waits until the
 * peer ACKs the header, and a peer in a request/reply exchange delays that
 * ACK (Linux delayed ACK, ~40 ms). `WebSocket` has no TCP_NODELAY option.
 *
 * This client dials with `Deno.connect` (plus `Deno.startTls` for `wss:`),
 * turns Nagle off, and writes each frame, header and masked payload, in one
 * write. Payloads above {@linkcode WS_CHUNK_BYTES} are masked into a scratch
 * buffer chunk by chunk, with the header in the first write. `send` resolves
 * once the whole frame is written to the socket, so TCP backpressure reaches
 * the caller. TLS writes are awaited to completion, so the end of a message
 * is never left in a TLS buffer, which the standard client can do over
 * `wss:` (denoland/deno#36862).
 *
 * The server side: `Deno.serve` turns Nagle off for plain TCP but not for
 * TLS, and its WebSocket writes a frame with a larger payload, or two
 * messages in a row, as two TLS records; the second then waits for our
 * delayed ACK of the first (measured: 44 ms for a 30 kB server-to-client
 * message, and for a reply that follows a window acknowledgement). We cannot
 * change the server's socket, so over `wss:` this client makes its ACKs
 * prompt: after reading, if it has not written anything by the next turn of
 * the event loop, it sends an empty unsolicited pong (RFC 6455 5.5.3; the
 * server ignores it) that carries the ACK. It also waits a moment after the
 * TLS handshake before sending the upgrade request (see
 * {@linkcode connectWebSocket}).
 *
 * {@linkcode WsClientSocket} has the part of the `WebSocket` API that
 * `ws.ts` uses ({@linkcode WebSocketLike}): `readyState`, `bufferedAmount`,
 * `send`, `close` and `message` / `error` / `close` events. Binary messages
 * arrive as `ArrayBuffer`s. Differences: `send` returns a promise that
 * settles once the frame is written (it rejects if the write fails; the
 * failure is also reported as `error` and `close` events, as in a
 * `WebSocket`), and {@linkcode connectWebSocket} resolves once the socket is
 * open, so there is no `open` event. No extensions or subprotocols are
 * negotiated.
 * @module
 */

import { clearImmediate, setImmediate } from "node:timers";
import { TransportError } from "../src/transport.ts";
import { LINGER_MS, parseHostPort } from "./_length_prefixed.ts";

/** What `ws.ts` needs of a WebSocket: the standard one and {@linkcode WsClientSocket} both have it. */
export interface WebSocketLike {
  binaryType: BinaryType;
  /** The `WebSocket.CONNECTING` .. `WebSocket.CLOSED` values. */
  readonly readyState: number;
  /** Bytes passed to `send` that are not written yet. */
  readonly bufferedAmount: number;
  /** A promise (settling once written) or nothing (queued, standard `WebSocket`). */
  send(data: string | Uint8Array): void | Promise<void>;
  close(code?: number, reason?: string): void;
  addEventListener(
    type: "message",
    listener: (event: MessageEvent) => void,
  ): void;
  addEventListener(type: "error", listener: (event: Event) => void): void;
  addEventListener(
    type: "close",
    listener: (event: CloseEvent) => void,
  ): void;
}

/** Options for {@linkcode connectWebSocket}. */
export interface WsClientOptions {
  /** `wss:`: CA certificates (PEM) trusted besides the system roots. */
  caCerts?: string[];
  /** Give up if the socket is not open after this many ms (TCP, TLS and the upgrade). */
  timeoutMs: number;
  /** Largest incoming message (all its frames); default {@linkcode WS_MAX_INCOMING_BYTES}. */
  maxMessageBytes?: number;
}

/** Default limit on incoming messages: the standard client's (it refuses frames above 64 MiB). */
export const WS_MAX_INCOMING_BYTES = 64 << 20;

/** Payload bytes masked and written per write; bigger frames take several writes. */
export const WS_CHUNK_BYTES = 256 << 10;

/** Incoming bytes are read this much at a time; bigger payloads are read straight into their message. */
const READ_BUFFER_BYTES = 64 << 10;

/** The upgrade response's head must fit in this. */
const MAX_RESPONSE_HEAD_BYTES = 16 << 10;

/** Where a frame's payload starts in the scratch buffer: 4-byte aligned, room for the longest header before it. */
const PAYLOAD_AT = 16;

const ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const OP_CONTINUATION = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;

const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

const CLOSE_NO_STATUS = 1005;
const CLOSE_ABNORMAL = 1006;
const CLOSE_PROTOCOL_ERROR = 1002;
const CLOSE_INVALID_DATA = 1007;
const CLOSE_TOO_BIG = 1009;

const encoder = new TextEncoder();
const utf8 = new TextDecoder("utf-8", { fatal: true });
const latin1 = new TextDecoder("latin1");

/** A code a close frame may carry (RFC 6455 section 7.4, IANA registry). */
function isValidCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
    (code >= 3000 && code <= 4999);
}

/** `reason` cut to the 123 bytes a close frame has room for, at a character boundary. */
function closeReasonBytes(reason: string): Uint8Array {
  let bytes = encoder.encode(reason);
  while (bytes.length > 123) {
    reason = reason.slice(0, -1);
    bytes = encoder.encode(reason);
  }
  return bytes;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The incoming byte stream: a read buffer, refilled from the connection. */
class FrameReader {
  readonly #conn: Deno.Conn;
  readonly #buffer = new Uint8Array(READ_BUFFER_BYTES);
  #start = 0;
  #end = 0;
  /** Called after every read that got bytes. */
  onData: () => void = () => {};

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  get buffered(): number {
    return this.#end - this.#start;
  }

  /** Reads until `n` bytes are buffered (`n` ≤ the buffer); false at end-of-stream first. */
  async fill(n: number): Promise<boolean> {
    if (this.#start + n > this.#buffer.length) {
      this.#buffer.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    while (this.#end - this.#start < n) {
      const got = await this.#conn.read(this.#buffer.subarray(this.#end));
      if (got === null) return false;
      this.#end += got;
      this.onData();
    }
    return true;
  }

  /** A view of the next `n` buffered bytes, consumed; valid until the next `fill`. */
  take(n: number): Uint8Array {
    const view = this.#buffer.subarray(this.#start, this.#start + n);
    this.#start += n;
    return view;
  }

  /** Reads all of `into`, buffered bytes first, the rest straight from the connection; false at end-of-stream first. */
  async readFully(into: Uint8Array): Promise<boolean> {
    const fromBuffer = Math.min(this.buffered, into.length);
    into.set(this.take(fromBuffer));
    let filled = fromBuffer;
    while (filled < into.length) {
      const got = await this.#conn.read(into.subarray(filled));
      if (got === null) return false;
      filled += got;
      this.onData();
    }
    return true;
  }

  /** The index just past the first `\r\n\r\n` in the buffer, or -1. */
  headEnd(): number {
    const b = this.#buffer;
    for (let i = this.#start; i + 3 < this.#end; i++) {
      if (
        b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10
      ) {
        return i + 4 - this.#start;
      }
    }
    return -1;
  }

  /** Reads whatever arrives next into the buffer; false at end-of-stream or when full. */
  async more(): Promise<boolean> {
    if (this.#start > 0) {
      this.#buffer.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    if (this.#end === this.#buffer.length) return false;
    const got = await this.#conn.read(this.#buffer.subarray(this.#end));
    if (got === null) return false;
    this.#end += got;
    this.onData();
    return true;
  }
}

/** A frame's or message's payload is bad: fail the connection with `code`. */
class ProtocolError extends Error {
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.code = code;
  }
}

/**
 * The client end of an open WebSocket over a `Deno.Conn` with Nagle off. Made
 * by {@linkcode connectWebSocket}; see the module doc for how it differs from
 * the standard `WebSocket`.
 */
export class WsClientSocket extends EventTarget implements WebSocketLike {
  /** The URL it is connected to. */
  readonly url: string;

  readonly #conn: Deno.Conn;
  readonly #reader: FrameReader;
  readonly #maxMessage: number;
  #readyState = OPEN;

  // Writing: one frame at a time, in the order of the calls.
  readonly #scratch = new Uint8Array(PAYLOAD_AT + WS_CHUNK_BYTES);
  readonly #scratch32 = new Uint32Array(this.#scratch.buffer);
  readonly #scratchView = new DataView(this.#scratch.buffer);
  readonly #random = new Uint8Array(256);
  #randomAt = this.#random.length;
  #writeChain: Promise<void> = Promise.resolve();
  #writeError: Error | null = null;
  #bufferedAmount = 0;
  #writesStarted = 0;

  // ACK nudges (see #onData).
  readonly #nudgeAcks: boolean;
  #writesAtRead = 0;
  #nudgeTimer: ReturnType<typeof setImmediate> | undefined;

  // Closing.
  #closeSent = false;
  #closeReceived: { code: number; reason: string } | null = null;
  #failure = ""; // why the connection failed ("" if it did not)
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #terminated = false;
  readonly #finished: Promise<void>;

  /** Takes over `conn` (open, upgraded) and starts reading from `reader`. */
  constructor(
    url: string,
    conn: Deno.Conn,
    reader: FrameReader,
    maxMessageBytes: number,
    nudgeAcks: boolean,
  ) {
    super();
    this.url = url;
    this.#conn = conn;
    this.#reader = reader;
    this.#maxMessage = maxMessageBytes;
    this.#nudgeAcks = nudgeAcks;
    reader.onData = this.#onData;
    this.#onData(); // the 101 answer wants its ACK too
    this.#finished = this.#run();
  }

  /** Always `"arraybuffer"`: binary messages arrive as `ArrayBuffer`s. */
  get binaryType(): BinaryType {
    return "arraybuffer";
  }

  set binaryType(value: BinaryType) {
    if (value !== "arraybuffer") {
      throw new TypeError(
        `binaryType "${value}" is not supported: expected "arraybuffer"`,
      );
    }
  }

  get readyState(): number {
    return this.#readyState;
  }

  get bufferedAmount(): number {
    return this.#bufferedAmount;
  }

  /**
   * Sends a text (string) or binary message as one frame. Resolves once the
   * frame is written to the socket (the caller may then reuse `data`);
   * rejects if the socket is closing or the write fails. A caller may ignore
   * the promise: a rejection is never unhandled.
   */
  send(data: string | Uint8Array): Promise<void> {
    if (this.#readyState !== OPEN) {
      const done = Promise.reject(
        new TransportError(
          `cannot send to ${this.url}: the WebSocket is ${
            this.#readyState === CLOSING ? "closing" : "closed"
          }`,
        ),
      );
      done.catch(() => {});
      return done;
    }
    return typeof data === "string"
      ? this.#frame(OP_TEXT, encoder.encode(data))
      : this.#frame(OP_BINARY, data);
  }

  /**
   * Starts the closing handshake after the frames already sent: sends a close
   * frame with `code` (1000 by default) and `reason` (cut to 123 bytes), then
   * waits for the server's close frame and end of stream, at most
   * {@linkcode LINGER_MS}. The `close` event follows. Throws a RangeError for
   * a code a client must not send.
   */
  close(code = 1000, reason = ""): void {
    if (!isValidCloseCode(code)) {
      throw new RangeError(
        `close code ${code} cannot be sent: expected 1000-1003, 1007-1014 or 3000-4999`,
      );
    }
    if (this.#readyState !== OPEN) return;
    this.#readyState = CLOSING;
    this.#sendClose(code, reason);
  }

  /**
   * Drops the connection now (no closing handshake, if none happened) and
   * resolves once reading and writing stopped and the `close` event fired.
   */
  terminate(): Promise<void> {
    this.#abort("the connection was terminated locally");
    return this.#finished;
  }

  /** Listeners for `message` (`data`: string or ArrayBuffer), `error` (an ErrorEvent) and `close` events. */
  override addEventListener(
    type: "message",
    listener: (event: MessageEvent) => void,
  ): void;
  override addEventListener(
    type: "error",
    listener: (event: Event) => void,
  ): void;
  override addEventListener(
    type: "close",
    listener: (event: CloseEvent) => void,
  ): void;
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    listener: ((event: never) => void) | EventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void {
    // The typed overloads only narrow what the events are.
    super.addEventListener(
      type,
      listener as EventListenerOrEventListenerObject | null,
      options,
    );
  }

  // -------------------------------------------------------------------------
  // Writing

  /** Queues one frame behind the others; see {@linkcode send}. */
  #frame(opcode: number, payload: Uint8Array): Promise<void> {
    this.#bufferedAmount += payload.length;
    const written = this.#writeChain.then(() =>
      this.#writeFrame(opcode, payload)
    ).finally(() => {
      this.#bufferedAmount -= payload.length;
    });
    // One handler keeps the chain going and makes an ignored rejection handled.
    this.#writeChain = written.catch(() => {});
    return written;
  }

  /** Writes a frame: header and the first chunk of masked payload at once, then the other chunks. */
  async #writeFrame(opcode: number, payload: Uint8Array): Promise<void> {
    if (this.#writeError) throw this.#writeError;
    const length = payload.length;
    const out = this.#scratch;
    const headerLength = length < 126 ? 6 : length < 0x10000 ? 8 : 14;
    let start = PAYLOAD_AT - headerLength;
    out[start] = 0x80 | opcode; // FIN: every message is one frame
    if (length < 126) {
      out[start + 1] = 0x80 | length; // 0x80: masked
    } else if (length < 0x10000) {
      out[start + 1] = 0x80 | 126;
      this.#scratchView.setUint16(start + 2, length);
    } else {
      out[start + 1] = 0x80 | 127;
      this.#scratchView.setUint32(start + 2, Math.floor(length / 2 ** 32));
      this.#scratchView.setUint32(start + 6, length >>> 0);
    }
    this.#maskKey(out.subarray(PAYLOAD_AT - 4, PAYLOAD_AT));
    const mask = this.#scratch32[(PAYLOAD_AT - 4) >> 2];
    let offset = 0;
    do {
      const n = Math.min(WS_CHUNK_BYTES, length - offset);
      out.set(payload.subarray(offset, offset + n), PAYLOAD_AT);
      // Chunks start at multiples of 4, so the key lines up with words.
      const words = PAYLOAD_AT / 4 + (n >>> 2);
      for (let w = PAYLOAD_AT / 4; w < words; w++) this.#scratch32[w] ^= mask;
      for (let i = n & ~3; i < n; i++) {
        out[PAYLOAD_AT + i] ^= out[PAYLOAD_AT - 4 + (i & 3)];
      }
      await this.#writeAll(out.subarray(start, PAYLOAD_AT + n));
      offset += n;
      start = PAYLOAD_AT;
    } while (offset < length);
  }

  /** Four fresh random bytes (RFC 6455 wants an unpredictable key per frame). */
  #maskKey(into: Uint8Array): void {
    if (this.#randomAt + 4 > this.#random.length) {
      crypto.getRandomValues(this.#random);
      this.#randomAt = 0;
    }
    into.set(this.#random.subarray(this.#randomAt, this.#randomAt + 4));
    this.#randomAt += 4;
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    try {
      let at = 0;
      this.#writesStarted++;
      while (at < bytes.length) {
        at += await this.#conn.write(bytes.subarray(at));
      }
    } catch (error) {
      const reason = this.#terminated && this.#failure
        ? this.#failure
        : `writing to ${this.url} failed: ${errorText(error)}`;
      this.#writeError ??= new TransportError(reason, { cause: error });
      this.#abort(reason);
      throw this.#writeError;
    }
  }

  /**
   * After bytes arrived (`wss:` only): unless we write something by the next
   * turn of the event loop (a write carries the ACK), sends an empty
   * unsolicited pong. Why: `Deno.serve` leaves Nagle on for TLS connections,
   * so a server frame written as two TLS records (two messages in a row, or
   * a header and a large payload) holds the second until we ACK the first,
   * and Linux delays that ACK by up to 40 ms when we have nothing to send.
   */
  #onData = (): void => {
    this.#writesAtRead = this.#writesStarted;
    if (!this.#nudgeAcks || this.#nudgeTimer !== undefined) return;
    // setImmediate: after the microtasks a reply would be written in, and
    // without setTimeout's 1-2 ms granularity.
    this.#nudgeTimer = setImmediate(this.#nudge);
  };

  #nudge = (): void => {
    this.#nudgeTimer = undefined;
    if (
      this.#writesStarted === this.#writesAtRead &&
      this.#readyState === OPEN && !this.#terminated
    ) {
      this.#frame(OP_PONG, new Uint8Array(0)).catch(() => {});
    }
  };

  #sendClose(code: number | null, reason: string): void {
    if (this.#closeSent) return;
    this.#closeSent = true;
    let payload = new Uint8Array(0);
    if (code !== null) {
      const text = closeReasonBytes(reason);
      payload = new Uint8Array(2 + text.length);
      new DataView(payload.buffer).setUint16(0, code);
      payload.set(text, 2);
    }
    this.#frame(OP_CLOSE, payload).catch(() => {});
    this.#armCloseTimer();
  }

  /** Bounds the closing handshake: the connection is dropped after {@linkcode LINGER_MS}. */
  #armCloseTimer(): void {
    this.#closeTimer ??= setTimeout(() => {
      this.#abort(
        `${this.url} did not finish the closing handshake within ${LINGER_MS} ms`,
      );
    }, LINGER_MS);
  }

  // -------------------------------------------------------------------------
  // Reading and the end of the connection

  /** Reads frames until the end, then releases everything and fires the events. */
  async #run(): Promise<void> {
    try {
      await this.#readFrames();
      if (!this.#closeReceived && !this.#failure) {
        this.#failure =
          `${this.url} closed the connection without a close frame`;
      }
    } catch (error) {
      if (!this.#failure) {
        this.#failure = error instanceof ProtocolError
          ? error.message
          : `reading from ${this.url} failed: ${errorText(error)}`;
      }
      if (error instanceof ProtocolError && !this.#terminated) {
        // Tell the server why, then wait (bounded) for its close and end of stream.
        this.#readyState = CLOSING;
        this.#sendClose(error.code, error.message);
        try {
          await this.#drainUntilEnd();
        } catch {
          // Gone anyway.
        }
      }
    }
    this.#release();
    await this.#writeChain;
    this.#readyState = CLOSED;
    const received = this.#closeReceived;
    if (this.#failure) {
      this.dispatchEvent(new ErrorEvent("error", { message: this.#failure }));
    }
    this.dispatchEvent(
      new CloseEvent("close", {
        code: this.#failure || !received ? CLOSE_ABNORMAL : received.code,
        reason: this.#failure ? "" : received?.reason ?? "",
        wasClean: !this.#failure,
      }),
    );
  }

  /** Dispatches messages until end of stream; returns after the server's close frame and its end of stream. */
  async #readFrames(): Promise<void> {
    const reader = this.#reader;
    let fragments: Uint8Array[] | null = null;
    let fragmentsOpcode = 0;
    let fragmentsBytes = 0;
    while (true) {
      if (!await reader.fill(2)) {
        if (reader.buffered > 0) throw this.#cutShort();
        return;
      }
      const head = reader.take(2);
      const fin = (head[0] & 0x80) !== 0;
      const opcode = head[0] & 0x0f;
      if (head[0] & 0x70) {
        throw new ProtocolError(
          CLOSE_PROTOCOL_ERROR,
          `a frame from ${this.url} has reserved bits set (no extension was negotiated)`,
        );
      }
      if (head[1] & 0x80) {
        throw new ProtocolError(
          CLOSE_PROTOCOL_ERROR,
          `a frame from ${this.url} is masked; server frames must not be`,
        );
      }
      let length = head[1] & 0x7f;
      if (length === 126) {
        if (!await reader.fill(2)) throw this.#cutShort();
        const bytes = reader.take(2);
        length = bytes[0] << 8 | bytes[1];
      } else if (length === 127) {
        if (!await reader.fill(8)) throw this.#cutShort();
        const bytes = reader.take(8);
        const view = new DataView(bytes.buffer, bytes.byteOffset, 8);
        length = view.getUint32(0) * 2 ** 32 + view.getUint32(4);
      }

      if (opcode >= OP_CLOSE) {
        if (!fin || length > 125) {
          throw new ProtocolError(
            CLOSE_PROTOCOL_ERROR,
            `a control frame from ${this.url} is fragmented or over 125 bytes`,
          );
        }
        if (!await reader.fill(length)) throw this.#cutShort();
        const payload = reader.take(length);
        if (opcode === OP_PING) {
          if (!this.#closeSent) {
            this.#frame(OP_PONG, payload.slice()).catch(() => {});
          }
        } else if (opcode === OP_CLOSE) {
          this.#onCloseFrame(payload);
          try {
            await this.#drainUntilEnd();
          } catch {
            // Both close frames are through: how the stream ends does not matter.
          }
          return;
        } else if (opcode !== OP_PONG) {
          throw new ProtocolError(
            CLOSE_PROTOCOL_ERROR,
            `unknown control opcode ${opcode} from ${this.url}`,
          );
        }
        continue;
      }

      if (
        opcode !== OP_CONTINUATION && opcode !== OP_TEXT && opcode !== OP_BINARY
      ) {
        throw new ProtocolError(
          CLOSE_PROTOCOL_ERROR,
          `unknown data opcode ${opcode} from ${this.url}`,
        );
      }
      if ((opcode === OP_CONTINUATION) !== (fragments !== null)) {
        throw new ProtocolError(
          CLOSE_PROTOCOL_ERROR,
          opcode === OP_CONTINUATION
            ? `a continuation frame from ${this.url} continues no message`
            : `a new message from ${this.url} started before the previous one ended`,
        );
      }
      const total = fragmentsBytes + length;
      if (total > this.#maxMessage) {
        throw new ProtocolError(
          CLOSE_TOO_BIG,
          `a message of ${total}${
            fin ? "" : "+"
          } bytes from ${this.url} is over the limit of ${this.#maxMessage} bytes`,
        );
      }
      const payload = new Uint8Array(length);
      if (!await reader.readFully(payload)) throw this.#cutShort();
      if (fin && fragments === null) {
        this.#deliver(opcode, payload);
      } else if (!fin) {
        if (fragments === null) {
          fragments = [];
          fragmentsOpcode = opcode;
        }
        fragments.push(payload);
        fragmentsBytes = total;
      } else {
        fragments!.push(payload);
        const whole = new Uint8Array(total);
        let at = 0;
        for (const part of fragments!) {
          whole.set(part, at);
          at += part.length;
        }
        fragments = null;
        fragmentsBytes = 0;
        this.#deliver(fragmentsOpcode, whole);
      }
    }
  }

  #deliver(opcode: number, payload: Uint8Array<ArrayBuffer>): void {
    let data: string | ArrayBuffer;
    if (opcode === OP_TEXT) {
      try {
        data = utf8.decode(payload);
      } catch {
        throw new ProtocolError(
          CLOSE_INVALID_DATA,
          `a text message from ${this.url} is not valid UTF-8`,
        );
      }
    } else {
      data = payload.buffer;
    }
    this.dispatchEvent(new MessageEvent("message", { data }));
  }

  /** The server's close frame: answered (if we did not close first) with its code. */
  #onCloseFrame(payload: Uint8Array): void {
    let code = CLOSE_NO_STATUS;
    let reason = "";
    if (payload.length === 1) {
      throw new ProtocolError(
        CLOSE_PROTOCOL_ERROR,
        `a close frame from ${this.url} has a 1-byte payload`,
      );
    }
    if (payload.length >= 2) {
      code = payload[0] << 8 | payload[1];
      if (!isValidCloseCode(code)) {
        throw new ProtocolError(
          CLOSE_PROTOCOL_ERROR,
          `a close frame from ${this.url} has the invalid code ${code}`,
        );
      }
      try {
        reason = utf8.decode(payload.subarray(2));
      } catch {
        throw new ProtocolError(
          CLOSE_INVALID_DATA,
          `the close reason from ${this.url} is not valid UTF-8`,
        );
      }
    }
    this.#closeReceived = { code, reason };
    if (this.#readyState === OPEN) this.#readyState = CLOSING;
    this.#sendClose(code === CLOSE_NO_STATUS ? null : code, "");
  }

  /** After the close frames: reads (and drops) until the server ends the stream. */
  async #drainUntilEnd(): Promise<void> {
    const reader = this.#reader;
    reader.take(reader.buffered);
    while (await reader.more()) reader.take(reader.buffered);
  }

  #cutShort(): Error {
    return new Error(`${this.url} ended the stream in the middle of a frame`);
  }

  /** Closes the connection now: pending reads and writes end. */
  #abort(reason: string): void {
    if (this.#terminated) return;
    this.#terminated = true;
    if (!this.#failure && !this.#closeReceived) this.#failure = reason;
    this.#release();
  }

  #release(): void {
    clearTimeout(this.#closeTimer);
    if (this.#nudgeTimer !== undefined) clearImmediate(this.#nudgeTimer);
    this.#nudgeTimer = undefined;
    if (this.#readyState === OPEN) this.#readyState = CLOSING;
    this.#terminated = true;
    try {
      this.#conn.close();
    } catch {
      // Closed already.
    }
  }
}

/**
 * Opens a WebSocket to `url` (`ws:` or `wss:`; its path is the endpoint):
 * TCP with Nagle off, TLS for `wss:` (system roots plus `options.caCerts`,
 * checked against the URL's host), then the HTTP/1.1 upgrade. Rejects with a
 * {@linkcode TransportError} naming `url` and what went wrong (refused,
 * certificate, not a 101 answer, a bad Sec-WebSocket-Accept, timeout).
 */
export async function connectWebSocket(
  url: URL,
  options: WsClientOptions,
): Promise<WsClientSocket> {
  const secure = url.protocol === "wss:";
  const { hostname, port } = parseHostPort(url, {
    defaultPort: secure ? 443 : 80,
    allowPath: true,
  });
  const ms = options.timeoutMs;
  const abort = new AbortController();
  let conn: Deno.Conn | null = null;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    abort.abort();
    try {
      conn?.close(); // ends a pending TLS handshake or read
    } catch {
      // Closed already.
    }
  }, ms);
  let step = "";
  try {
    const tcp = await Deno.connect({ hostname, port, signal: abort.signal });
    conn = tcp;
    tcp.setNoDelay(true);
    if (secure) {
      step = "TLS handshake failed: ";
      const tls = await Deno.startTls(tcp, {
        hostname,
        caCerts: options.caCerts,
      });
      conn = tls;
      await tls.handshake();
      // A TLS 1.3 server sends session tickets right after the handshake, and
      // Deno.serve (Nagle on for TLS) then holds its 101 answer until we ACK
      // them, which Linux delays ~40 ms. Sent a moment later, the request
      // carries that ACK (measured: 43 ms to open a wss: socket without this
      // pause, 3 ms with it).
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    step = "the WebSocket upgrade failed: ";
    const reader = await upgrade(conn, url);
    clearTimeout(timer);
    if (timedOut) throw new Error("timed out");
    return new WsClientSocket(
      url.href,
      conn,
      reader,
      options.maxMessageBytes ?? WS_MAX_INCOMING_BYTES,
      secure, // see #onData: only Deno.serve's TLS connections keep Nagle on
    );
  } catch (error) {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch {
      // Closed by the timeout already.
    }
    const detail = timedOut
      ? `no answer within ${ms} ms (connectTimeoutMs)`
      : step + errorText(error);
    throw new TransportError(`cannot connect to ${url.href}: ${detail}`, {
      cause: error,
    });
  }
}

/** Sends the upgrade request and checks the answer; returns the reader holding any bytes after it. */
async function upgrade(conn: Deno.Conn, url: URL): Promise<FrameReader> {
  const key = new Uint8Array(16);
  crypto.getRandomValues(key);
  const keyText = btoa(String.fromCharCode(...key));
  const request = [
    `GET ${url.pathname}${url.search} HTTP/1.1`,
    `Host: ${url.host}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    `Sec-WebSocket-Key: ${keyText}`,
    "Sec-WebSocket-Version: 13",
    "User-Agent: patchwire",
    "",
    "",
  ].join("\r\n");
  const bytes = encoder.encode(request);
  for (let at = 0; at < bytes.length;) {
    at += await conn.write(bytes.subarray(at));
  }

  const reader = new FrameReader(conn);
  let headLength: number;
  while ((headLength = reader.headEnd()) < 0) {
    if (reader.buffered >= MAX_RESPONSE_HEAD_BYTES) {
      throw new Error(
        `the response head is over ${MAX_RESPONSE_HEAD_BYTES} bytes`,
      );
    }
    if (!await reader.more()) {
      throw new Error(
        reader.buffered === 0
          ? "the server closed the connection without answering"
          : "the server closed the connection in the middle of its answer",
      );
    }
  }
  const lines = latin1.decode(reader.take(headLength)).split("\r\n");
  const status = /^HTTP\/1\.1 (\d{3})(?: (.*))?$/.exec(lines[0]);
  if (!status) {
    throw new Error(
      `expected an HTTP/1.1 status line, got ${
        JSON.stringify(lines[0].slice(0, 80))
      }`,
    );
  }
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers.set(
      name,
      headers.has(name) ? `${headers.get(name)}, ${value}` : value,
    );
  }
  if (status[1] !== "101") {
    const body = await readSmallBody(reader, headers);
    throw new Error(
      `expected HTTP status 101 (Switching Protocols), got ${status[1]}${
        status[2] ? ` ${status[2]}` : ""
      }${body ? ` (${JSON.stringify(body)})` : ""}`,
    );
  }
  const expectedAccept = await acceptFor(keyText);
  const problems: string[] = [];
  if (headers.get("upgrade")?.toLowerCase() !== "websocket") {
    problems.push(
      `Upgrade is ${
        JSON.stringify(headers.get("upgrade") ?? "")
      }, expected "websocket"`,
    );
  }
  if (!/(^|,)\s*upgrade\s*(,|$)/i.test(headers.get("connection") ?? "")) {
    problems.push(
      `Connection is ${
        JSON.stringify(headers.get("connection") ?? "")
      }, expected "Upgrade"`,
    );
  }
  if (headers.get("sec-websocket-accept") !== expectedAccept) {
    problems.push(
      `Sec-WebSocket-Accept is ${
        JSON.stringify(headers.get("sec-websocket-accept") ?? "")
      }, expected ${JSON.stringify(expectedAccept)}`,
    );
  }
  for (const name of ["sec-websocket-extensions", "sec-websocket-protocol"]) {
    if (headers.has(name)) {
      problems.push(
        `the server chose ${name} ${
          JSON.stringify(headers.get(name))
        }, which was not offered`,
      );
    }
  }
  if (problems.length) {
    throw new Error(`bad 101 answer: ${problems.join("; ")}`);
  }
  return reader;
}

/** The Sec-WebSocket-Accept value for `key`: base64(SHA-1(key + GUID)). */
async function acceptFor(key: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    encoder.encode(key + ACCEPT_GUID),
  );
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/** Up to 200 characters of a refusal's body, for the error (reads at most 1 KiB more). */
async function readSmallBody(
  reader: FrameReader,
  headers: Map<string, string>,
): Promise<string> {
  const length = Number(headers.get("content-length") ?? "0");
  if (Number.isSafeInteger(length) && length > 0 && length <= 1024) {
    try {
      await reader.fill(length);
    } catch {
      // Show what arrived.
    }
  }
  const text = latin1.decode(reader.take(Math.min(reader.buffered, 1024)));
  return text.trim().slice(0, 200);
}
