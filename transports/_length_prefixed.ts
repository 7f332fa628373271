/**
 * Message framing for byte-stream transports (TCP, TLS, a QUIC stream): each
 * message is a 4-byte big-endian length followed by that many bytes.
 *
 * {@linkcode LengthPrefixedConnection} turns any {@linkcode ByteDuplex} into a
 * {@linkcode Connection}. Reading is done by a pump that reads ahead at most
 * {@linkcode READ_AHEAD_BYTES} past what `receive` consumed, so a reader that
 * stops reading stops pulling from the socket and the kernel's (or QUIC's) flow
 * control stalls the writer: that is the backpressure.
 *
 * The pump reads into slabs of {@linkcode SLAB_BYTES} that the buffered chunks
 * share (no allocation per read), and, while a `receive` waits for at least
 * {@linkcode DIRECT_READ_BYTES} more bytes of a message and nothing is
 * buffered, straight into that message's array: big messages are then copied
 * once, by the kernel (or QUIC), not a second time in JavaScript.
 *
 * The end of the file holds the small helpers every adapter shares: URL
 * checks ({@linkcode parseHostPort}), {@linkcode withTimeout} and
 * {@linkcode AcceptQueue}.
 * @module
 */

import {
  type Connection,
  DEFAULT_MAX_MESSAGE_BYTES,
  TransportError,
} from "../src/transport.ts";
import { faultPointAfter, faultsArmed } from "../src/_fault.ts";

/** Bytes the read pump buffers ahead of `receive` before it stops reading. */
export const READ_AHEAD_BYTES = 1 << 20;

/** How long `close` waits for the peer to acknowledge the end of the stream. */
export const LINGER_MS = 2_000;

/** Messages at most this big are copied behind their header and written at once. */
const COALESCE_BYTES = 64 << 10;

/** Size of the buffers the pump reads ahead into (chunks are views of them). */
export const SLAB_BYTES = 256 << 10;

/** A slab with less room than this left is replaced. */
const MIN_SLAB_READ_BYTES = 16 << 10;

/** Consumed slabs kept for reuse, per connection. */
const SPARE_SLABS = 2;

/** A `receive` missing at least this many bytes of a message has them read straight into it. */
export const DIRECT_READ_BYTES = 64 << 10;

/** A bidirectional byte stream as the framing needs it. */
export interface ByteDuplex {
  /** Where the other end is, for logs. */
  readonly remote: string;
  /**
   * Reads some incoming bytes into `into` (never empty) and returns the view
   * of `into` they fill, or `null` at the peer's end-of-stream. Only one read
   * at a time. A BYOB stream read transfers `into`'s buffer: the returned view
   * is then over a new `ArrayBuffer` (same memory, same offset) and `into`,
   * with every other view of its old buffer, is detached.
   */
  read(into: Uint8Array): Promise<Uint8Array | null>;
  /** Writes all of `bytes`; resolves once the transport took them. */
  write(bytes: Uint8Array): Promise<void>;
  /** Ends the outgoing direction after what was written (TCP/QUIC FIN). */
  closeWrite(): Promise<void>;
  /** Releases the underlying resource now; pending reads and writes fail. Idempotent. */
  destroy(): void;
}

/** A {@linkcode ByteDuplex} over a `Deno.Conn` (TCP or TLS). */
export function duplexFromConn(conn: Deno.Conn, remote: string): ByteDuplex {
  let destroyed = false;
  return {
    remote,
    async read(into) {
      const n = await conn.read(into);
      return n === null ? null : into.subarray(0, n);
    },
    async write(bytes) {
      // conn.write may take only part of a large buffer; loop over views, no copies.
      let offset = 0;
      while (offset < bytes.length) {
        offset += await conn.write(bytes.subarray(offset));
      }
    },
    closeWrite: () => conn.closeWrite(),
    destroy() {
      if (destroyed) return;
      destroyed = true;
      try {
        conn.close();
      } catch {
        // Already closed by a failed operation: nothing left to release.
      }
    },
  };
}

