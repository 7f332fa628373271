/**
 * `quic://host:port`: one QUIC connection (ALPN `patchwire/1`) per
 * {@linkcode Connection}, carrying length-prefixed messages on a single
 * bidirectional stream that the client opens. QUIC only announces a stream to
 * the peer once bytes flow on it, so the client starts the stream with a
 * 4-byte hello (`pw/1`) that the server checks and strips.
 *
 * Needs `--unstable-net`. Listeners need `options.tls.cert`/`key`; clients
 * trust the system roots plus `options.tls.caCerts`.
 * @module
 */

import type {
  Connection,
  Listener,
  Transport,
  TransportOptions,
} from "../src/transport.ts";
import {
  DEFAULT_CONNECT_TIMEOUT_MS,
  LengthPrefixedConnection,
  listenUrl,
  parseHostPort,
  transportError,
  withTimeout,
} from "./_length_prefixed.ts";
import type { ByteDuplex } from "./_length_prefixed.ts";
import { serverTls } from "./tls.ts";
import { formatAddr } from "./tcp.ts";

/** The ALPN protocol both ends announce. */
export const QUIC_ALPN = "patchwire/1";

/** First bytes of the client's stream (see the module doc). */
export const QUIC_HELLO: Uint8Array = new TextEncoder().encode("pw/1");

/** QUIC timing knobs (the `TransportOptions` shared by all adapters have none). */
export interface QuicTuning {
  /** Keep-alive period, so idle but healthy links stay up. Default 2 000 ms. */
  keepAliveIntervalMs?: number;
  /**
   * A peer silent for this long is taken as dead (how fast a crashed peer is
   * noticed: QUIC has no kernel to send a reset). Default 10 000 ms.
   */
  maxIdleTimeoutMs?: number;
}

function quicDuplex(
  conn: Deno.QuicConn,
  stream: Deno.QuicBidirectionalStream,
  onDestroy: () => void,
): ByteDuplex {
  const writer = stream.writable.getWriter();
  // BYOB: reads land in the caller's array (see ByteDuplex.read).
  const reader = stream.readable.getReader({ mode: "byob" });
  let destroyed = false;
  return {
    remote: formatAddr(conn.remoteAddr),
    async read(into) {
      const { value, done } = await reader.read(into);
      return done ? null : value;
    },
    write: (bytes) => writer.write(bytes),
    closeWrite: () => writer.close(),
    destroy() {
      if (destroyed) return;
      destroyed = true;
      try {
        conn.close({ closeCode: 0, reason: "" });
      } catch {
        // Closed by the peer already.
      }
      onDestroy();
    },
  };
}

const IPV4_LITERAL = /^\d{1,3}(\.\d{1,3}){3}$/;

/** A UDP socket for one client connection, of the family the target needs. */
function clientEndpoint(hostname: string): Deno.QuicEndpoint {
  if (IPV4_LITERAL.test(hostname)) {
    return new Deno.QuicEndpoint({ hostname: "0.0.0.0", port: 0 });
  }
  try {
    // Dual-stack, for IPv6 targets and names that may resolve either way.
    return new Deno.QuicEndpoint({ hostname: "::", port: 0 });
  } catch {
    return new Deno.QuicEndpoint({ hostname: "0.0.0.0", port: 0 });
  }
}

/** A QUIC listener; its endpoint lives until the listener and all its connections are closed. */
class QuicListenerImpl implements Listener {
  readonly url: string;
  readonly #endpoint: Deno.QuicEndpoint;
  readonly #listener: Deno.QuicListener;
  readonly #options: TransportOptions;
  #live = 0;
  #closed = false;
  #next: Promise<Deno.QuicIncoming> | null = null;
  readonly #stopped = Promise.withResolvers<null>();
  #endpointClosed = false;

  constructor(
    url: string,
    endpoint: Deno.QuicEndpoint,
    listener: Deno.QuicListener,
    options: TransportOptions,
  ) {
    this.url = url;
    this.#endpoint = endpoint;
    this.#listener = listener;
    this.#options = options;
  }

