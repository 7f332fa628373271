/**
 * A userspace delay forwarder for TCP and UDP: listens on an address,
 * forwards everything to a target and delays what it passes on, in each
 * direction, by a fixed one-way delay plus a uniform jitter — the latency half
 * of a WAN link on a kernel without the netem qdisc. TCP byte order is kept
 * (each chunk read leaves no earlier than the one before it); UDP keeps one
 * session (an outgoing socket) per client address and its datagrams in
 * order too, so QUIC runs over it; sessions idle for a minute are dropped.
 *
 * ```sh
 * deno run --unstable-net --allow-net tools/wan_forwarder.ts \
 *   --listen 10.1.0.1:7000 --to 10.2.0.2:7000 --delay-ms 50 --jitter-ms 5 \
 *   --proto tcp|udp|both
 * ```
 *
 * Several `--listen A --to B` pairs (matched in order) run in one process.
 * `--unstable-net` is needed for UDP only (`Deno.listenDatagram`). A TCP
 * connection through the forwarder is two TCP connections, each with its own
 * retransmissions: loss belongs on one of them, or better under the
 * forwarder — which is what `tools/wan.ts` does (below).
 *
 * ## How to reproduce a WAN profile on one machine
 *
 * As root, with `iproute2`, `nftables` and `ethtool` installed
 * (`apt-get install -y iproute2 nftables ethtool`):
 *
 * ```sh
 * # Two regions 100 ms apart (RTT, ±5 ms jitter each way), 1% loss each way,
 * # 20 Mbit/s each way. Prints each region's namespace and addresses and
 * # runs until Ctrl-C, then removes everything it made.
 * deno run -A --unstable-net tools/wan.ts up \
 *   --link primary-relay:rtt=100,jitter=5,loss=1,rate=20mbit
 *
 * # In another shell: run anything inside a region, e.g. a backup...
 * sudo ip netns exec pwan-…-relay deno task backup --listen tcp://0.0.0.0:7000 --store /tmp/b
 * # ...and a primary replicating to it across the link (the relay's address
 * # as the primary sees it is printed by `up`, e.g. 10.1.0.2).
 * sudo ip netns exec pwan-…-primary deno task primary --source synthetic:size=8M \
 *   --to tcp://10.1.0.2:7000
 *
 * # Type `partition primary relay`, `heal primary relay` or
 * # `set primary-relay loss=5` into the `up` shell; `tools/wan.ts down`
 * # removes what a killed run left behind.
 * ```
 *
 * Under the hood, per link with a delay: a middle namespace runs this
 * forwarder (`--proto udp`) between the two regions, and each region's end
 * of the link is a VXLAN device whose packets are tunnelled in UDP through
 * it. Every packet, of any protocol, is therefore delayed on its way, and a
 * TCP or QUIC connection between the regions is end to end: it sees the full
 * round trip, and the loss (nftables in the receiving region) costs it what
 * it costs on a real WAN. Without the tools: two namespaces, the forwarder
 * in a third, and `--to` the other region's address.
 *
 * @example
 * ```ts
 * const fwd = await Forwarder.start({
 *   listen: "127.0.0.1:0",
 *   to: "127.0.0.1:7000",
 *   delayMs: 50,
 *   jitterMs: 5,
 *   proto: "both",
 * });
 * console.log(fwd.tcpAddr); // { hostname: "127.0.0.1", port: ... }
 * await fwd.close();
 * ```
 * @module
 */

import { parseArgs, runMain, UsageError } from "../src/_cli.ts";

/** Which protocols a forwarder carries. */
export type ForwardProto = "tcp" | "udp" | "both";

/** Options of {@linkcode Forwarder.start}. */
export interface ForwarderOptions {
  /** `HOST:PORT` to listen on (port 0: any free port, for TCP and UDP alike only with `proto` not `both`). */
  listen: string;
  /** `HOST:PORT` to forward to. */
  to: string;
  /** One-way delay added in each direction, ms. */
  delayMs: number;
  /** Each delay is `delayMs` ± up to this many ms, uniformly (default 0). Order is kept. */
  jitterMs?: number;
  /** Default `tcp`. */
  proto?: ForwardProto;
  /** UDP sessions silent this long are closed, ms (default 60 000). */
  udpIdleMs?: number;
  /** TCP: bytes waiting in one direction's delay line before reading pauses (default 16 MiB). */
  maxQueuedBytes?: number;
  /** Random numbers in [0, 1) for the jitter (default Math.random). */
  random?: () => number;
}

