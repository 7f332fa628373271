/**
 * One-directional bulk throughput of the transports on loopback, next to raw
 * Deno sockets, in one run; prints Markdown tables.
 *
 * For each message size (default 1 MiB and 64 KiB) a sender pushes `--mib`
 * MiB (default 512) to a receiver that consumes everything. The sender awaits
 * every send, as the roles do, and is the connecting side, as in the roles
 * (an upstream connects to its downstream peer and streams frames to it;
 * for WebSockets that means the sent frames are masked). Cases:
 *
 * - `raw-tcp`: `Deno.connect`/`Deno.listen`, no framing: the writer loops
 *   `conn.write` over the same bytes, the reader `conn.read`s into a reused
 *   1 MiB buffer until the total arrived. Nagle off on both ends.
 * - `raw-tcp-copy` (for information): the same, but the reader cuts the
 *   stream back into messages, each copied into a fresh array: the least a
 *   `Connection.receive()` (which hands out a new array per message) adds.
 * - `tcp`: `tcp://` through `transports/mod.ts` (length-prefixed messages).
 * - `raw-quic`: `Deno.QuicEndpoint` + `endpoint.listen` and
 *   `Deno.connectQuic` with the adapter's ALPN, one bidirectional stream that
 *   the client starts with the adapter's 4-byte hello (outside the timing);
 *   the writer `writer.write`s each message, the reader reads until the total.
 * - `quic`: `quic://`.
 * - `ws`: `ws://`; and, for information, `wss://` and `tls://`.
 *
 * The timed span is from the first send to the receiver holding the last
 * byte; connecting, the hello and closing are outside it. Every run uses a
 * fresh connection (listeners live for the whole run), and is validated: the
 * byte count must equal what was sent, every message carries its sequence
 * number in its first 4 bytes (checked for each message, so order and
 * boundaries are checked too; for the raw cases at each message start in the
 * byte stream), and a few messages (raw: copies of a few read chunks) are
 * compared with the expected contents byte for byte after the timing. The
 * sender rewrites the sequence
 * number in its one buffer after each send resolved, which also checks that a
 * resolved `send` no longer needs the caller's buffer.
 *
 * MB/s are 10^6 payload bytes (framing excluded) per second; each case runs
 * `--reps` times (default 3) after one unmeasured warm-up run of
 * `--warmup-mib` MiB, repetitions interleaved across cases so that background
 * load spreads over all of them; the best and the median are reported, and
 * the ratios the project targets are computed from the bests: framed TCP ÷
 * raw TCP ≥ 0.80, WebSocket ÷ framed TCP ≥ 0.50, framed QUIC ÷ raw QUIC ≥ 0.80.
 *
 * Sender and receiver live in this one process, so they share its cores (and
 * its event loop) with each other and with the kernel's loopback work; the
 * CPU column is the process's CPU time over the timed span ÷ its wall time
 * (1.00 = one core busy). The load average is printed with `--allow-sys`.
 *
 *     deno run --unstable-net --allow-net --allow-read --allow-env --allow-ffi \
 *       bench/transport_throughput.ts [--mib 512] [--sizes 1M,64K] [--reps 3] \
 *       [--warmup-mib 32] [--cases raw-tcp,tcp,raw-quic,quic,ws,wss,tls] \
 *       [--timeout-s 60]
 * @module
 */

import process from "node:process";
import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import { makeDevCerts } from "../src/_dev_certs.ts";
import { parseSize } from "../src/synthetic.ts";
import {
  connect,
  type Connection,
  listen,
  type Listener,
  type TransportOptions,
} from "../transports/mod.ts";
import { QUIC_ALPN, QUIC_HELLO } from "../transports/quic.ts";

const HOST = "127.0.0.1";
/** The raw readers' reused buffer. */
const RAW_READ_BYTES = 1 << 20;
const MIB = 1 << 20;

type CaseName =
  | "raw-tcp"
  | "raw-tcp-copy"
  | "tcp"
  | "raw-quic"
  | "quic"
  | "ws"
  | "wss"
  | "tls";
const ALL_CASES: readonly CaseName[] = [
  "raw-tcp",
  "raw-tcp-copy",
  "tcp",
  "raw-quic",
  "quic",
  "ws",
  "wss",
  "tls",
];
const USAGE =
  `usage: deno run --unstable-net --allow-net --allow-read --allow-env --allow-ffi \\
  bench/transport_throughput.ts [--mib 512] [--sizes 1M,64K] [--reps 3]
  [--warmup-mib 32] [--cases ${ALL_CASES.join(",")}] [--timeout-s 60]`;

