/**
 * Transports for patchwire: one {@linkcode Transport} per URL scheme, picked
 * by {@linkcode transportFor}. Roles use {@linkcode connect} and
 * {@linkcode listen} and the interface from `src/transport.ts`.
 *
 * | URL                      | adapter                                   |
 * | ------------------------ | ----------------------------------------- |
 * | `tcp://host:port`        | {@linkcode tcpTransport}                  |
 * | `tls://host:port`        | {@linkcode tlsTransport}                  |
 * | `quic://host:port`       | {@linkcode quicTransport} (`--unstable-net`) |
 * | `ws://host:port/path`    | {@linkcode wsTransport}                   |
 * | `wss://host:port/path`   | {@linkcode wsTransport}                   |
 * | `memory://name`          | {@linkcode memoryTransport} (in-process)  |
 *
 * @example
 * ```ts
 * import { connect, listen } from "./mod.ts";
 *
 * const listener = await listen("tcp://127.0.0.1:0");
 * const client = await connect(listener.url);
 * const server = (await listener.accept())!;
 * await client.send(new Uint8Array([1, 2, 3]));
 * console.log(await server.receive()); // Uint8Array(3) [1, 2, 3]
 * await client.close();
 * console.log(await server.receive()); // null
 * await server.close();
 * await listener.close();
 * ```
 * @module
 */

import {
  type Connection,
  type Listener,
  type Transport,
  TransportError,
  type TransportOptions,
} from "../src/transport.ts";
import { memoryTransport } from "./memory.ts";
import { quicTransport } from "./quic.ts";
import { tcpTransport } from "./tcp.ts";
import { tlsTransport } from "./tls.ts";
import { wsTransport } from "./ws.ts";

export {
  type Connection,
  DEFAULT_MAX_MESSAGE_BYTES,
  type Listener,
  type TlsOptions,
  type Transport,
  TransportError,
  type TransportOptions,
} from "../src/transport.ts";
export { memoryPair, memoryTransport } from "./memory.ts";
export { createQuicTransport, quicTransport, type QuicTuning } from "./quic.ts";
export { tcpTransport } from "./tcp.ts";
export { tlsTransport } from "./tls.ts";
export { wsTransport } from "./ws.ts";

const TRANSPORTS: readonly Transport[] = [
  tcpTransport,
  tlsTransport,
  quicTransport,
  wsTransport,
  memoryTransport,
];

/** Every supported scheme, with its colon (`"tcp:"`, ...). */
const SUPPORTED_SCHEMES: readonly string[] = TRANSPORTS.flatMap((t) =>
  t.schemes
);

function toUrl(url: URL | string): URL {
  if (url instanceof URL) return url;
  try {
    return new URL(url);
  } catch {
    throw new TransportError(
      `bad URL "${url}": expected scheme://host:port, with a scheme among ${
        SUPPORTED_SCHEMES.join(" ")
      }`,
    );
  }
}

/**
 * The adapter for `url`'s scheme. Throws a {@linkcode TransportError} naming
 * the scheme and the supported ones if none handles it.
 */
export function transportFor(url: URL | string): Transport {
  const parsed = toUrl(url);
  const transport = TRANSPORTS.find((t) => t.schemes.includes(parsed.protocol));
  if (!transport) {
    throw new TransportError(
      `unsupported transport scheme "${parsed.protocol}" in ${parsed.href}; supported: ${
        SUPPORTED_SCHEMES.join(" ")
      }`,
    );
  }
  return transport;
}

/**
 * Connects to `url` with the adapter for its scheme. Rejects with a
 * {@linkcode TransportError} naming the URL if it is bad, refused, or does
 * not answer within `options.connectTimeoutMs`.
 */
export async function connect(
  url: URL | string,
  options?: TransportOptions,
): Promise<Connection> {
  const parsed = toUrl(url);
  return await transportFor(parsed).connect(parsed, options);
}

/**
 * Listens on `url` with the adapter for its scheme (port 0 picks a free
 * port; the listener's `url` has the real one).
 */
export async function listen(
  url: URL | string,
  options?: TransportOptions,
): Promise<Listener> {
  const parsed = toUrl(url);
  return await transportFor(parsed).listen(parsed, options);
}
