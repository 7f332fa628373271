/**
 * A minimal client for QMP, the QEMU Machine Protocol, over a Unix socket:
 * enough to pause and resume a guest around a capture and to ask it where
 * its RAM lives.
 *
 * QMP is newline-separated JSON. The server greets with `{"QMP": {...}}`,
 * the client enters command mode with `qmp_capabilities`, then every
 * `{"execute": ..., "id": N}` is answered by `{"return": ..., "id": N}` or
 * `{"error": {"class": ..., "desc": ...}, "id": N}`; asynchronous
 * `{"event": ...}` lines may arrive at any time in between.
 *
 * @example
 * ```ts ignore
 * import { QmpClient } from "./qmp.ts";
 * const qmp = await QmpClient.connect("/run/vm0.qmp");
 * const status = await qmp.execute<{ running: boolean }>("query-status");
 * if (status.running) await qmp.execute("stop");
 * qmp.close();
 * ```
 * @module
 */

/** A QMP failure: no QEMU at the socket, an error reply, or a lost connection. */
export class QmpError extends Error {
  override name = "QmpError";
  constructor(message: string, readonly errorClass?: string) {
    super(message);
  }
}

/** What `query-status` returns. */
export interface QmpStatus {
  running: boolean;
  /** The run state: "running", "paused", "shutdown", "internal-error", ... */
  status: string;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/** Longest line accepted from the server (replies are small; a bigger line is not QMP). */
const MAX_LINE_BYTES = 16 << 20;

/** A connected QMP session. */
export class QmpClient {
  /** The QEMU version from the greeting, e.g. "7.2.0". */
  readonly version: string;
  /** Events received, oldest first (at most the last 64). */
  readonly events: { event: string; data?: unknown }[] = [];

  readonly #conn: Deno.UnixConn;
  readonly #path: string;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  #closedReason: string | null = null;

  private constructor(conn: Deno.UnixConn, path: string, version: string) {
    this.#conn = conn;
    this.#path = path;
    this.version = version;
  }

  /**
   * Connects to the QMP socket at `path`, checks QEMU's greeting and enters
   * command mode. Fails with a {@linkcode QmpError} naming the path if nothing
   * listens there, or the peer does not greet like QEMU within `timeoutMs`.
   */
  static async connect(path: string, timeoutMs = 5_000): Promise<QmpClient> {
    let conn: Deno.UnixConn;
    try {
      conn = await Deno.connect({ transport: "unix", path });
    } catch (e) {
      throw new QmpError(
        `cannot connect to the QMP socket ${path}: ${(e as Error).message}`,
      );
    }
    const lines = readLines(conn);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new QmpError(
              `${path} sent no QMP greeting within ${timeoutMs} ms; expected QEMU's {"QMP": ...}`,
            ),
          ),
        timeoutMs,
      );
    });
    try {
      const first = await Promise.race([lines.next(), timeout]);
      if (first.done) {
        throw new QmpError(
          `${path} closed the connection without a greeting; expected QEMU's {"QMP": ...}`,
        );
      }
      let greeting: { QMP?: { version?: { qemu?: Record<string, number> } } };
      try {
        greeting = JSON.parse(first.value);
      } catch {
        greeting = {};
      }
      if (typeof greeting?.QMP !== "object" || greeting.QMP === null) {
        throw new QmpError(
          `${path} is not a QMP socket: it sent ${
            JSON.stringify(first.value.slice(0, 80))
          }, expected QEMU's {"QMP": ...} greeting`,
        );
      }
      const v = greeting.QMP.version?.qemu ?? {};
      const client = new QmpClient(
        conn,
        path,
        `${v.major ?? "?"}.${v.minor ?? "?"}.${v.micro ?? "?"}`,
      );
      client.#pump(lines);
      await Promise.race([client.execute("qmp_capabilities"), timeout]);
      return client;
    } catch (e) {
      try {
        conn.close();
      } catch {
        // already closed
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Runs `command` and resolves with its `return` value; rejects with a
   * {@linkcode QmpError} carrying QEMU's error class and description.
   */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
  ): Promise<T> {
    if (this.#closedReason !== null) {
      return Promise.reject(
        new QmpError(
          `QMP ${command} on ${this.#path}: ${this.#closedReason}`,
        ),
      );
    }
    const id = this.#nextId++;
    const { promise, resolve, reject } = Promise.withResolvers<unknown>();
    this.#pending.set(id, { command, resolve, reject });
    const line = JSON.stringify(
      args
        ? { execute: command, arguments: args, id }
        : { execute: command, id },
    ) + "\n";
    writeAll(this.#conn, new TextEncoder().encode(line)).catch((e) =>
      this.#shutdown(`the connection broke: ${(e as Error).message}`)
    );
    return promise as Promise<T>;
  }

  /** The guest's run state. */
  status(): Promise<QmpStatus> {
    return this.execute<QmpStatus>("query-status");
  }

  /** Closes the session; pending commands reject. Idempotent. */
  close(): void {
    this.#shutdown("the QMP session was closed");
  }

  async #pump(lines: AsyncIterator<string>): Promise<void> {
    try {
      for (;;) {
        const r = await lines.next();
        if (r.done) break;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(r.value);
        } catch {
          this.#shutdown(
            `QEMU sent a line that is not JSON: ${
              JSON.stringify(r.value.slice(0, 80))
            }`,
          );
          return;
        }
        if (typeof msg.event === "string") {
          this.events.push({ event: msg.event, data: msg.data });
          if (this.events.length > 64) this.events.shift();
          continue;
        }
        const id = msg.id as number;
        const p = this.#pending.get(id);
        if (!p) continue; // a reply to nothing we sent: ignore
        this.#pending.delete(id);
        if ("error" in msg) {
          const err = msg.error as { class?: string; desc?: string };
          p.reject(
            new QmpError(
              `QMP ${p.command} failed: ${err.desc ?? "unknown error"} (${
                err.class ?? "no class"
              })`,
              err.class,
            ),
          );
        } else {
          p.resolve(msg.return);
        }
      }
      this.#shutdown("QEMU closed the QMP connection (did the guest exit?)");
    } catch (e) {
      this.#shutdown(`the connection broke: ${(e as Error).message}`);
    }
  }

  #shutdown(reason: string): void {
    if (this.#closedReason !== null) return;
    this.#closedReason = reason;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
    for (const p of this.#pending.values()) {
      p.reject(new QmpError(`QMP ${p.command} on ${this.#path}: ${reason}`));
    }
    this.#pending.clear();
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) at += await conn.write(bytes.subarray(at));
}

/** The connection's lines (without line ends), as an async iterator. */
async function* readLines(conn: Deno.Conn): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  const buf = new Uint8Array(64 << 10);
  let text = "";
  for (;;) {
    let n: number | null;
    try {
      n = await conn.read(buf);
    } catch (e) {
      if (e instanceof Deno.errors.BadResource) return; // closed locally
      throw e;
    }
    if (n === null) return;
    text += decoder.decode(buf.subarray(0, n), { stream: true });
    let nl: number;
    while ((nl = text.indexOf("\n")) >= 0) {
      const line = text.slice(0, nl).replace(/\r$/, "");
      text = text.slice(nl + 1);
      if (line.trim()) yield line;
    }
    if (text.length > MAX_LINE_BYTES) {
      throw new QmpError(
        `a line longer than ${MAX_LINE_BYTES} bytes: not QMP`,
      );
    }
  }
}
