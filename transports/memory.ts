/**
 * `memory://name`: in-process connections, for tests and single-process
 * setups. Listeners register under a name; connecting to a name nobody listens
 * on is refused. Each direction holds at most {@linkcode MEMORY_BUFFER_BYTES}
 * of unread messages (at least one message), so a slow reader stalls the
 * writer just as a socket would. Messages are copied on send, as a socket
 * would, so senders may reuse their buffers.
 * @module
 */

import { MessageQueue } from "./_message_queue.ts";
import {
  type Connection,
  DEFAULT_MAX_MESSAGE_BYTES,
  type Listener,
  type Transport,
  TransportError,
  type TransportOptions,
} from "../src/transport.ts";
import { AcceptQueue, checkMessageSize } from "./_length_prefixed.ts";

/** Unread bytes one direction buffers before `send` waits. */
export const MEMORY_BUFFER_BYTES = 4 << 20;

const listeners = new Map<string, MemoryListener>();

function nameOf(url: URL): string {
  const name = url.host + url.pathname.replace(/\/$/, "");
  if (!name || url.port || url.search || url.hash || url.username) {
    throw new TransportError(
      `bad URL "${url.href}": expected memory://name (a name, no port, query or credentials)`,
    );
  }
  return name;
}

/** One end of an in-process connection. */
export class MemoryConnection implements Connection {
  readonly remote: string;
  readonly closed: Promise<void>;

  readonly #max: number;
  readonly #resolveClosed: () => void;
  #peer!: MemoryConnection;

  #inbox = new MessageQueue();
  #inboxBytes = 0;
  #dataWaiter: PromiseWithResolvers<void> | null = null;
  #spaceWaiter: PromiseWithResolvers<void> | null = null;
  #sendChain: Promise<void> = Promise.resolve();

  #ended = false; // no more messages will arrive; sends reject
  #endReason = "";
  #broken: TransportError | null = null;
  #localClosed = false;

  /** Use {@linkcode memoryPair} or the transport; not for direct construction. */
  constructor(remote: string, maxMessageBytes: number) {
    this.remote = remote;
    this.#max = maxMessageBytes;
    const closed = Promise.withResolvers<void>();
    this.closed = closed.promise;
    this.#resolveClosed = closed.resolve;
  }

  /** Links two ends (internal). */
  static link(a: MemoryConnection, b: MemoryConnection): void {
    a.#peer = b;
    b.#peer = a;
  }

