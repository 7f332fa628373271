/**
 * `ws://host:port/path` and `wss://host:port/path`: messages over a
 * WebSocket. Servers are hono routes (`upgradeWebSocket` from `hono/deno`)
 * mounted at the URL's path (default {@linkcode DEFAULT_WS_PATH}), either on
 * `options.app` (the caller serves it) or on a server of the listener's own.
 * Clients use the minimal WebSocket client of `_ws_client.ts` (Nagle off, one
 * write per frame), not the standard `WebSocket`, whose frames could wait
 * ~40 ms for a delayed ACK (see there); `wss:` clients trust the system roots
 * plus `options.tls.caCerts`.
 *
 * Wire protocol, between two of these adapters:
 * - a binary WebSocket message is one message, if at most
 *   {@linkcode WS_PIECE_BYTES} (Deno refuses WebSocket frames above 64 MiB);
 * - a text message `m <length>` announces a bigger message, which follows as
 *   binary pieces of at most `WS_PIECE_BYTES`;
 * - a text message `a <bytes>` acknowledges the payload bytes the receiver's
 *   `receive` has taken so far (cumulative).
 *
 * Why acknowledgements: a WebSocket reads eagerly (no read backpressure in
 * the API), so a slow reader would buffer without bound. A sender only starts
 * a message while less than {@linkcode WS_WINDOW_BYTES} are unacknowledged,
 * so a reader that stops calling `receive` stalls the writer after about one
 * window plus one message. Locally, `send` also waits for the client
 * socket's write, and while a server socket's `bufferedAmount` is above the
 * window.
 *
 * - a text message `k` does nothing. Earlier `wss:` clients sent it to flush
 *   the standard `WebSocket`'s unsent TLS tail (denoland/deno#36862); our
 *   client awaits its writes, so it neither needs nor sends it.
 *
 * Closing sends close code 1000 (the peer's `receive` returns `null`); any
 * other code, or none, is a broken connection.
 * @module
 */

import { setListenerNoDelay } from "./_no_delay.ts";
import { MessageQueue } from "./_message_queue.ts";
import { Hono } from "hono";
import { getConnInfo, upgradeWebSocket } from "hono/deno";
import {
  type Connection,
  DEFAULT_MAX_MESSAGE_BYTES,
  type Listener,
  type Transport,
  TransportError,
  type TransportOptions,
} from "../src/transport.ts";
import {
  AcceptQueue,
  checkMessageSize,
  DEFAULT_CONNECT_TIMEOUT_MS,
  LINGER_MS,
  parseHostPort,
  transportError,
} from "./_length_prefixed.ts";
import { serverTls } from "./tls.ts";
import { connectWebSocket, type WebSocketLike } from "./_ws_client.ts";

/** Where the endpoint is mounted when the URL has no path. */
export const DEFAULT_WS_PATH = "/patchwire";

/** Largest single WebSocket message sent; bigger messages go in pieces. */
export const WS_PIECE_BYTES = 16 << 20;

/** Unacknowledged bytes after which a sender waits (see the module doc). */
export const WS_WINDOW_BYTES = 8 << 20;

/** How often `send` re-checks `bufferedAmount` while it is high. */
const DRAIN_POLL_MS = 2;

const CLOSE_NORMAL = 1000;
const CLOSE_PROTOCOL_ERROR = 1002;
const CLOSE_TOO_BIG = 1009;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One end of a WebSocket carrying patchwire messages (client or server side). */
class WsConnection implements Connection {
  readonly remote: string;
  readonly closed: Promise<void>;

  readonly #ws: WebSocketLike;
  readonly #max: number;
  readonly #onGone: () => Promise<void>;
  readonly #closeEvent = Promise.withResolvers<void>();

  #queue = new MessageQueue();
  #assembling: { buffer: Uint8Array; filled: number } | null = null;
  #dataWaiter: PromiseWithResolvers<void> | null = null;

  #sendChain: Promise<void> = Promise.resolve();
  #sentBytes = 0;
  #ackedBytes = 0;
  #creditWaiter: PromiseWithResolvers<void> | null = null;
  #takenBytes = 0;
  #lastAck = 0;

  #ended = false; // closed by either side or broken: sends reject
  #endReason = "";
  #broken: TransportError | null = null;
  #localClosed = false;
  #errorMessage = "";
  #closeDone: Promise<void> | null = null;

