/**
 * `tcp://host:port`: length-prefixed messages over a plain TCP connection.
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
  duplexFromConn,
  LengthPrefixedConnection,
  listenUrl,
  parseHostPort,
  transportError,
} from "./_length_prefixed.ts";

/** Formats a socket address for `Connection.remote` (QUIC's have no `transport`). */
export function formatAddr(addr: Deno.Addr | Deno.NetAddr): string {
  if ("hostname" in addr && "port" in addr) {
    return addr.hostname.includes(":")
      ? `[${addr.hostname}]:${addr.port}`
      : `${addr.hostname}:${addr.port}`;
  }
  return "path" in addr && addr.path ? addr.path : addr.transport;
}

/**
 * Opens a TCP connection with Nagle off (a length prefix written apart from
 * its payload must not wait for an ACK). Rejects with a TransportError naming
 * `url` if refused or slower than `connectTimeoutMs`.
 */
export async function dialTcp(
  url: URL,
  options: TransportOptions,
): Promise<Deno.TcpConn> {
  const { hostname, port } = parseHostPort(url);
  const ms = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), ms);
  try {
    const conn = await Deno.connect({ hostname, port, signal: abort.signal });
    conn.setNoDelay(true);
    return conn;
  } catch (error) {
    throw transportError(
      `cannot connect to ${url.href}`,
      abort.signal.aborted
        ? `no answer within ${ms} ms (connectTimeoutMs)`
        : error,
    );
  } finally {
    clearTimeout(timer);
  }
}

/** A `Listener` over a Deno TCP/TLS listener; `upgrade` turns a raw conn into a Connection. */
export class SocketListener<C extends Deno.Conn> implements Listener {
  readonly url: string;
  readonly #listener: Deno.Listener<C>;
  readonly #upgrade: (conn: C) => Promise<Connection>;
  #closed = false;

  constructor(
    url: string,
    listener: Deno.Listener<C>,
    upgrade: (conn: C) => Promise<Connection>,
  ) {
    this.url = url;
    this.#listener = listener;
    this.#upgrade = upgrade;
  }

  async accept(): Promise<Connection | null> {
    while (!this.#closed) {
      let conn: C;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#closed) return null;
        throw transportError(`accepting on ${this.url} failed`, error);
      }
      try {
        return await this.#upgrade(conn);
      } catch {
        // One peer failing its handshake must not stop the listener: next one.
        try {
          conn.close();
        } catch {
          // Already closed by the failed handshake.
        }
      }
    }
    return null;
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#listener.close();
    }
    return Promise.resolve();
  }
}

/** The `tcp:` adapter. */
export const tcpTransport: Transport = {
  schemes: ["tcp:"],

  async connect(url: URL, options: TransportOptions = {}): Promise<Connection> {
    const conn = await dialTcp(url, options);
    return new LengthPrefixedConnection(
      duplexFromConn(conn, formatAddr(conn.remoteAddr)),
      options,
    );
  },

  listen(url: URL, options: TransportOptions = {}): Promise<Listener> {
    const { hostname, port } = parseHostPort(url);
    let listener: Deno.TcpListener;
    try {
      listener = Deno.listen({ hostname, port });
    } catch (error) {
      return Promise.reject(
        transportError(`cannot listen on ${url.href}`, error),
      );
    }
    return Promise.resolve(
      new SocketListener(
        listenUrl(url, listener.addr.port),
        listener,
        (conn) => {
          conn.setNoDelay(true);
          return Promise.resolve(
            new LengthPrefixedConnection(
              duplexFromConn(conn, formatAddr(conn.remoteAddr)),
              options,
            ),
          );
        },
      ),
    );
  },
};