  async accept(): Promise<Connection | null> {
    const ms = this.#options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    while (!this.#closed) {
      let incoming: Deno.QuicIncoming | null;
      // stop() does not end a pending incoming(): race it with close(). The
      // promise is kept for the next call, and settles once the endpoint closes.
      this.#next ??= this.#listener.incoming();
      this.#next.catch(() => {});
      try {
        incoming = await Promise.race([this.#next, this.#stopped.promise]);
      } catch (error) {
        this.#next = null;
        if (this.#closed) return null;
        throw transportError(`accepting on ${this.url} failed`, error);
      }
      if (incoming === null) return null;
      this.#next = null;
      let conn: Deno.QuicConn;
      try {
        conn = await incoming.accept<false>();
      } catch {
        // A client failing its handshake must not stop the listener.
        continue;
      }
      this.#live++;
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        this.#live--;
        this.#maybeCloseEndpoint();
      };
      const streams = conn.incomingBidirectionalStreams.getReader();
      try {
        const first = await withTimeout(
          streams.read(),
          ms,
          `waiting for the stream of a QUIC client on ${this.url}`,
          () => conn.close({ closeCode: 1, reason: "no stream opened" }),
        );
        streams.releaseLock();
        if (first.done) throw new Error("the client closed without a stream");
        return new LengthPrefixedConnection(
          quicDuplex(conn, first.value, release),
          { ...this.#options, expectPreamble: QUIC_HELLO },
        );
      } catch {
        // A client that never opens its stream must not stop the listener.
        try {
          conn.close({ closeCode: 1, reason: "no stream opened" });
        } catch {
          // Already closed.
        }
        release();
      }
    }
    return null;
  }

  #maybeCloseEndpoint(): void {
    // Closing the endpoint would cut accepted connections: wait for them.
    if (this.#closed && this.#live === 0 && !this.#endpointClosed) {
      this.#endpointClosed = true;
      this.#endpoint.close();
    }
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#listener.stop();
      this.#stopped.resolve(null);
      this.#maybeCloseEndpoint();
    }
    return Promise.resolve();
  }
}

/** A `quic:` adapter with the given timing (see {@linkcode QuicTuning}). */
export function createQuicTransport(tuning: QuicTuning = {}): Transport {
  const keepAliveInterval = tuning.keepAliveIntervalMs ?? 2_000;
  const maxIdleTimeout = tuning.maxIdleTimeoutMs ?? 10_000;
  return {
    schemes: ["quic:"],

    async connect(
      url: URL,
      options: TransportOptions = {},
    ): Promise<Connection> {
      const { hostname, port } = parseHostPort(url);
      const ms = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
      // One endpoint (UDP socket) per connection: closing it on timeout is
      // the only way to cancel a pending connectQuic.
      const endpoint = clientEndpoint(hostname);
      let conn: Deno.QuicConn | undefined;
      try {
        conn = await withTimeout(
          Deno.connectQuic<false>({
            hostname,
            port,
            alpnProtocols: [QUIC_ALPN],
            caCerts: options.tls?.caCerts,
            endpoint,
            keepAliveInterval,
            maxIdleTimeout,
          }),
          ms,
          `QUIC handshake with ${url.href}`,
          () => endpoint.close(),
        );
        const stream = await conn.createBidirectionalStream();
        const connection = new LengthPrefixedConnection(
          quicDuplex(conn, stream, () => endpoint.close()),
          { ...options, sendPreamble: QUIC_HELLO },
        );
        return connection;
      } catch (error) {
        try {
          conn?.close({ closeCode: 1, reason: "connect failed" });
          endpoint.close();
        } catch {
          // Closed by the timeout already.
        }
        throw transportError(`cannot connect to ${url.href}`, error);
      }
    },

    listen(url: URL, options: TransportOptions = {}): Promise<Listener> {
      try {
        const { hostname, port } = parseHostPort(url);
        const { cert, key } = serverTls(url, options);
        const endpoint = new Deno.QuicEndpoint({ hostname, port });
        let listener: Deno.QuicListener;
        try {
          listener = endpoint.listen({
            alpnProtocols: [QUIC_ALPN],
            cert,
            key,
            keepAliveInterval,
            maxIdleTimeout,
          });
        } catch (error) {
          endpoint.close();
          throw error;
        }
        return Promise.resolve(
          new QuicListenerImpl(
            listenUrl(url, endpoint.addr.port),
            endpoint,
            listener,
            options,
          ),
        );
      } catch (error) {
        return Promise.reject(
          transportError(`cannot listen on ${url.href}`, error),
        );
      }
    },
  };
}

/** The `quic:` adapter with default timing. */
export const quicTransport: Transport = createQuicTransport();