  send(message: Uint8Array): Promise<void> {
    if (this.#ended) return Promise.reject(this.#sendError());
    try {
      checkMessageSize(message.length, this.#max, "send");
    } catch (error) {
      return Promise.reject(error);
    }
    // Chained so concurrent sends keep their order while waiting for space.
    const sent = this.#sendChain.then(() => this.#peer.#deliver(message, this));
    this.#sendChain = sent.catch(() => {});
    return sent;
  }

  #sendError(): TransportError {
    return new TransportError(
      `cannot send to ${this.remote}: the connection is closed (${this.#endReason})`,
    );
  }

  /** Called on the receiving end: waits for room, then queues a copy. */
  async #deliver(message: Uint8Array, from: MemoryConnection): Promise<void> {
    while (
      !this.#ended && this.#inboxBytes > 0 &&
      this.#inboxBytes + message.length > MEMORY_BUFFER_BYTES
    ) {
      this.#spaceWaiter ??= Promise.withResolvers();
      await this.#spaceWaiter.promise;
    }
    if (this.#ended || from.#ended) throw from.#sendError();
    this.#inbox.push(message.slice());
    this.#inboxBytes += message.length;
    this.#dataWaiter?.resolve();
    this.#dataWaiter = null;
  }

  async receive(maxBytes?: number): Promise<Uint8Array | null> {
    const max = Math.min(this.#max, maxBytes ?? Infinity);
    while (true) {
      if (this.#localClosed) return null;
      const message = this.#inbox.take();
      if (message) {
        this.#inboxBytes -= message.length;
        this.#spaceWaiter?.resolve();
        this.#spaceWaiter = null;
        if (message.length > max) {
          const error = new TransportError(
            `cannot receive a message of ${message.length} bytes: the limit is ${max} bytes (maxMessageBytes)`,
          );
          this.#broken = error;
          this.#end(error.message, null);
          this.#peer.#end(`closed by ${this.#peer.remote}`, null);
          throw error;
        }
        return message;
      }
      if (this.#broken) throw this.#broken;
      if (this.#ended) return null;
      this.#dataWaiter ??= Promise.withResolvers();
      await this.#dataWaiter.promise;
    }
  }

  /** Marks this end over: wakes waiters, settles `closed`. */
  #end(reason: string, broken: TransportError | null): void {
    if (this.#ended) return;
    if (broken) this.#broken ??= broken;
    this.#ended = true;
    this.#endReason = reason;
    this.#dataWaiter?.resolve();
    this.#dataWaiter = null;
    this.#spaceWaiter?.resolve();
    this.#spaceWaiter = null;
    this.#resolveClosed();
  }

  close(): Promise<void> {
    if (!this.#localClosed) {
      this.#localClosed = true;
      this.#end("closed locally", null);
      // The peer still gets what was already queued for it, then null.
      this.#peer.#end(`closed by ${this.#peer.remote}`, null);
    }
    return Promise.resolve();
  }

  /**
   * Breaks the connection as a crash would: the peer's `receive` rejects
   * (after messages already queued). For tests of error handling.
   */
  abort(reason = "aborted"): void {
    this.#localClosed = true;
    this.#end(reason, null);
    this.#peer.#end(
      `connection to ${this.#peer.remote} broke`,
      new TransportError(
        `connection from ${this.#peer.remote} broke: ${reason}`,
      ),
    );
  }
}

/** Two linked ends, `[a, b]`: what `a` sends, `b` receives, and back. */
export function memoryPair(
  options: TransportOptions = {},
  names: [string, string] = ["memory:a", "memory:b"],
): [MemoryConnection, MemoryConnection] {
  const max = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const a = new MemoryConnection(names[1], max);
  const b = new MemoryConnection(names[0], max);
  MemoryConnection.link(a, b);
  return [a, b];
}

class MemoryListener implements Listener {
  readonly url: string;
  readonly name: string;
  readonly options: TransportOptions;
  readonly queue = new AcceptQueue();
  #clients = 0;

  constructor(name: string, options: TransportOptions) {
    this.name = name;
    this.url = `memory://${name}`;
    this.options = options;
  }

  /** A new pair; the server end goes to `accept`, the client end is returned. */
  open(clientOptions: TransportOptions): Connection {
    const id = ++this.#clients;
    const client = new MemoryConnection(
      this.url,
      clientOptions.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    );
    const server = new MemoryConnection(
      `${this.url}#client-${id}`,
      this.options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    );
    MemoryConnection.link(client, server);
    this.queue.push(server);
    return client;
  }

  accept(): Promise<Connection | null> {
    return this.queue.accept();
  }

  async close(): Promise<void> {
    if (listeners.get(this.name) === this) listeners.delete(this.name);
    await this.queue.close();
  }
}

/** The `memory:` adapter. */
export const memoryTransport: Transport = {
  schemes: ["memory:"],

  connect(url: URL, options: TransportOptions = {}): Promise<Connection> {
    try {
      const name = nameOf(url);
      const listener = listeners.get(name);
      if (!listener) {
        throw new TransportError(
          `cannot connect to ${url.href}: nobody is listening on memory name "${name}"`,
        );
      }
      return Promise.resolve(listener.open(options));
    } catch (error) {
      return Promise.reject(error);
    }
  },

  listen(url: URL, options: TransportOptions = {}): Promise<Listener> {
    try {
      const name = nameOf(url);
      if (listeners.has(name)) {
        throw new TransportError(
          `cannot listen on ${url.href}: memory name "${name}" is already in use`,
        );
      }
      const listener = new MemoryListener(name, options);
      listeners.set(name, listener);
      return Promise.resolve(listener);
    } catch (error) {
      return Promise.reject(error);
    }
  },
};