/** Options for {@linkcode LengthPrefixedConnection}. */
export interface LengthPrefixedOptions {
  /** Larger incoming or outgoing messages are refused. */
  maxMessageBytes?: number;
  /** Bytes written before the first message (a handshake hello). */
  sendPreamble?: Uint8Array;
  /** Bytes the peer must send before its first message; checked and stripped. */
  expectPreamble?: Uint8Array;
}

/** Wraps a caught error as a {@linkcode TransportError} with context. */
export function transportError(what: string, cause: unknown): TransportError {
  if (cause instanceof TransportError) return cause;
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new TransportError(`${what}: ${detail}`, { cause });
}

/** Checks an outgoing message against the limit; the error names both sizes. */
export function checkMessageSize(
  size: number,
  max: number,
  direction: "send" | "receive",
): void {
  if (size > max) {
    throw new TransportError(
      `cannot ${direction} a message of ${size} bytes: the limit is ${max} bytes (maxMessageBytes)`,
    );
  }
}

/** A message being received: its array and how much of it is filled. */
interface DirectTarget {
  out: Uint8Array;
  filled: number;
}

/** A {@linkcode Connection} carrying length-prefixed messages over a byte stream. */
export class LengthPrefixedConnection implements Connection {
  readonly remote: string;
  readonly closed: Promise<void>;

  readonly #duplex: ByteDuplex;
  readonly #max: number;
  #preamble: Uint8Array | null;
  readonly #resolveClosed: () => void;

  // Read side: chunks read ahead of `receive`, the first one consumed from #headOffset.
  #chunks: Uint8Array[] = [];
  #head = 0;
  #headOffset = 0;
  #buffered = 0;
  #eof = false;
  #readError: TransportError | null = null;
  #dataWaiter: PromiseWithResolvers<void> | null = null;
  #spaceWaiter: PromiseWithResolvers<void> | null = null;
  #receiving = false;
  /** A message `receive` is filling, for the pump to read straight into. */
  #direct: DirectTarget | null = null;
  /** Settled when `receive` next stops: waits for data, or returns. */
  #readerStopped: PromiseWithResolvers<void> | null = null;
  /** The slab the pump reads into, from #slabUsed on. */
  #slab: Uint8Array = new Uint8Array(SLAB_BYTES);
  #slabUsed = 0;
  /** Slabs whose chunks were all consumed (see #consume). */
  #spareSlabs: Uint8Array[] = [];

  // Write side: frames are written one after another through this chain.
  #writeChain: Promise<void> = Promise.resolve();
  /** Where frames are assembled; free again once their write resolved. */
  #frame = new Uint8Array(4 + COALESCE_BYTES);
  #frameView = new DataView(this.#frame.buffer);
  #pendingSends = 0;
  /** The received stream broke its framing: nothing after it is a message. */
  #garbled = false;

  #closing = false; // closed by either side or broken: sends reject
  #localClosed = false; // close() called: receive returns null
  #closeReason = "";
  #destroyed = false;
  #lingerDone: PromiseWithResolvers<void> | null = null;
  #closeDone: Promise<void> | null = null;