/** What a forwarder has carried. */
export interface ForwarderStats {
  tcpConnections: number;
  tcpBytes: number;
  udpSessions: number;
  udpDatagrams: number;
  /** Datagrams the kernel refused to send (e.g. a firewall drop). */
  udpSendErrors: number;
}

/** A `HOST:PORT` (IPv6 as `[::1]:PORT`) as hostname and port; throws naming the text otherwise. */
export function parseHostPort(
  text: string,
): { hostname: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s\[\]]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new RangeError(
      `bad address "${text}": expected HOST:PORT (IPv6 as [ADDR]:PORT), port 0-65535`,
    );
  }
  return { hostname: m[1] ?? m[2], port };
}

/**
 * A FIFO whose items come out `delay()` ms after they went in, never before
 * an earlier one; delivery is sequential (a slow `deliver` holds the rest).
 */
class DelayLine<T> {
  #items: { due: number; item: T }[] = [];
  #head = 0;
  #lastDue = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #busy = false;
  #closed = false;
  #idle: (() => void)[] = [];

  constructor(
    readonly delay: () => number,
    readonly deliver: (item: T) => Promise<unknown> | unknown,
    readonly onError: (error: unknown) => void,
  ) {}

  push(item: T): void {
    if (this.#closed) return;
    const due = Math.max(this.#lastDue, performance.now() + this.delay());
    this.#lastDue = due;
    this.#items.push({ due, item });
    this.#schedule();
  }

  get length(): number {
    return this.#items.length - this.#head;
  }

  /** Resolves once everything pushed so far was delivered (or the line closed). */
  idle(): Promise<void> {
    if (this.length === 0 && !this.#busy || this.#closed) {
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#items = [];
    this.#head = 0;
    this.#wakeIdle();
  }

  #wakeIdle(): void {
    for (const w of this.#idle.splice(0)) w();
  }

  #schedule(): void {
    if (this.#busy || this.#timer !== undefined || this.#closed) return;
    if (this.length === 0) {
      this.#wakeIdle();
      return;
    }
    const wait = this.#items[this.#head].due - performance.now();
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#flush();
    }, Math.max(0, wait));
  }

  async #flush(): Promise<void> {
    this.#busy = true;
    try {
      // Half a millisecond early is on time: timers have 1 ms granularity.
      while (
        !this.#closed && this.length > 0 &&
        this.#items[this.#head].due <= performance.now() + 0.5
      ) {
        const { item } = this.#items[this.#head++];
        if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
          this.#items = this.#items.slice(this.#head);
          this.#head = 0;
        }
        await this.deliver(item);
      }
    } catch (e) {
      this.onError(e);
    } finally {
      this.#busy = false;
      this.#schedule();
    }
  }
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch {
    // Already closed: nothing to release.
  }
}

/** Reads per TCP chunk; smaller reads are copied out so a queued chunk does not pin 64 KiB. */
const READ_BYTES = 64 << 10;

interface UdpSession {
  socket: Deno.DatagramConn;
  lastActive: number;
  up: DelayLine<Uint8Array>;
  down: DelayLine<Uint8Array>;
  done: Promise<void>;
}