  constructor(
    ws: WebSocketLike,
    remote: string,
    maxMessageBytes: number,
    onGone: () => Promise<void> = () => Promise.resolve(),
  ) {
    this.#ws = ws;
    this.remote = remote;
    this.#max = maxMessageBytes;
    this.#onGone = onGone;
    ws.binaryType = "arraybuffer";
    ws.addEventListener("message", (event) => this.#onMessage(event.data));
    ws.addEventListener("error", (event) => {
      this.#errorMessage = (event as ErrorEvent).message ?? "";
    });
    ws.addEventListener("close", (event) => this.#onClose(event));
    // `closed` settles once the socket is gone and its server (if any) released.
    this.closed = this.#closeEvent.promise.then(() => this.#gone());
  }

  #goneDone: Promise<void> | null = null;
  #gone(): Promise<void> {
    this.#goneDone ??= this.#onGone().catch(() => {});
    return this.#goneDone;
  }

  send(message: Uint8Array): Promise<void> {
    if (this.#ended) return Promise.reject(this.#sendError());
    try {
      checkMessageSize(message.length, this.#max, "send");
    } catch (error) {
      return Promise.reject(error);
    }
    const sent = this.#sendChain.then(() => this.#sendNow(message));
    // One failed send must not break the chain: later sends report their own.
    this.#sendChain = sent.catch(() => {});
    return sent;
  }

  #sendError(): TransportError {
    return new TransportError(
      `cannot send to ${this.remote}: the connection is closed (${this.#endReason})`,
    );
  }

  async #sendNow(message: Uint8Array): Promise<void> {
    while (
      !this.#ended && this.#sentBytes - this.#ackedBytes >= WS_WINDOW_BYTES
    ) {
      this.#creditWaiter ??= Promise.withResolvers();
      await this.#creditWaiter.promise;
    }
    try {
      // A client socket's send resolves once written; a server's returns nothing.
      if (message.length <= WS_PIECE_BYTES) {
        await this.#drain();
        await this.#ws.send(message);
      } else {
        await this.#drain();
        await this.#ws.send(`m ${message.length}`);
        for (let at = 0; at < message.length; at += WS_PIECE_BYTES) {
          await this.#drain();
          await this.#ws.send(message.subarray(at, at + WS_PIECE_BYTES));
        }
      }
    } catch (error) {
      if (this.#ended) throw this.#sendError();
      throw transportError(`sending to ${this.remote} failed`, error);
    }
    this.#sentBytes += message.length;
  }

  /** Waits while the socket holds more than a window of unsent bytes. */
  async #drain(): Promise<void> {
    while (!this.#ended && this.#ws.bufferedAmount > WS_WINDOW_BYTES) {
      await sleep(DRAIN_POLL_MS);
    }
    if (this.#ended) throw this.#sendError();
  }

  async receive(maxBytes?: number): Promise<Uint8Array | null> {
    while (true) {
      if (this.#localClosed) return null;
      const message = this.#queue.take();
      if (message) {
        if (maxBytes !== undefined && message.length > maxBytes) {
          // WebSocket delivers whole messages: this one is read already.
          this.#fail(CLOSE_TOO_BIG, tooBig(message.length, maxBytes));
          throw this.#broken!;
        }
        this.#takenBytes += message.length;
        this.#maybeAck();
        return message;
      }
      if (this.#broken) throw this.#broken;
      if (this.#ended) return null;
      this.#dataWaiter ??= Promise.withResolvers();
      await this.#dataWaiter.promise;
    }
  }

  #maybeAck(): void {
    if (
      this.#takenBytes - this.#lastAck >= WS_WINDOW_BYTES / 4 &&
      this.#ws.readyState === WebSocket.OPEN
    ) {
      this.#lastAck = this.#takenBytes;
      this.#ws.send(`a ${this.#takenBytes}`);
    }
  }

  #deliver(message: Uint8Array): void {
    this.#queue.push(message);
    this.#dataWaiter?.resolve();
    this.#dataWaiter = null;
  }

  #onMessage(data: unknown): void {
    if (this.#ended) return;
    if (typeof data === "string") {
      const value = Number(data.slice(2));
      if (data === "k") return;
      if (data.startsWith("a ") && Number.isSafeInteger(value)) {
        this.#ackedBytes = Math.max(this.#ackedBytes, value);
        this.#creditWaiter?.resolve();
        this.#creditWaiter = null;
      } else if (
        data.startsWith("m ") && Number.isSafeInteger(value) && value >= 0 &&
        !this.#assembling
      ) {
        if (value > this.#max) {
          this.#fail(CLOSE_TOO_BIG, tooBig(value, this.#max));
          return;
        }
        this.#assembling = { buffer: new Uint8Array(value), filled: 0 };
      } else {
        this.#fail(
          CLOSE_PROTOCOL_ERROR,
          `unexpected control message ${JSON.stringify(data.slice(0, 40))}`,
        );
      }
      return;
    }
    if (!(data instanceof ArrayBuffer)) {
      this.#fail(CLOSE_PROTOCOL_ERROR, "expected binary (ArrayBuffer) data");
      return;
    }
    const bytes = new Uint8Array(data);
    const assembling = this.#assembling;
    if (assembling) {
      if (assembling.filled + bytes.length > assembling.buffer.length) {
        this.#fail(
          CLOSE_PROTOCOL_ERROR,
          `a piece overflows its announced message of ${assembling.buffer.length} bytes`,
        );
        return;
      }
      assembling.buffer.set(bytes, assembling.filled);
      assembling.filled += bytes.length;
      if (assembling.filled === assembling.buffer.length) {
        this.#assembling = null;
        this.#deliver(assembling.buffer);
      }
      return;
    }
    if (bytes.length > this.#max) {
      this.#fail(CLOSE_TOO_BIG, tooBig(bytes.length, this.#max));
      return;
    }
    this.#deliver(bytes);
  }

  /** Breaks the connection for a reason found here; tells the peer with `code`. */
  #fail(code: number, reason: string): void {
    this.#broken ??= new TransportError(
      `connection from ${this.remote} failed: ${reason}`,
    );
    this.#end(reason);
    try {
      // Close reasons are limited to 123 bytes.
      this.#ws.close(code, reason.slice(0, 120));
    } catch {
      // Already closing.
    }
  }

  #end(reason: string): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#endReason = reason;
    this.#dataWaiter?.resolve();
    this.#dataWaiter = null;
    this.#creditWaiter?.resolve();
    this.#creditWaiter = null;
  }

  #onClose(event: CloseEvent): void {
    if (!this.#ended) {
      if (event.code === CLOSE_NORMAL) {
        this.#end(`closed by ${this.remote}`);
      } else {
        const detail = [
          `WebSocket close code ${event.code}`,
          event.reason,
          this.#errorMessage,
        ].filter(Boolean).join(": ");
        this.#broken ??= new TransportError(
          `connection from ${this.remote} broke (${detail})`,
        );
        this.#end(this.#broken.message);
      }
    }
    this.#closeEvent.resolve();
  }

  close(): Promise<void> {
    this.#closeDone ??= this.#close();
    return this.#closeDone;
  }

  async #close(): Promise<void> {
    this.#localClosed = true;
    this.#end("closed locally");
    const state = this.#ws.readyState;
    if (state === WebSocket.OPEN || state === WebSocket.CONNECTING) {
      try {
        this.#ws.close(CLOSE_NORMAL, "closed");
      } catch {
        // Closing already.
      }
    }
    // Wait for the closing handshake (bounded), so nothing is left running.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#closeEvent.promise,
      new Promise<void>((resolve) => timer = setTimeout(resolve, LINGER_MS)),
    ]);
    clearTimeout(timer);
    await this.#gone();
  }
}