  constructor(duplex: ByteDuplex, options: LengthPrefixedOptions = {}) {
    this.#duplex = duplex;
    this.remote = duplex.remote;
    this.#max = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.#preamble = options.expectPreamble ?? null;
    const closed = Promise.withResolvers<void>();
    this.closed = closed.promise;
    this.#resolveClosed = closed.resolve;
    this.#pump();
    const hello = options.sendPreamble;
    if (hello) {
      this.#writeChain = duplex.write(hello).catch((error) =>
        this.#fail(transportError(`sending to ${this.remote} failed`, error))
      );
    }
  }

  send(message: Uint8Array): Promise<void> {
    if (this.#closing) {
      return Promise.reject(
        new TransportError(
          `cannot send to ${this.remote}: the connection is closed (${this.#closeReason})`,
        ),
      );
    }
    try {
      checkMessageSize(message.length, this.#max, "send");
    } catch (error) {
      return Promise.reject(error);
    }
    this.#pendingSends++;
    const written = this.#writeChain.then(() => this.#writeFrame(message));
    // The chain must not break on one failure: later sends report their own.
    this.#writeChain = written.catch(() => {});
    return written.finally(() => this.#pendingSends--);
  }

  async #writeFrame(message: Uint8Array): Promise<void> {
    if (this.#closing) {
      throw new TransportError(
        `cannot send to ${this.remote}: the connection is closed (${this.#closeReason})`,
      );
    }
    const length = message.length;
    try {
      // Writes are sequential (#writeChain), so one frame buffer serves all;
      // no allocation per message.
      this.#frameView.setUint32(0, length);
      if (faultsArmed) {
        await faultPointAfter(
          "send.mid-frame",
          () =>
            this.#duplex.write(this.#frame.subarray(0, 4)).then(() =>
              this.#duplex.write(message.subarray(0, length >> 1))
            ),
        );
      }
      if (length <= COALESCE_BYTES) {
        this.#frame.set(message, 4);
        await this.#duplex.write(this.#frame.subarray(0, 4 + length));
      } else {
        // Big payloads are written from the caller's buffer: no copy.
        await this.#duplex.write(this.#frame.subarray(0, 4));
        await this.#duplex.write(message);
      }
    } catch (error) {
      const wrapped = transportError(
        `sending to ${this.remote} failed`,
        this.#closing ? this.#closeReason : error,
      );
      this.#fail(wrapped);
      throw wrapped;
    }
  }

  async receive(maxBytes?: number): Promise<Uint8Array | null> {
    if (this.#receiving) {
      throw new TransportError(
        "receive() called while another receive() is pending; expected one caller at a time",
      );
    }
    this.#receiving = true;
    try {
      // A stream found garbled stays failed, whatever a read still in flight
      // when it was destroyed brings in.
      if (this.#garbled) throw this.#readError!;
      if (this.#preamble) {
        const expected = this.#preamble;
        const got = await this.#take(expected.length, true);
        if (got === null) return null;
        if (!got.every((byte, i) => byte === expected[i])) {
          const error = new TransportError(
            `${this.remote} started with bytes ${
              got.join(",")
            }; expected the hello ${expected.join(",")}`,
          );
          this.#fail(error, true);
          throw error;
        }
        this.#preamble = null;
      }
      const length = await this.#takeLength();
      if (length === null) return null;
      try {
        checkMessageSize(
          length,
          Math.min(this.#max, maxBytes ?? Infinity),
          "receive",
        );
      } catch (error) {
        this.#fail(error as TransportError, true);
        throw error;
      }
      return await this.#take(length, false);
    } finally {
      this.#receiving = false;
      this.#readerDone();
    }
  }

  /** The next length prefix, or `null` as {@linkcode #take} at a boundary. */
  async #takeLength(): Promise<number | null> {
    const chunk = this.#chunks[this.#head];
    const at = this.#headOffset;
    if (this.#buffered >= 4 && chunk.length - at >= 4 && !this.#localClosed) {
      // The usual case, without allocating: all four bytes in one chunk.
      const length =
        ((chunk[at] << 24) | (chunk[at + 1] << 16) | (chunk[at + 2] << 8) |
          chunk[at + 3]) >>> 0;
      this.#consume(4);
      return length;
    }
    const header = await this.#take(4, true);
    if (header === null) return null;
    return new DataView(header.buffer, header.byteOffset, 4).getUint32(0);
  }

  /**
   * The next `length` bytes as one fresh array (each byte copied once). `null`
   * if the connection was closed locally, or if `atBoundary` and the peer
   * ended its stream before any byte.
   */
  async #take(length: number, atBoundary: boolean): Promise<Uint8Array | null> {
    // The pump may fill `target` while we wait (see #pump): it is the truth
    // about `out` and `filled` across every await.
    const target: DirectTarget = { out: new Uint8Array(length), filled: 0 };
    try {
      return await this.#fill(target, atBoundary);
    } finally {
      if (this.#direct === target) this.#direct = null;
    }
  }

  async #fill(
    target: DirectTarget,
    atBoundary: boolean,
  ): Promise<Uint8Array | null> {
    const length = target.out.length;
    while (target.filled < length) {
      const filled = target.filled;
      if (this.#localClosed) return null;
      if (this.#buffered === 0) {
        if (this.#readError) throw this.#readError;
        if (this.#eof) {
          if (atBoundary && filled === 0) return null;
          throw new TransportError(
            `connection from ${this.remote} ended in the middle of a message (${filled} of ${length} bytes${
              atBoundary ? " of the length prefix" : ""
            })`,
          );
        }
        if (this.#destroyed) return null;
        this.#direct = length - filled >= DIRECT_READ_BYTES ? target : null;
        this.#dataWaiter = Promise.withResolvers();
        this.#readerDone();
        await this.#dataWaiter.promise;
        continue;
      }
      // Only while nothing is buffered does the pump read into `target`, and
      // it adds no chunk meanwhile: chunks and direct reads never interleave.
      const chunk = this.#chunks[this.#head];
      const n = Math.min(chunk.length - this.#headOffset, length - filled);
      target.out.set(
        chunk.subarray(this.#headOffset, this.#headOffset + n),
        filled,
      );
      target.filled += n;
      this.#consume(n);
    }
    return target.out;
  }

  #consume(n: number): void {
    this.#buffered -= n;
    this.#headOffset += n;
    const chunk = this.#chunks[this.#head];
    if (this.#headOffset === chunk.length) {
      this.#head++;
      this.#headOffset = 0;
      this.#recycle(chunk.buffer as ArrayBuffer);
      // Drop consumed chunks in batches: no per-chunk array shifting.
      if (this.#head >= 64 && this.#head * 2 >= this.#chunks.length) {
        this.#chunks = this.#chunks.slice(this.#head);
        this.#head = 0;
      }
    }
    if (this.#spaceWaiter && this.#buffered < READ_AHEAD_BYTES) {
      this.#spaceWaiter.resolve();
      this.#spaceWaiter = null;
    }
  }

  /**
   * `buffer` held a chunk now consumed. Chunks are views of slabs, taken in
   * order, and nothing else holds them (`receive` copies them out), so a
   * slab is free once its last chunk is consumed, unless the pump is still
   * filling it.
   */
  #recycle(buffer: ArrayBuffer): void {
    if (
      buffer.byteLength !== SLAB_BYTES ||
      this.#spareSlabs.length >= SPARE_SLABS ||
      buffer === this.#slab.buffer ||
      (this.#buffered > 0 && this.#chunks[this.#head].buffer === buffer)
    ) return;
    this.#spareSlabs.push(new Uint8Array(buffer));
  }

  #wakeReader(): void {
    this.#dataWaiter?.resolve();
    this.#dataWaiter = null;
  }

  /** `receive` took what it could and stopped (see #handOver). */
  #readerDone(): void {
    this.#readerStopped?.resolve();
    this.#readerStopped = null;
  }

  /**
   * Wakes `receive` after new bytes and, if one is running, lets it take
   * them before the pump picks where its next read goes: into the message
   * `receive` then waits for (a direct read), or into a slab.
   */
  async #handOver(): Promise<void> {
    if (!this.#receiving) {
      this.#wakeReader();
      return;
    }
    const stopped = Promise.withResolvers<void>();
    this.#readerStopped = stopped;
    this.#wakeReader();
    await stopped.promise;
  }

  /** Reads ahead of `receive`, bounded by READ_AHEAD_BYTES; sees the peer's end even when idle. */
  async #pump(): Promise<void> {
    try {
      while (true) {
        while (
          this.#buffered >= READ_AHEAD_BYTES && !this.#closing
        ) {
          this.#spaceWaiter = Promise.withResolvers();
          await this.#spaceWaiter.promise;
        }
        const direct = this.#direct;
        if (
          direct && this.#buffered === 0 && !this.#localClosed &&
          direct.filled < direct.out.length
        ) {
          // Straight into the message `receive` is waiting for.
          const view = await this.#duplex.read(
            direct.out.subarray(direct.filled),
          );
          if (view === null) break;
          if (view.buffer !== direct.out.buffer) {
            direct.out = new Uint8Array(view.buffer); // transferred (BYOB)
          }
          direct.filled += view.length;
          await this.#handOver();
          continue;
        }
        // With nothing buffered, no chunk is left in the slab: start it over.
        if (this.#buffered === 0) this.#slabUsed = 0;
        if (this.#slab.length - this.#slabUsed < MIN_SLAB_READ_BYTES) {
          this.#slab = this.#spareSlabs.pop() ?? new Uint8Array(SLAB_BYTES);
          this.#slabUsed = 0;
        }
        const slab = this.#slab;
        const view = await this.#duplex.read(slab.subarray(this.#slabUsed));
        if (view === null) break;
        if (this.#localClosed) continue; // lingering after close(): discard
        if (view.length === 0) continue;
        let chunk = view;
        if (view.buffer === slab.buffer) {
          this.#slabUsed += view.length;
        } else if (view.length * 4 >= SLAB_BYTES) {
          // Transferred (BYOB), and big: the chunk keeps the buffer.
          this.#slab = this.#spareSlabs.pop() ?? new Uint8Array(SLAB_BYTES);
          this.#slabUsed = 0;
        } else {
          // Transferred and small: copy it out and read into the buffer again.
          chunk = view.slice();
          this.#slab = new Uint8Array(view.buffer);
          this.#slabUsed = 0;
        }
        this.#chunks.push(chunk);
        this.#buffered += chunk.length;
        await this.#handOver();
      }
      this.#eof = true;
    } catch (error) {
      if (!this.#closing) {
        this.#readError = transportError(
          `connection from ${this.remote} broke`,
          error,
        );
      }
    }
    this.#wakeReader();
    if (this.#lingerDone) {
      this.#lingerDone.resolve();
    } else if (this.#readError) {
      this.#destroy(this.#readError.message);
    } else {
      // The peer ended its stream: the connection is over. Buffered messages
      // stay receivable; sends now reject.
      this.#closing = true;
      this.#closeReason = `closed by ${this.remote}`;
      this.#eof = true;
      await this.#endWrite();
      this.#destroy(this.#closeReason);
    }
  }

  async #endWrite(): Promise<void> {
    if (this.#pendingSends > 0 || this.#destroyed) return;
    try {
      await this.#duplex.closeWrite();
    } catch {
      // The peer is gone already; destroy() follows.
    }
  }

  /**
   * Breaks the connection. `garbled`: the byte stream is out of step (bad
   * length or hello), so what is buffered is not messages and is dropped.
   */
  #fail(error: TransportError, garbled = false): void {
    if (garbled) {
      this.#garbled = true;
      this.#readError ??= error;
      this.#chunks = [];
      this.#head = 0;
      this.#headOffset = 0;
      this.#buffered = 0;
    }
    if (this.#closing && this.#destroyed) return;
    this.#readError ??= error;
    this.#destroy(error.message);
  }

  #destroy(reason: string): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    if (!this.#closing) {
      this.#closing = true;
      this.#closeReason = reason;
    }
    this.#duplex.destroy();
    this.#wakeReader();
    this.#readerDone();
    this.#spaceWaiter?.resolve();
    this.#lingerDone?.resolve();
    this.#resolveClosed();
  }

  close(): Promise<void> {
    this.#closeDone ??= this.#close();
    return this.#closeDone;
  }

  async #close(): Promise<void> {
    if (this.#destroyed) return;
    const wasOpen = !this.#closing;
    this.#closing = true;
    this.#localClosed = true;
    this.#closeReason ||= "closed locally";
    this.#wakeReader();
    if (!wasOpen || this.#pendingSends > 0) {
      // Either the peer already ended, or sends are stuck behind a full pipe:
      // no graceful end is possible, so release now (pending sends reject).
      this.#destroy(this.#closeReason);
      return;
    }
    // Graceful: end our direction, then keep reading (and discarding) until
    // the peer ends its own, so neither side resets data still in flight.
    this.#lingerDone = Promise.withResolvers();
    this.#spaceWaiter?.resolve();
    this.#spaceWaiter = null;
    this.#chunks = [];
    this.#head = 0;
    this.#headOffset = 0;
    this.#buffered = 0;
    await this.#endWrite();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, LINGER_MS);
    });
    await Promise.race([this.#lingerDone.promise, timeout]);
    clearTimeout(timer);
    this.#destroy(this.#closeReason);
  }
}