const CASE_LABELS: Record<CaseName, string> = {
  "raw-tcp": "raw Deno TCP",
  "raw-tcp-copy": "raw TCP + a fresh copy per message (info)",
  "tcp": "framed `tcp://`",
  "raw-quic": "raw Deno QUIC (1 stream)",
  "quic": "framed `quic://`",
  "ws": "`ws://`",
  "wss": "`wss://` (info)",
  "tls": "`tls://` (info)",
};

interface TlsMaterial {
  cert: string;
  key: string;
  caCert: string;
}

// ---------------------------------------------------------------------------
// Payload and validation

/**
 * The sender's one buffer: a fixed pseudo-random pattern whose first 4 bytes
 * are overwritten with the message's sequence number (big-endian) before
 * each send.
 */
class Payload {
  readonly bytes: Uint8Array;
  readonly #view: DataView;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    let x = 0x9e3779b9 ^ size;
    for (let i = 0; i < size; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      this.bytes[i] = x & 0xff;
    }
    this.#view = new DataView(this.bytes.buffer);
  }

  get size(): number {
    return this.bytes.length;
  }

  stamp(sequence: number): void {
    this.#view.setUint32(0, sequence);
  }

  /** The byte at `offset` in message `sequence`. */
  expected(sequence: number, offset: number): number {
    return offset < 4
      ? (sequence >>> (8 * (3 - offset))) & 0xff
      : this.bytes[offset];
  }
}

class ValidationError extends Error {
  override name = "ValidationError";
}

/**
 * Checks received messages (framed cases): size and sequence number of each
 * at once, the full contents of a few after the timing ({@linkcode finish}).
 */
class MessageChecker {
  readonly #payload: Payload;
  readonly #spot: Set<number>;
  readonly #kept: [number, Uint8Array][] = [];
  received = 0;
  bytes = 0;

  constructor(payload: Payload, count: number) {
    this.#payload = payload;
    this.#spot = new Set([0, 1, count >> 1, count - 1]);
  }

  check(message: Uint8Array): void {
    const sequence = this.received;
    const size = this.#payload.size;
    if (message.length !== size) {
      throw new ValidationError(
        `message ${sequence} has ${message.length} bytes, expected ${size}`,
      );
    }
    const got = ((message[0] << 24) | (message[1] << 16) | (message[2] << 8) |
      message[3]) >>> 0;
    if (got !== sequence) {
      throw new ValidationError(
        `message ${sequence} carries sequence number ${got} (reordered, lost or overwritten)`,
      );
    }
    if (this.#spot.has(sequence)) this.#kept.push([sequence, message]);
    this.received++;
    this.bytes += message.length;
  }

  /** Compares the kept messages in full; returns how many were compared. */
  finish(): number {
    const pattern = this.#payload.bytes;
    for (const [sequence, message] of this.#kept) {
      for (let i = 4; i < message.length; i++) {
        if (message[i] !== pattern[i]) {
          throw new ValidationError(
            `message ${sequence} differs at byte ${i}: ${message[i]} != ${
              pattern[i]
            }`,
          );
        }
      }
    }
    return this.#kept.length;
  }
}

/**
 * Checks a raw byte stream made of back-to-back stamped messages: every
 * sequence number at once, a few read chunks in full after the timing.
 */
class StreamChecker {
  readonly #payload: Payload;
  readonly #total: number;
  /** Stream offsets whose containing read chunk is compared in full. */
  readonly #spots: number[];
  #nextSpot = 0;
  readonly #kept: [number, Uint8Array][] = [];
  bytes = 0;

  constructor(payload: Payload, total: number) {
    this.#payload = payload;
    this.#total = total;
    this.#spots = [0, Math.floor(total / 3), Math.floor(total * 2 / 3)]
      .concat(total - 1);
  }