function tooBig(size: number, max: number): string {
  return `a message of ${size} bytes is over the limit of ${max} bytes (maxMessageBytes)`;
}

/** The current listener of one (app, path) route; routes cannot be removed from hono. */
interface Mount {
  listener: WsListener | null;
}

const mounts = new WeakMap<Hono, Map<string, Mount>>();

/** Adds the WebSocket route for `path` to `app` once; later listeners reuse it. */
function mount(app: Hono, path: string, url: URL): Mount {
  let routes = mounts.get(app);
  if (!routes) {
    routes = new Map();
    mounts.set(app, routes);
  }
  const existing = routes.get(path);
  if (existing) return existing;
  const slot: Mount = { listener: null };
  const upgrade = upgradeWebSocket((c) => {
    const listener = slot.listener!;
    let remote = "unknown";
    try {
      const { address, port } = getConnInfo(c).remote;
      if (address) remote = `${address}:${port}`;
    } catch {
      // Served without Deno.serve's connection info: keep "unknown".
    }
    return {
      onOpen: (_event, ws) => listener.opened(ws.raw as WebSocket, remote),
    };
  });
  try {
    app.get(path, async (c, next) => {
      if (!slot.listener || slot.listener.isClosed) {
        return c.text(`no patchwire listener at ${path}`, 503);
      }
      const upgraded = await upgrade(c, next);
      return upgraded ?? c.text("expected a WebSocket upgrade request", 426);
    });
  } catch (error) {
    throw transportError(
      `cannot listen on ${url.href}: mounting on options.app failed (call listen() before the app serves its first request)`,
      error,
    );
  }
  routes.set(path, slot);
  return slot;
}