// ---------------------------------------------------------------------------
// Helpers shared by all adapters (URL checks, timeouts, accept queues).

/** Default `connectTimeoutMs`. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** Host and port of a transport URL, ready for Deno's socket APIs. */
export interface HostPort {
  /** As Deno wants it: IPv6 literals without brackets. */
  hostname: string;
  port: number;
}

const HOST_NAME = /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/;
const IPV6_LITERAL = /^\[[0-9A-Fa-f:.]+\]$/;

/**
 * Checks a `scheme://host:port` URL and returns its host and port. `defaultPort`
 * applies when the URL has none (only `ws:`/`wss:` have one); `allowPath`
 * permits a path (WebSocket endpoints).
 */
export function parseHostPort(
  url: URL,
  options: { defaultPort?: number; allowPath?: boolean } = {},
): HostPort {
  const form = `${url.protocol}//host:port${options.allowPath ? "/path" : ""}`;
  const bad = (what: string) =>
    new TransportError(`bad URL "${url.href}": ${what}; expected ${form}`);
  if (url.username || url.password) {
    throw bad("credentials are not allowed in the URL");
  }
  const host = url.hostname;
  if (!host) throw bad("the host is missing");
  if (!HOST_NAME.test(host) && !IPV6_LITERAL.test(host)) {
    throw bad(`"${host}" is not a host name or IP address`);
  }
  let port: number;
  if (url.port === "") {
    if (options.defaultPort === undefined) throw bad("the port is missing");
    port = options.defaultPort;
  } else {
    port = Number(url.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw bad(`port "${url.port}" is not in 0..65535`);
    }
  }
  if (!options.allowPath && url.pathname !== "" && url.pathname !== "/") {
    throw bad(`unexpected path "${url.pathname}"`);
  }
  if (url.search || url.hash) throw bad("unexpected query or fragment");
  return { hostname: host.replace(/^\[(.*)\]$/, "$1"), port };
}