  /** `chunk` is the next piece of the stream (valid only during the call). */
  check(chunk: Uint8Array): void {
    const start = this.bytes;
    const end = start + chunk.length;
    if (end > this.#total) {
      throw new ValidationError(
        `received ${end} bytes, more than the ${this.#total} sent`,
      );
    }
    const size = this.#payload.size;
    // Every sequence-number byte in this chunk.
    for (
      let message = Math.floor(start / size);
      message * size < end;
      message++
    ) {
      for (let j = 0; j < 4; j++) {
        const at = message * size + j;
        if (at < start || at >= end) continue;
        const want = this.#payload.expected(message, j);
        if (chunk[at - start] !== want) {
          throw new ValidationError(
            `stream byte ${at} (message ${message}, offset ${j}) is ${
              chunk[at - start]
            }, expected ${want}`,
          );
        }
      }
    }
    let spot = false;
    while (
      this.#nextSpot < this.#spots.length && this.#spots[this.#nextSpot] < end
    ) {
      spot = true;
      this.#nextSpot++;
    }
    // Kept (a cheap copy: the reader reuses its buffer), compared in finish().
    if (spot) this.#kept.push([start, chunk.slice()]);
    this.bytes = end;
  }

  /** Compares the kept chunks in full; returns how many were compared. */
  finish(): number {
    const size = this.#payload.size;
    for (const [start, chunk] of this.#kept) {
      let message = Math.floor(start / size);
      let offset = start - message * size;
      for (let i = 0; i < chunk.length; i++) {
        const want = this.#payload.expected(message, offset);
        if (chunk[i] !== want) {
          throw new ValidationError(
            `stream byte ${
              start + i
            } (message ${message}, offset ${offset}) is ${
              chunk[i]
            }, expected ${want}`,
          );
        }
        if (++offset === size) {
          offset = 0;
          message++;
        }
      }
    }
    return this.#kept.length;
  }
}

// ---------------------------------------------------------------------------
// One run of a case

/** What one run returns: timed seconds and what was validated. */
interface RunResult {
  seconds: number;
  /** Process CPU time (user + system) over the timed span, in seconds. */
  cpuSeconds: number;
  bytes: number;
  spotChecked: number;
}

/** Closes things on any exit path; each closer runs once, errors ignored. */
class Closers {
  #list: (() => unknown)[] = [];
  #ran = false;

  /** Registers `close`; after {@linkcode run} (a timeout), runs it at once. */
  add(close: () => unknown): void {
    this.#list.push(close);
    if (this.#ran) this.run();
  }

  async run(): Promise<void> {
    this.#ran = true;
    const list = this.#list.splice(0).reverse();
    for (const close of list) {
      try {
        await close();
      } catch {
        // Already closed (or broken): nothing left to release.
      }
    }
  }
}

/**
 * Runs `body` with a time limit; on timeout the closers break whatever it
 * waits on. The closers always run at the end.
 */
async function bounded(
  ms: number,
  what: string,
  body: (closers: Closers) => Promise<RunResult>,
): Promise<RunResult> {
  const closers = new Closers();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`${what} took over ${ms} ms`));
      closers.run();
    }, ms);
  });
  const running = body(closers);
  running.catch(() => {});
  try {
    return await Promise.race([running, timeout]);
  } finally {
    clearTimeout(timer);
    await closers.run();
  }
}

async function sendAll(
  payload: Payload,
  count: number,
  send: (bytes: Uint8Array) => Promise<unknown>,
): Promise<void> {
  for (let i = 0; i < count; i++) {
    payload.stamp(i);
    await send(payload.bytes);
  }
}

async function framedRun(
  listener: Listener,
  options: TransportOptions,
  payload: Payload,
  count: number,
  closers: Closers,
): Promise<RunResult> {
  // Concurrently: TLS and QUIC servers handshake inside accept().
  const accepting = listener.accept();
  accepting.then((conn) => conn && closers.add(() => conn.close()), () => {});
  const client = await connect(listener.url, options);
  closers.add(() => client.close());
  const server = await accepting;
  if (!server) throw new Error(`${listener.url} stopped accepting`);
  const checker = new MessageChecker(payload, count);
  let end = 0;
  let cpu = { user: 0, system: 0 };
  const start = performance.now();
  const cpuStart = process.cpuUsage();
  const receiving = (async () => {
    for (let i = 0; i < count; i++) {
      const message = await server.receive();
      if (message === null) {
        throw new ValidationError(
          `the stream ended after ${i} of ${count} messages`,
        );
      }
      checker.check(message);
    }
    end = performance.now();
    cpu = process.cpuUsage(cpuStart);
  })();
  await Promise.all([
    sendAll(payload, count, (bytes) => client.send(bytes)),
    receiving,
  ]);
  // Orderly close: the receiver must then see the end, not more messages.
  await Promise.all([
    client.close(),
    (async (conn: Connection) => {
      const extra = await conn.receive();
      if (extra !== null) {
        throw new ValidationError(
          `received a message of ${extra.length} bytes after the last one`,
        );
      }
    })(server),
  ]);
  return {
    seconds: (end - start) / 1000,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    bytes: checker.bytes,
    spotChecked: checker.finish(),
  };
}

