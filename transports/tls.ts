/**
 * `tls://host:port`: length-prefixed messages over TLS (rustls). Listeners
 * need `options.tls.cert` and `options.tls.key`; clients trust the system
 * roots plus `options.tls.caCerts`, and check the certificate against the
 * URL's host.
 * @module
 */

import {
  type Connection,
  type Listener,
  type Transport,
  TransportError,
  type TransportOptions,
} from "../src/transport.ts";
import {
  DEFAULT_CONNECT_TIMEOUT_MS,
  duplexFromConn,
  LengthPrefixedConnection,
  listenUrl,
  parseHostPort,
  transportError,
  withTimeout,
} from "./_length_prefixed.ts";
import { dialTcp, formatAddr, SocketListener } from "./tcp.ts";
import { setListenerNoDelay } from "./_no_delay.ts";

/** The server certificate and key, or a TransportError saying what is missing. */
export function serverTls(
  url: URL,
  options: TransportOptions,
): { cert: string; key: string } {
  const cert = options.tls?.cert;
  const key = options.tls?.key;
  if (!cert || !key) {
    throw new TransportError(
      `cannot listen on ${url.href}: a ${
        url.protocol.slice(0, -1)
      } listener serves a certificate: give --cert FILE and --key FILE (options.tls.cert and options.tls.key, PEM strings)`,
    );
  }
  return { cert, key };
}

/** The `tls:` adapter. */
export const tlsTransport: Transport = {
  schemes: ["tls:"],

  async connect(url: URL, options: TransportOptions = {}): Promise<Connection> {
    const { hostname } = parseHostPort(url);
    const ms = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const tcp = await dialTcp(url, options);
    const remote = formatAddr(tcp.remoteAddr);
    let conn: Deno.TlsConn | undefined;
    try {
      conn = await Deno.startTls(tcp, {
        hostname,
        caCerts: options.tls?.caCerts,
      });
      await withTimeout(
        conn.handshake(),
        ms,
        `TLS handshake with ${url.href}`,
        () => conn?.close(),
      );
    } catch (error) {
      try {
        (conn ?? tcp).close();
      } catch {
        // Closed by the timeout already.
      }
      throw transportError(
        `cannot connect to ${url.href}: TLS handshake failed`,
        error,
      );
    }
    return new LengthPrefixedConnection(duplexFromConn(conn, remote), options);
  },

  listen(url: URL, options: TransportOptions = {}): Promise<Listener> {
    try {
      const { hostname, port } = parseHostPort(url);
      const { cert, key } = serverTls(url, options);
      const listener = Deno.listenTls({ hostname, port, cert, key });
      // TlsConn has no setNoDelay; a downstream's ack, a small write, would
      // wait a round trip behind the one before (see _no_delay.ts).
      setListenerNoDelay(listener.addr.port);
      const ms = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
      return Promise.resolve(
        new SocketListener(
          listenUrl(url, listener.addr.port),
          listener,
          async (conn) => {
            // Handshake before handing the connection out, so a peer that
            // fails it is dropped here rather than surfacing as a broken
            // connection; bounded so a silent peer cannot stall accept().
            await withTimeout(
              conn.handshake(),
              ms,
              "TLS handshake",
              () => conn.close(),
            );
            return new LengthPrefixedConnection(
              duplexFromConn(conn, formatAddr(conn.remoteAddr)),
              options,
            );
          },
        ),
      );
    } catch (error) {
      return Promise.reject(
        transportError(`cannot listen on ${url.href}`, error),
      );
    }
  },
};