/** `scheme://host:port` with the real port, the host as the caller wrote it. */
export function listenUrl(url: URL, port: number, path = ""): string {
  return `${url.protocol}//${url.hostname}:${port}${path}`;
}

/**
 * Resolves to `promise`'s value, or rejects with a {@linkcode TransportError}
 * saying `what` timed out after `ms`; `onTimeout` cancels the underlying work.
 */
export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
  onTimeout: () => void = () => {},
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new TransportError(`${what} timed out after ${ms} ms`));
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Connections handed from a server's callbacks to `Listener.accept`. Closing
 * it answers pending and later `accept` calls with `null` and closes what was
 * queued but never accepted.
 */
export class AcceptQueue {
  #queue: Connection[] = [];
  #waiters: PromiseWithResolvers<Connection | null>[] = [];
  #closed = false;

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Offers a new connection; closes it if the queue is closed. */
  push(connection: Connection): void {
    if (this.#closed) {
      connection.close();
      return;
    }
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(connection);
    else this.#queue.push(connection);
  }

  /** The next connection, or `null` once closed. */
  accept(): Promise<Connection | null> {
    const queued = this.#queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.#closed) return Promise.resolve(null);
    const waiter = Promise.withResolvers<Connection | null>();
    this.#waiters.push(waiter);
    return waiter.promise;
  }

  /** Stops handing out connections. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const waiter of this.#waiters.splice(0)) waiter.resolve(null);
    await Promise.all(this.#queue.splice(0).map((c) => c.close()));
  }
}