/** A running forwarder. Start with {@linkcode Forwarder.start}; {@linkcode Forwarder.close} stops it. */
export class Forwarder {
  /** Where TCP is accepted (null without TCP). */
  readonly tcpAddr: Deno.NetAddr | null;
  /** Where UDP is received (null without UDP). */
  readonly udpAddr: Deno.NetAddr | null;
  readonly stats: ForwarderStats = {
    tcpConnections: 0,
    tcpBytes: 0,
    udpSessions: 0,
    udpDatagrams: 0,
    udpSendErrors: 0,
  };
  readonly #to: { hostname: string; port: number };
  readonly #tcp: Deno.TcpListener | null;
  readonly #udp: Deno.DatagramConn | null;
  readonly #conns = new Set<Deno.TcpConn>();
  readonly #lines = new Set<DelayLine<unknown>>();
  readonly #sessions = new Map<string, UdpSession>();
  readonly #tasks: Promise<void>[] = [];
  readonly #sweep: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  private constructor(
    readonly options: ForwarderOptions,
    tcp: Deno.TcpListener | null,
    udp: Deno.DatagramConn | null,
  ) {
    this.#to = parseHostPort(options.to);
    this.#tcp = tcp;
    this.#udp = udp;
    this.tcpAddr = tcp ? tcp.addr : null;
    this.udpAddr = udp ? udp.addr as Deno.NetAddr : null;
    if (tcp) this.#tasks.push(this.#acceptTcp(tcp));
    if (udp) {
      this.#tasks.push(this.#receiveUdp(udp));
      const idleMs = options.udpIdleMs ?? 60_000;
      this.#sweep = setInterval(
        () => this.#sweepSessions(idleMs),
        Math.min(5_000, Math.max(50, idleMs / 2)),
      );
      Deno.unrefTimer(this.#sweep);
    }
  }

  /** Listens and starts forwarding; rejects naming the address if it cannot listen. */
  static start(options: ForwarderOptions): Promise<Forwarder> {
    const proto = options.proto ?? "tcp";
    if (!["tcp", "udp", "both"].includes(proto)) {
      return Promise.reject(
        new RangeError(`bad proto "${proto}": expected tcp, udp or both`),
      );
    }
    if (!(options.delayMs >= 0) || !((options.jitterMs ?? 0) >= 0)) {
      return Promise.reject(
        new RangeError(
          `delay and jitter must be >= 0 ms, got ${options.delayMs} and ${options.jitterMs}`,
        ),
      );
    }
    let listen, to;
    try {
      listen = parseHostPort(options.listen);
      to = parseHostPort(options.to);
    } catch (e) {
      return Promise.reject(e);
    }
    if (to.port === 0) {
      return Promise.reject(
        new RangeError(`cannot forward to port 0 (${options.to})`),
      );
    }
    let tcp: Deno.TcpListener | null = null;
    let udp: Deno.DatagramConn | null = null;
    try {
      if (proto !== "udp") tcp = Deno.listen({ ...listen, transport: "tcp" });
      if (proto !== "tcp") {
        if (typeof Deno.listenDatagram !== "function") {
          throw new Error("UDP needs --unstable-net (Deno.listenDatagram)");
        }
        // "both" with port 0: UDP on the port TCP got, so one address serves both.
        const port = tcp && listen.port === 0 ? tcp.addr.port : listen.port;
        udp = Deno.listenDatagram({ ...listen, port, transport: "udp" });
      }
    } catch (e) {
      if (tcp) closeQuietly(tcp);
      return Promise.reject(
        new Error(
          `cannot listen on ${options.listen} (${proto}): ${
            (e as Error).message
          }`,
        ),
      );
    }
    return Promise.resolve(new Forwarder(options, tcp, udp));
  }

  /** One delay draw: the fixed delay ± uniform jitter, never negative. */
  #delay = (): number => {
    const j = this.options.jitterMs ?? 0;
    const r = (this.options.random ?? Math.random)();
    return Math.max(0, this.options.delayMs + j * (2 * r - 1));
  };

  #line<T>(
    deliver: (item: T) => Promise<unknown> | unknown,
    onError: (e: unknown) => void,
  ): DelayLine<T> {
    const line = new DelayLine<T>(this.#delay, deliver, onError);
    this.#lines.add(line as DelayLine<unknown>);
    return line;
  }

  async #acceptTcp(listener: Deno.TcpListener): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch {
        if (this.#closed) return;
        continue;
      }
      if (this.#closed) {
        closeQuietly(conn);
        return;
      }
      this.stats.tcpConnections++;
      const task = this.#serveTcp(conn);
      this.#tasks.push(task);
      task.finally(() => {
        const i = this.#tasks.indexOf(task);
        if (i >= 0) this.#tasks.splice(i, 1);
      });
    }
  }

  async #serveTcp(client: Deno.TcpConn): Promise<void> {
    this.#conns.add(client);
    let server: Deno.TcpConn;
    try {
      server = await Deno.connect({ ...this.#to, transport: "tcp" });
    } catch {
      // Refused or unreachable: the client sees its connection end.
      this.#conns.delete(client);
      closeQuietly(client);
      return;
    }
    this.#conns.add(server);
    client.setNoDelay(true);
    server.setNoDelay(true);
    let aborted = false;
    const abort = () => {
      if (aborted) return;
      aborted = true;
      closeQuietly(client);
      closeQuietly(server);
    };
    await Promise.all([
      this.#pipe(client, server, abort),
      this.#pipe(server, client, abort),
    ]);
    abort();
    this.#conns.delete(client);
    this.#conns.delete(server);
  }

  /** One direction of a TCP connection: read, delay, write in order, then pass the FIN on. */
  async #pipe(
    from: Deno.TcpConn,
    to: Deno.TcpConn,
    abort: () => void,
  ): Promise<void> {
    const max = this.options.maxQueuedBytes ?? 16 << 20;
    let queued = 0;
    let drained: (() => void) | null = null;
    const line = this.#line<Uint8Array | null>(async (chunk) => {
      if (chunk === null) {
        await to.closeWrite();
        return;
      }
      let off = 0;
      while (off < chunk.length) off += await to.write(chunk.subarray(off));
      this.stats.tcpBytes += chunk.length;
      queued -= chunk.length;
      if (drained && queued <= max / 2) {
        drained();
        drained = null;
      }
    }, () => {
      line.close();
      abort();
      drained?.();
    });
    try {
      for (;;) {
        const buf = new Uint8Array(READ_BYTES);
        const n = await from.read(buf);
        if (n === null) {
          line.push(null);
          break;
        }
        queued += n;
        line.push(n < READ_BYTES / 4 ? buf.slice(0, n) : buf.subarray(0, n));
        if (queued > max) {
          await new Promise<void>((r) => drained = r);
        }
      }
    } catch {
      // Reset or closed: end both directions.
      line.close();
      abort();
    }
    await line.idle();
    this.#lines.delete(line as DelayLine<unknown>);
  }

  async #receiveUdp(udp: Deno.DatagramConn): Promise<void> {
    for (;;) {
      let data: Uint8Array, addr: Deno.Addr;
      try {
        [data, addr] = await udp.receive();
      } catch {
        if (this.#closed) return;
        continue;
      }
      const client = addr as Deno.NetAddr;
      const key = `${client.hostname}|${client.port}`;
      let session = this.#sessions.get(key);
      if (!session) {
        try {
          session = this.#openSession(udp, client);
        } catch {
          continue; // out of sockets: this datagram is lost
        }
        this.#sessions.set(key, session);
      }
      session.lastActive = performance.now();
      this.stats.udpDatagrams++;
      session.up.push(data);
    }
  }

  #openSession(udp: Deno.DatagramConn, client: Deno.NetAddr): UdpSession {
    const to = this.#to;
    const socket = Deno.listenDatagram({
      hostname: to.hostname.includes(":") ? "::" : "0.0.0.0",
      port: 0,
      transport: "udp",
    });
    this.stats.udpSessions++;
    const target: Deno.NetAddr = { transport: "udp", ...to };
    // A datagram the kernel refuses is a lost datagram, as on a real link.
    const send = async (
      conn: Deno.DatagramConn,
      d: Uint8Array,
      a: Deno.Addr,
    ) => {
      try {
        await conn.send(d, a);
      } catch {
        this.stats.udpSendErrors++;
      }
    };
    const ignore = () => {};
    const session: UdpSession = {
      socket,
      lastActive: performance.now(),
      up: this.#line<Uint8Array>((d) => send(socket, d, target), ignore),
      down: this.#line<Uint8Array>((d) => send(udp, d, client), ignore),
      done: Promise.resolve(),
    };
    session.done = (async () => {
      for (;;) {
        let data: Uint8Array;
        try {
          [data] = await socket.receive();
        } catch {
          return; // closed
        }
        session.lastActive = performance.now();
        this.stats.udpDatagrams++;
        session.down.push(data);
      }
    })();
    return session;
  }

  #sweepSessions(idleMs: number): void {
    const now = performance.now();
    for (const [key, s] of this.#sessions) {
      if (
        now - s.lastActive > idleMs && s.up.length === 0 && s.down.length === 0
      ) {
        this.#sessions.delete(key);
        this.#closeSession(s);
      }
    }
  }

  #closeSession(s: UdpSession): void {
    s.up.close();
    s.down.close();
    this.#lines.delete(s.up as DelayLine<unknown>);
    this.#lines.delete(s.down as DelayLine<unknown>);
    closeQuietly(s.socket);
  }

  /** Stops listening, drops every connection and session, and waits for them to end. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweep);
    if (this.#tcp) closeQuietly(this.#tcp);
    if (this.#udp) closeQuietly(this.#udp);
    for (const line of this.#lines) line.close();
    for (const c of this.#conns) closeQuietly(c);
    const sessions = [...this.#sessions.values()];
    for (const s of sessions) this.#closeSession(s);
    this.#sessions.clear();
    await Promise.all([...this.#tasks, ...sessions.map((s) => s.done)]);
  }
}

const USAGE = `usage: deno run --unstable-net --allow-net tools/wan_forwarder.ts
         --listen HOST:PORT --to HOST:PORT [--listen HOST:PORT --to HOST:PORT ...]
         --delay-ms MS [--jitter-ms MS] [--proto tcp|udp|both]

Forwards TCP connections and/or UDP datagrams from each --listen address to
the --to address paired with it, delaying everything by --delay-ms (one way,
each direction) ± --jitter-ms (uniform; order is kept). UDP keeps a session
per client and needs --unstable-net. Runs until SIGINT or SIGTERM. See the
module documentation for a WAN recipe.`;

async function main(argv: string[]): Promise<void> {
  const args = parseArgs(argv, [
    "listen",
    "to",
    "delay-ms",
    "jitter-ms",
    "proto",
  ], ["help"]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const listen = args.options.get("listen") ?? [];
  const to = args.options.get("to") ?? [];
  if (listen.length === 0 || listen.length !== to.length) {
    throw new UsageError(
      `expected one --to per --listen, got ${listen.length} --listen and ${to.length} --to`,
    );
  }
  const delayMs = Number(args.options.get("delay-ms")?.at(-1));
  const jitterMs = Number(args.options.get("jitter-ms")?.at(-1) ?? "0");
  if (!(delayMs >= 0) || !(jitterMs >= 0)) {
    throw new UsageError(
      "--delay-ms is required, and it and --jitter-ms must be numbers >= 0",
    );
  }
  const proto = (args.options.get("proto")?.at(-1) ?? "tcp") as ForwardProto;
  if (!["tcp", "udp", "both"].includes(proto)) {
    throw new UsageError(`--proto must be tcp, udp or both, got "${proto}"`);
  }
  const forwarders: Forwarder[] = [];
  try {
    for (let i = 0; i < listen.length; i++) {
      const f = await Forwarder.start({
        listen: listen[i],
        to: to[i],
        delayMs,
        jitterMs,
        proto,
      });
      forwarders.push(f);
      const at = f.tcpAddr ?? f.udpAddr!;
      console.error(
        `forwarding ${proto} ${at.hostname}:${at.port} → ${
          to[i]
        } (delay ${delayMs} ± ${jitterMs} ms each way)`,
      );
    }
  } catch (e) {
    await Promise.all(forwarders.map((f) => f.close()));
    throw e;
  }
  const stop = async () => {
    await Promise.all(forwarders.map((f) => f.close()));
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}

if (import.meta.main) await runMain(USAGE, () => main(Deno.args));