/**
 * Cuts a raw byte stream back into messages, each copied into a fresh array:
 * the least a message `receive()` must do on top of a raw read.
 */
class MessageCopier {
  readonly #checker: MessageChecker;
  readonly #size: number;
  #message: Uint8Array;
  #filled = 0;

  constructor(payload: Payload, count: number) {
    this.#checker = new MessageChecker(payload, count);
    this.#size = payload.size;
    this.#message = new Uint8Array(this.#size);
  }

  get bytes(): number {
    return this.#checker.bytes + this.#filled;
  }

  check(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) {
      const n = Math.min(chunk.length - at, this.#size - this.#filled);
      this.#message.set(chunk.subarray(at, at + n), this.#filled);
      this.#filled += n;
      at += n;
      if (this.#filled === this.#size) {
        this.#checker.check(this.#message);
        this.#message = new Uint8Array(this.#size);
        this.#filled = 0;
      }
    }
  }

  finish(): number {
    return this.#checker.finish();
  }
}

async function rawTcpRun(
  listener: Deno.TcpListener,
  payload: Payload,
  count: number,
  closers: Closers,
  copyMessages: boolean,
): Promise<RunResult> {
  const total = payload.size * count;
  const [client, server] = await Promise.all([
    Deno.connect({ hostname: HOST, port: listener.addr.port }),
    listener.accept(),
  ]);
  closers.add(() => client.close());
  closers.add(() => server.close());
  client.setNoDelay(true);
  server.setNoDelay(true);
  const checker = copyMessages
    ? new MessageCopier(payload, count)
    : new StreamChecker(payload, total);
  const buffer = new Uint8Array(RAW_READ_BYTES);
  let end = 0;
  let cpu = { user: 0, system: 0 };
  const start = performance.now();
  const cpuStart = process.cpuUsage();
  const receiving = (async () => {
    while (checker.bytes < total) {
      const n = await server.read(buffer);
      if (n === null) {
        throw new ValidationError(
          `the stream ended after ${checker.bytes} of ${total} bytes`,
        );
      }
      checker.check(buffer.subarray(0, n));
    }
    end = performance.now();
    cpu = process.cpuUsage(cpuStart);
  })();
  await Promise.all([
    sendAll(payload, count, async (bytes) => {
      let offset = 0;
      while (offset < bytes.length) {
        offset += await client.write(bytes.subarray(offset));
      }
    }),
    receiving,
  ]);
  await client.closeWrite();
  if (await server.read(buffer) !== null) {
    throw new ValidationError("received bytes after the total");
  }
  return {
    seconds: (end - start) / 1000,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    bytes: checker.bytes,
    spotChecked: checker.finish(),
  };
}

/** Reads a QUIC stream with a BYOB reader into one reused buffer. */
class ByobChunks {
  readonly #reader: ReadableStreamBYOBReader;
  #buffer: ArrayBuffer = new ArrayBuffer(RAW_READ_BYTES);

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader({ mode: "byob" });
  }

  /** The next chunk (valid until the next call), or null at the end. */
  async next(): Promise<Uint8Array | null> {
    const { value, done } = await this.#reader.read(
      new Uint8Array(this.#buffer),
    );
    if (done) return null;
    this.#buffer = value.buffer as ArrayBuffer;
    return value;
  }

  release(): void {
    this.#reader.releaseLock();
  }
}

interface RawQuicServer {
  endpoint: Deno.QuicEndpoint;
  listener: Deno.QuicListener;
}

