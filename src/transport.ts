/**
 * The transport interface the roles depend on: ordered, reliable, message
 * oriented connections. Adapters (`transports/`) are thin: one per URL scheme
 * (`tcp:`, `tls:`, `quic:`, `ws:`, `wss:`, `memory:`), chosen by
 * `transports/mod.ts`.
 *
 * A message is one opaque byte array (a codec frame or a control message);
 * adapters keep message boundaries (length prefixes on byte streams, one
 * WebSocket message each) and never look inside.
 * @module
 */

/** Largest message any adapter accepts by default (a base-sync chunk or a 64 MiB frame fits). */
export const DEFAULT_MAX_MESSAGE_BYTES = 256 << 20;

/** One end of an ordered, reliable message channel. */
export interface Connection {
  /** Where the other end is (for logs and /status). */
  readonly remote: string;
  /**
   * Sends one message. Resolves once the transport has taken it; awaits while
   * the transport's send buffer is full (backpressure), so a writer that awaits
   * every send holds a bounded amount of memory however slow the reader is.
   * Rejects with {@linkcode TransportError} once the connection is closed or broken.
   */
  send(message: Uint8Array): Promise<void>;
  /**
   * The next message, or `null` once the peer closed cleanly. Rejects with
   * {@linkcode TransportError} if the connection broke or a message was
   * malformed or too large. Not for concurrent callers. `maxBytes` lowers
   * the limit for this one message (e.g. a handshake from a peer not yet
   * authenticated): a message over it is refused like one over the
   * connection's limit, before its bytes are read where the transport frames
   * them itself.
   */
  receive(maxBytes?: number): Promise<Uint8Array | null>;
  /** Closes both directions; pending and later sends reject, `receive` returns `null`. Idempotent. */
  close(): Promise<void>;
  /** Settles when the connection is closed, by either side or by an error. Never rejects. */
  readonly closed: Promise<void>;
}

/** A bound server endpoint handing out incoming connections. */
export interface Listener {
  /** The URL peers connect to, with the bound port filled in (port 0 picks one). */
  readonly url: string;
  /** The next incoming connection, or `null` once the listener is closed. */
  accept(): Promise<Connection | null>;
  /** Stops accepting; connections already accepted stay open. Idempotent. */
  close(): Promise<void>;
}

/** TLS material for `tls:`, `quic:` and `wss:`. PEM strings. */
export interface TlsOptions {
  /** Server: certificate chain and key. */
  cert?: string;
  key?: string;
  /** Client: extra CA certificates to trust (e.g. a test CA). */
  caCerts?: string[];
}

/** Options for connecting and listening; each adapter uses what applies to it. */
export interface TransportOptions {
  tls?: TlsOptions;
  /** Messages above this are refused with an error naming both sizes. */
  maxMessageBytes?: number;
  /**
   * `ws:`/`wss:` listeners: mount the WebSocket endpoint on this Hono app
   * instead of serving one of their own (the role's control-plane server).
   * The caller then serves the app.
   */
  app?: import("hono").Hono;
  /** Give up connecting after this many ms (default 10 000). */
  connectTimeoutMs?: number;
}

/** One adapter: connects and listens for the URL schemes it names. */
export interface Transport {
  /** URL schemes handled, with the colon: `["tcp:"]`. */
  readonly schemes: readonly string[];
  connect(url: URL, options?: TransportOptions): Promise<Connection>;
  listen(url: URL, options?: TransportOptions): Promise<Listener>;
}

/** A transport failed: connect refused, connection broken, bad message. */
export class TransportError extends Error {
  override name = "TransportError";
}