class WsListener implements Listener {
  readonly url: string;
  readonly #queue = new AcceptQueue();
  readonly #options: TransportOptions;
  readonly #slot: Mount;
  #server: Deno.HttpServer | null = null;
  #live = 0;
  #closed = false;
  #shutdown: Promise<void> | null = null;

  constructor(url: string, slot: Mount, options: TransportOptions) {
    this.url = url;
    this.#slot = slot;
    this.#options = options;
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /** Our own server, which is shut down once the listener and its connections are closed. */
  set server(server: Deno.HttpServer) {
    this.#server = server;
  }

  opened(ws: WebSocket, remote: string): void {
    this.#live++;
    const connection = new WsConnection(
      ws,
      remote,
      this.#options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      () => {
        this.#live--;
        return this.#maybeShutdown();
      },
    );
    this.#queue.push(connection);
  }

  accept(): Promise<Connection | null> {
    return this.#queue.accept();
  }

  #maybeShutdown(): Promise<void> {
    // Shutting the server down closes its WebSockets: wait for the last one.
    if (this.#closed && this.#live === 0 && this.#server) {
      this.#shutdown ??= this.#server.shutdown();
    }
    return this.#shutdown ?? Promise.resolve();
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      if (this.#slot.listener === this) this.#slot.listener = null;
      await this.#queue.close();
    }
    await this.#maybeShutdown();
  }
}

function wsPath(url: URL): string {
  return url.pathname === "" || url.pathname === "/"
    ? DEFAULT_WS_PATH
    : url.pathname;
}

/** The `ws:` and `wss:` adapter. */
export const wsTransport: Transport = {
  schemes: ["ws:", "wss:"],

  async connect(url: URL, options: TransportOptions = {}): Promise<Connection> {
    parseHostPort(url, {
      defaultPort: url.protocol === "wss:" ? 443 : 80,
      allowPath: true,
    });
    const target = new URL(url.href);
    target.pathname = wsPath(url);
    const ws = await connectWebSocket(target, {
      caCerts: options.tls?.caCerts,
      timeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    });
    // Once closed (or given up on), make sure the socket is released.
    return new WsConnection(
      ws,
      target.host,
      options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      () => ws.terminate(),
    );
  },

  listen(url: URL, options: TransportOptions = {}): Promise<Listener> {
    try {
      const secure = url.protocol === "wss:";
      const { hostname, port } = parseHostPort(url, {
        defaultPort: secure ? 443 : 80,
        allowPath: true,
      });
      const path = wsPath(url);
      const app = options.app ?? new Hono();
      const slot = mount(app, path, url);
      if (slot.listener && !slot.listener.isClosed) {
        throw new TransportError(
          `cannot listen on ${url.href}: another listener is mounted at ${path}`,
        );
      }
      if (options.app) {
        // The caller serves the app: the URL is theirs to get right.
        const listener = new WsListener(url.href, slot, options);
        slot.listener = listener;
        return Promise.resolve(listener);
      }
      const tls = secure ? serverTls(url, options) : {};
      const server = Deno.serve(
        { hostname, port, ...tls, onListen: () => {} },
        app.fetch,
      );
      // Acks are small writes: no Nagle hold on them (see _no_delay.ts).
      setListenerNoDelay(server.addr.port);
      const listener = new WsListener(
        `${url.protocol}//${url.hostname}:${server.addr.port}${path}`,
        slot,
        options,
      );
      listener.server = server;
      slot.listener = listener;
      return Promise.resolve(listener);
    } catch (error) {
      return Promise.reject(
        transportError(`cannot listen on ${url.href}`, error),
      );
    }
  },
};