async function rawQuicRun(
  server: RawQuicServer,
  tls: TlsMaterial,
  payload: Payload,
  count: number,
  closers: Closers,
): Promise<RunResult> {
  const total = payload.size * count;
  const clientEndpoint = new Deno.QuicEndpoint({
    hostname: "0.0.0.0",
    port: 0,
  });
  closers.add(() => clientEndpoint.close());
  const [clientConn, serverConn] = await Promise.all([
    Deno.connectQuic<false>({
      hostname: HOST,
      port: server.endpoint.addr.port,
      alpnProtocols: [QUIC_ALPN],
      caCerts: [tls.caCert],
      endpoint: clientEndpoint,
    }),
    server.listener.incoming().then((incoming) => incoming.accept<false>()),
  ]);
  closers.add(() => clientConn.close({ closeCode: 0, reason: "" }));
  closers.add(() => serverConn.close({ closeCode: 0, reason: "" }));
  const clientStream = await clientConn.createBidirectionalStream();
  const writer = clientStream.writable.getWriter();
  closers.add(() => writer.releaseLock());
  // QUIC announces the stream only once bytes flow: the adapter's hello.
  const helloWritten = writer.write(QUIC_HELLO);
  const streams = serverConn.incomingBidirectionalStreams.getReader();
  const first = await streams.read();
  streams.releaseLock();
  if (first.done) throw new Error("the QUIC client opened no stream");
  const chunks = new ByobChunks(first.value.readable);
  closers.add(() => chunks.release());
  await helloWritten;
  let hello = 0;
  while (hello < QUIC_HELLO.length) {
    const chunk = await chunks.next();
    if (chunk === null) throw new Error("the stream ended in the hello");
    if (hello + chunk.length > QUIC_HELLO.length) {
      throw new Error("the client sent data before the timing started");
    }
    hello += chunk.length;
  }

  const checker = new StreamChecker(payload, total);
  let end = 0;
  let cpu = { user: 0, system: 0 };
  const start = performance.now();
  const cpuStart = process.cpuUsage();
  const receiving = (async () => {
    while (checker.bytes < total) {
      const chunk = await chunks.next();
      if (chunk === null) {
        throw new ValidationError(
          `the stream ended after ${checker.bytes} of ${total} bytes`,
        );
      }
      checker.check(chunk);
    }
    end = performance.now();
    cpu = process.cpuUsage(cpuStart);
  })();
  await Promise.all([
    sendAll(payload, count, (bytes) => writer.write(bytes)),
    receiving,
  ]);
  await writer.close();
  if (await chunks.next() !== null) {
    throw new ValidationError("received bytes after the total");
  }
  return {
    seconds: (end - start) / 1000,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    bytes: checker.bytes,
    spotChecked: checker.finish(),
  };
}

// ---------------------------------------------------------------------------
// Cases: set up once, run many times

interface PreparedCase {
  name: CaseName;
  run(payload: Payload, count: number, closers: Closers): Promise<RunResult>;
  close(): Promise<void>;
}

async function prepare(
  name: CaseName,
  tls: TlsMaterial,
): Promise<PreparedCase> {
  const tlsOptions: TransportOptions = {
    tls: { cert: tls.cert, key: tls.key, caCerts: [tls.caCert] },
  };
  switch (name) {
    case "raw-tcp":
    case "raw-tcp-copy": {
      const listener = Deno.listen({ hostname: HOST, port: 0 });
      return {
        name,
        run: (payload, count, closers) =>
          rawTcpRun(
            listener,
            payload,
            count,
            closers,
            name === "raw-tcp-copy",
          ),
        close: () => Promise.resolve(listener.close()),
      };
    }
    case "raw-quic": {
      const endpoint = new Deno.QuicEndpoint({ hostname: HOST, port: 0 });
      const listener = endpoint.listen({
        alpnProtocols: [QUIC_ALPN],
        cert: tls.cert,
        key: tls.key,
      });
      return {
        name,
        run: (payload, count, closers) =>
          rawQuicRun({ endpoint, listener }, tls, payload, count, closers),
        close() {
          listener.stop();
          endpoint.close();
          return Promise.resolve();
        },
      };
    }
    default: {
      const url = {
        tcp: `tcp://${HOST}:0`,
        quic: `quic://${HOST}:0`,
        ws: `ws://${HOST}:0/patchwire`,
        wss: `wss://${HOST}:0/patchwire`,
        tls: `tls://${HOST}:0`,
      }[name];
      const secure = name !== "tcp" && name !== "ws";
      const options = secure ? tlsOptions : {};
      const listener = await listen(url, options);
      return {
        name,
        run: (payload, count, closers) =>
          framedRun(listener, options, payload, count, closers),
        close: () => listener.close(),
      };
    }
  }
}

// ---------------------------------------------------------------------------
// Reporting

interface Samples {
  mbps: number[];
  /** Process CPU use over each timed span, in cores (CPU seconds ÷ wall seconds). */
  cores: number[];
  error?: string;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function sizeLabel(bytes: number): string {
  if (bytes % (1 << 20) === 0) return `${bytes / (1 << 20)} MiB`;
  if (bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} B`;
}

/** The 1/5/15-minute load average, if `--allow-sys` grants it. */
function loadAverage(): string {
  const granted =
    Deno.permissions.querySync({ name: "sys", kind: "loadavg" }).state ===
      "granted";
  return granted
    ? Deno.loadavg().map((v) => v.toFixed(2)).join(" ")
    : "n/a (needs --allow-sys)";
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const args = parseArgs(Deno.args, [
    "mib",
    "sizes",
    "reps",
    "warmup-mib",
    "cases",
    "timeout-s",
  ], []);
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const opt = (key: string, fallback: string) =>
    args.options.get(key)?.at(-1) ?? fallback;
  const mib = intOption(opt("mib", "512"), "mib", 1);
  const reps = intOption(opt("reps", "3"), "reps", 1);
  const warmupMib = intOption(opt("warmup-mib", "32"), "warmup-mib", 0);
  const timeoutMs = intOption(opt("timeout-s", "60"), "timeout-s", 1) * 1000;
  const sizes = opt("sizes", "1M,64K").split(",").map((text) => {
    let size: number;
    try {
      size = parseSize(text, "--sizes");
    } catch (error) {
      throw new UsageError((error as Error).message);
    }
    if (!Number.isInteger(size) || size < 8 || size > mib * MIB) {
      throw new UsageError(
        `--sizes: ${text} must be a whole number of bytes from 8 to --mib`,
      );
    }
    return size;
  });
  const cases = opt("cases", ALL_CASES.join(",")).split(",").map((name) => {
    if (!ALL_CASES.includes(name as CaseName)) {
      throw new UsageError(
        `--cases: unknown case "${name}", expected some of ${
          ALL_CASES.join(",")
        }`,
      );
    }
    return name as CaseName;
  });

  const cores = navigator.hardwareConcurrency;
  console.log("# Transport throughput (loopback, one direction)\n");
  console.log(
    `Deno ${Deno.version.deno} (V8 ${Deno.version.v8}), ${Deno.build.target}; ` +
      `${cores} cores; sender and receiver in the same process (one event loop); ` +
      `load average at start ${loadAverage()}.`,
  );
  console.log(
    `${mib} MiB per run in messages of ${
      sizes.map(sizeLabel).join(" and ")
    }, sender awaiting each send; best and median of ${reps} runs ` +
      `(after a ${warmupMib} MiB warm-up), runs interleaved across cases; ` +
      `MB/s = 10^6 payload bytes per second; spread = (max − min) ÷ median; ` +
      `a line per run goes to stderr.\n`,
  );

  const certs = await makeDevCerts();
  const tls: TlsMaterial = {
    cert: certs.cert,
    key: certs.key,
    caCert: certs.caCert,
  };
  const prepared: PreparedCase[] = [];
  const results = new Map<string, Samples>();
  const key = (name: CaseName, size: number) => `${name}/${size}`;
  let failures = 0;
  const began = performance.now();
  try {
    for (const name of cases) prepared.push(await prepare(name, tls));
    const payloads = new Map(sizes.map((size) => [size, new Payload(size)]));

    const once = async (
      c: PreparedCase,
      size: number,
      bytes: number,
      label: string,
    ): Promise<RunResult> => {
      const count = Math.max(1, Math.floor(bytes / size));
      const result = await bounded(
        timeoutMs,
        `${c.name} ${label}`,
        (closers) => c.run(payloads.get(size)!, count, closers),
      );
      if (result.bytes !== count * size) {
        throw new ValidationError(
          `received ${result.bytes} bytes, sent ${count * size}`,
        );
      }
      if (result.spotChecked === 0) {
        throw new ValidationError("no content was spot-checked");
      }
      return result;
    };

    for (let rep = 0; rep <= reps; rep++) {
      if (rep === 0 && warmupMib === 0) continue;
      for (const size of sizes) {
        for (const c of prepared) {
          const samples = results.get(key(c.name, size)) ??
            { mbps: [], cores: [] };
          results.set(key(c.name, size), samples);
          if (samples.error) continue;
          const label = rep === 0 ? "warm-up" : `run ${rep}`;
          try {
            const result = await once(
              c,
              size,
              rep === 0 ? warmupMib * MIB : mib * MIB,
              `${sizeLabel(size)} ${label}`,
            );
            const mbps = result.bytes / result.seconds / 1e6;
            const cores = result.cpuSeconds / result.seconds;
            if (rep > 0) {
              samples.mbps.push(mbps);
              samples.cores.push(cores);
            }
            console.error(
              `${c.name.padEnd(8)} ${sizeLabel(size).padStart(7)} ${
                label.padEnd(7)
              } ${mbps.toFixed(0).padStart(6)} MB/s (${
                result.seconds.toFixed(3)
              } s, CPU ${
                cores.toFixed(2)
              } cores, ${result.spotChecked} spot checks)`,
            );
          } catch (error) {
            failures++;
            samples.error = error instanceof Error
              ? `${error.name}: ${error.message}`
              : String(error);
            console.error(
              `${c.name} ${sizeLabel(size)} ${label} FAILED: ${samples.error}`,
            );
          }
        }
      }
    }
  } finally {
    for (const c of prepared) {
      try {
        await c.close();
      } catch {
        // Closing a listener on the way out: nothing to report.
      }
    }
  }

  const stat = (
    name: CaseName,
    size: number,
    of: (values: number[]) => number,
  ): number | undefined => {
    const samples = results.get(key(name, size));
    return samples && !samples.error && samples.mbps.length
      ? of(samples.mbps)
      : undefined;
  };
  const max = (values: number[]) => Math.max(...values);

  console.log(
    "| case | message | best MB/s | median MB/s | spread | runs (MB/s) | CPU (cores) |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | --- | ---: |");
  for (const size of sizes) {
    for (const name of cases) {
      const samples = results.get(key(name, size))!;
      if (samples.error) {
        console.log(
          `| ${CASE_LABELS[name]} | ${
            sizeLabel(size)
          } | failed | | | ${samples.error} | |`,
        );
        continue;
      }
      const mid = median(samples.mbps);
      const spread = (max(samples.mbps) - Math.min(...samples.mbps)) / mid;
      console.log(
        `| ${CASE_LABELS[name]} | ${sizeLabel(size)} | ${
          max(samples.mbps).toFixed(0)
        } | ${mid.toFixed(0)} | ${(spread * 100).toFixed(0)}% | ${
          samples.mbps.map((v) => v.toFixed(0)).join(", ")
        } | ${median(samples.cores).toFixed(2)} |`,
      );
    }
  }

  const targets: [string, CaseName, CaseName, number][] = [
    ["framed TCP ÷ raw TCP", "tcp", "raw-tcp", 0.8],
    ["WebSocket ÷ framed TCP", "ws", "tcp", 0.5],
    ["framed QUIC ÷ raw QUIC", "quic", "raw-quic", 0.8],
  ];
  const rows: string[] = [];
  for (const size of sizes) {
    for (const [label, top, bottom, target] of targets) {
      if (!cases.includes(top) || !cases.includes(bottom)) continue;
      const ratio = (of: (values: number[]) => number) => {
        const a = stat(top, size, of);
        const b = stat(bottom, size, of);
        return a !== undefined && b !== undefined ? a / b : undefined;
      };
      const ofBests = ratio(max);
      const ofMedians = ratio(median);
      rows.push(
        `| ${label} | ${sizeLabel(size)} | ${
          ofBests === undefined ? "n/a" : ofBests.toFixed(2)
        } | ${ofMedians === undefined ? "n/a" : ofMedians.toFixed(2)} | ≥ ${
          target.toFixed(2)
        } | ${
          ofBests === undefined ? "n/a" : ofBests >= target ? "met" : "MISSED"
        } |`,
      );
    }
  }
  if (rows.length) {
    console.log(
      "\n| ratio | message | of bests | of medians | target | (of bests) |",
    );
    console.log("| --- | ---: | ---: | ---: | ---: | --- |");
    for (const row of rows) console.log(row);
  }
  console.log(
    `\n${((performance.now() - began) / 1000).toFixed(0)} s; ` +
      `load average at end ${loadAverage()}.`,
  );
  if (failures) {
    console.error(`${failures} case(s) failed`);
    Deno.exitCode = 1;
  }
}

if (import.meta.main) await runMain(USAGE, main);
