/**
 * One conformance suite, run against every transport adapter over real
 * loopback connections: ordering, sizes up to 64 MiB, backpressure, close and
 * error propagation, size limits, reconnects and refused connects.
 */

import { assert, assertEquals } from "./_assert.ts";
import { testCerts } from "./_certs.ts";
import {
  connect,
  type Connection,
  createQuicTransport,
  listen,
  type Listener,
  memoryPair,
  TransportError,
  transportFor,
  type TransportOptions,
} from "../transports/mod.ts";
import { MemoryConnection } from "../transports/memory.ts";

const ROOT = new URL("..", import.meta.url);

/** How the suite reaches one adapter. */
interface Adapter {
  name: string;
  /** Listen URL, usually with port 0. */
  url: string;
  listen(url: string, options: TransportOptions): Promise<Listener>;
  connect(url: string, options: TransportOptions): Promise<Connection>;
  /** TLS material etc. for the server side. */
  serverOptions(): Promise<TransportOptions>;
  /** TLS trust etc. for the client side. */
  clientOptions(): Promise<TransportOptions>;
  /** Whether a peer can be a separate process (not for memory:). */
  crossProcess: boolean;
}

const serverTls = async (): Promise<TransportOptions> => {
  const { cert, key } = await testCerts();
  return { tls: { cert, key } };
};
const clientTls = async (): Promise<TransportOptions> => ({
  tls: { caCerts: [(await testCerts()).caCert] },
});
const none = () => Promise.resolve({});

// QUIC notices a vanished peer only by silence: a short idle timeout keeps the
// peer-death case fast. (Negotiated as the minimum of both ends, so setting it
// on the listener is enough.)
const quickQuic = createQuicTransport({
  keepAliveIntervalMs: 300,
  maxIdleTimeoutMs: 1_500,
});

const viaMod = {
  listen: (url: string, options: TransportOptions) => listen(url, options),
  connect: (url: string, options: TransportOptions) => connect(url, options),
};

let memoryNames = 0;

const ADAPTERS: Adapter[] = [
  {
    name: "tcp",
    url: "tcp://127.0.0.1:0",
    ...viaMod,
    serverOptions: none,
    clientOptions: none,
    crossProcess: true,
  },
  {
    name: "tls",
    url: "tls://localhost:0",
    ...viaMod,
    serverOptions: serverTls,
    clientOptions: clientTls,
    crossProcess: true,
  },
  {
    name: "quic",
    url: "quic://127.0.0.1:0",
    listen: (url, options) => quickQuic.listen(new URL(url), options),
    connect: (url, options) => quickQuic.connect(new URL(url), options),
    serverOptions: serverTls,
    clientOptions: clientTls,
    crossProcess: true,
  },
  {
    name: "ws",
    url: "ws://127.0.0.1:0/patchwire",
    ...viaMod,
    serverOptions: none,
    clientOptions: none,
    crossProcess: true,
  },
  {
    name: "wss",
    url: "wss://localhost:0/sync",
    ...viaMod,
    serverOptions: serverTls,
    clientOptions: clientTls,
    crossProcess: true,
  },
  {
    name: "memory",
    get url() {
      return `memory://conformance-${++memoryNames}`;
    },
    ...viaMod,
    serverOptions: none,
    clientOptions: none,
    crossProcess: false,
  },
];

// ---------------------------------------------------------------------------
// Helpers

interface Pair {
  listener: Listener;
  client: Connection;
  server: Connection;
  close(): Promise<void>;
}

async function openPair(
  adapter: Adapter,
  extra: { server?: TransportOptions; client?: TransportOptions } = {},
): Promise<Pair> {
  const listener = await adapter.listen(adapter.url, {
    ...await adapter.serverOptions(),
    ...extra.server,
  });
  try {
    const accepted = listener.accept();
    const client = await adapter.connect(listener.url, {
      ...await adapter.clientOptions(),
      ...extra.client,
    });
    const server = await accepted;
    assert(server, "accept() returned null on an open listener");
    for (const end of [client, server]) {
      assert(
        end.remote && !end.remote.includes("undefined"),
        `remote "${end.remote}" should name the peer`,
      );
    }
    return {
      listener,
      client,
      server,
      async close() {
        await Promise.all([client.close(), server.close()]);
        await listener.close();
      },
    };
  } catch (error) {
    await listener.close();
    throw error;
  }
}

/** Deterministic content for message `i` of `size` bytes. */
function pattern(i: number, size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let j = 0; j < size; j++) bytes[j] = (i * 31 + j * 7 + (j >> 8)) & 255;
  return bytes;
}

/** Pseudo-random bytes (xorshift32), fast enough for tens of MiB. */
function noise(size: number, seed: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(size / 4));
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return new Uint8Array(words.buffer, 0, size);
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    bytes as Uint8Array<ArrayBuffer>,
  );
  return Array.from(new Uint8Array(digest), (b) => b.toString(16)).join("");
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `promise`, or a failure if it has not settled within `ms`. */
async function within<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${what}: no result within ${ms} ms`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function assertRejectsTransport(
  promise: Promise<unknown>,
  ...mustMention: string[]
): Promise<TransportError> {
  try {
    await promise;
  } catch (error) {
    assert(
      error instanceof TransportError,
      `expected a TransportError, got ${error}`,
    );
    for (const text of mustMention) {
      assert(
        error.message.includes(text),
        `error "${error.message}" should mention "${text}"`,
      );
    }
    return error;
  }
  throw new Error("expected a rejection with TransportError");
}

// ---------------------------------------------------------------------------
// The suite

function conformance(adapter: Adapter): void {
  const test = (name: string, fn: () => Promise<void>) =>
    Deno.test(`${adapter.name}: ${name}`, fn);

  test("delivers 2,000 messages of varied sizes in order", async () => {
    const pair = await openPair(adapter);
    try {
      const sizes = [0, 1, 3, 100, 1_000, 5_000, 70_000];
      const count = 2_000;
      const size = (i: number) => sizes[i % sizes.length] + (i % 13);
      const sending = (async () => {
        for (let i = 0; i < count; i++) {
          await pair.client.send(pattern(i, size(i)));
        }
      })();
      for (let i = 0; i < count; i++) {
        const got = await pair.server.receive();
        assert(got, `message ${i} missing`);
        assertEquals(got.length, size(i), `size of message ${i}`);
        assertEquals(got, pattern(i, size(i)), `content of message ${i}`);
      }
      await sending;
      // And the other way, with sends not awaited one by one.
      await Promise.all(
        Array.from({ length: 50 }, (_, i) => pair.server.send(pattern(i, i))),
      );
      for (let i = 0; i < 50; i++) {
        assertEquals(await pair.client.receive(), pattern(i, i));
      }
    } finally {
      await pair.close();
    }
  });

  test("carries 1 byte, a few bytes and 64 MiB intact", async () => {
    const pair = await openPair(adapter);
    try {
      const big = noise(64 << 20, 7);
      const expected = await sha256(big);
      const small = [
        new Uint8Array([42]),
        new Uint8Array([1, 2, 3, 4, 5]),
        noise(65_537, 3),
      ];
      const sending = (async () => {
        for (const message of small) await pair.client.send(message);
        await pair.client.send(big);
        await pair.client.send(new Uint8Array([9]));
      })();
      for (const message of small) {
        assertEquals(await pair.server.receive(), message);
      }
      const got = await pair.server.receive();
      assert(got);
      assertEquals(got.length, big.length);
      assertEquals(await sha256(got), expected);
      assertEquals(await pair.server.receive(), new Uint8Array([9]));
      await sending;
    } finally {
      await pair.close();
    }
  });

  test("stalls a writer while the reader does not read", async () => {
    const pair = await openPair(adapter);
    try {
      const total = 200;
      const message = new Uint8Array(1 << 20);
      let completed = 0;
      const sending = (async () => {
        for (let i = 0; i < total; i++) {
          // The same buffer every time: a resolved send must have taken it.
          new DataView(message.buffer).setUint32(0, i);
          message[message.length - 1] = i & 255;
          await pair.client.send(message);
          completed++;
        }
      })();
      await sleep(400);
      const early = completed;
      await sleep(200);
      const paused = completed;
      assert(
        paused < total / 2,
        `${paused} of ${total} 1 MiB sends completed while the reader was paused; expected far fewer`,
      );
      assertEquals(paused, early, "sends kept completing with no reader");
      for (let i = 0; i < total; i++) {
        const got = await pair.server.receive();
        assert(got, `message ${i} missing`);
        assertEquals(got.length, 1 << 20);
        assertEquals(new DataView(got.buffer, got.byteOffset).getUint32(0), i);
        assertEquals(got[got.length - 1], i & 255);
      }
      await sending;
      assertEquals(completed, total);
    } finally {
      await pair.close();
    }
  });

  test("client close: server sees the messages sent before it, then null", async () => {
    const pair = await openPair(adapter);
    try {
      for (let i = 0; i < 3; i++) await pair.client.send(pattern(i, 1_000));
      await pair.client.close();
      await assertRejectsTransport(pair.client.send(new Uint8Array(1)));
      assertEquals(await pair.client.receive(), null);
      for (let i = 0; i < 3; i++) {
        assertEquals(await pair.server.receive(), pattern(i, 1_000));
      }
      assertEquals(
        await within(pair.server.receive(), 5_000, "server receive"),
        null,
      );
      await within(pair.server.closed, 5_000, "server closed");
      await within(pair.client.closed, 5_000, "client closed");
      await assertRejectsTransport(pair.server.send(new Uint8Array(1)));
    } finally {
      await pair.close();
    }
  });

  test("server close: client receive returns null, sends reject", async () => {
    const pair = await openPair(adapter);
    try {
      await pair.server.send(new Uint8Array([7]));
      await pair.server.close();
      assertEquals(await pair.client.receive(), new Uint8Array([7]));
      assertEquals(
        await within(pair.client.receive(), 5_000, "client receive"),
        null,
      );
      await assertRejectsTransport(
        pair.client.send(new Uint8Array(1)),
        "closed",
      );
      await within(pair.client.closed, 5_000, "client closed");
    } finally {
      await pair.close();
    }
  });

  test("a peer that dies abruptly ends receive (reject or null)", async () => {
    if (!adapter.crossProcess) {
      const pair = await openPair(adapter);
      try {
        await pair.client.send(new Uint8Array([1]));
        assertEquals(await pair.server.receive(), new Uint8Array([1]));
        (pair.client as MemoryConnection).abort("peer crashed");
        await assertRejectsTransport(pair.server.receive(), "peer crashed");
        await assertRejectsTransport(pair.server.send(new Uint8Array(1)));
      } finally {
        await pair.close();
      }
      return;
    }
    const listener = await adapter.listen(
      adapter.url,
      await adapter.serverOptions(),
    );
    // A separate process connects, sends one message, and is then killed.
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        "--unstable-net",
        `import { connect } from ${
          JSON.stringify(new URL("transports/mod.ts", ROOT).href)
        };
        const conn = await connect(Deno.env.get("PW_URL"), JSON.parse(Deno.env.get("PW_OPTIONS")));
        await conn.send(new Uint8Array([1, 2, 3]));
        setInterval(() => {}, 1000);`,
      ],
      cwd: ROOT.pathname,
      env: {
        PW_URL: listener.url,
        PW_OPTIONS: JSON.stringify(await adapter.clientOptions()),
      },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const output = child.output();
    let server: Connection | null = null;
    try {
      server = await within(listener.accept(), 20_000, "accept from child");
      assert(server);
      assertEquals(await server.receive(), new Uint8Array([1, 2, 3]));
      child.kill("SIGKILL");
      const { code, signal } = await output;
      assert(
        code !== 0 || signal !== null,
        "the child should have been killed",
      );
      let outcome: string;
      try {
        outcome = String(
          await within(server.receive(), 10_000, "receive after peer death"),
        );
      } catch (error) {
        assert(
          error instanceof TransportError,
          `expected a TransportError, got ${error}`,
        );
        outcome = "TransportError";
      }
      assert(["null", "TransportError"].includes(outcome), outcome);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already dead.
      }
      const { stderr } = await output;
      await server?.close();
      await listener.close();
      // Surface the child's own failure, if any, for diagnosis.
      const text = new TextDecoder().decode(stderr).trim();
      if (server === null && text) console.error(text);
    }
  });

  test("refuses messages over maxMessageBytes, naming both sizes", async () => {
    // Receiving side with a small limit, sender without one.
    const pair = await openPair(adapter, { server: { maxMessageBytes: 1024 } });
    try {
      await pair.client.send(new Uint8Array(1024));
      assertEquals((await pair.server.receive())?.length, 1024);
      await pair.client.send(new Uint8Array(2048)).catch(() => {});
      await assertRejectsTransport(pair.server.receive(), "2048", "1024");
      await within(pair.server.closed, 5_000, "server closed after refusal");
    } finally {
      await pair.close();
    }
    // Sending side with the limit: refused before anything is sent.
    const second = await openPair(adapter, {
      client: { maxMessageBytes: 100 },
    });
    try {
      await assertRejectsTransport(
        second.client.send(new Uint8Array(101)),
        "101",
        "100",
      );
      await second.client.send(new Uint8Array(100));
      assertEquals((await second.server.receive())?.length, 100);
    } finally {
      await second.close();
    }
  });

  test("receive(maxBytes) refuses a larger message, as the connection limit does", async () => {
    const pair = await openPair(adapter);
    try {
      await pair.client.send(new Uint8Array(64));
      assertEquals((await pair.server.receive(64))?.length, 64);
      await pair.client.send(new Uint8Array(65)).catch(() => {});
      await assertRejectsTransport(pair.server.receive(64), "65", "64");
      await within(pair.server.closed, 5_000, "server closed after refusal");
    } finally {
      await pair.close();
    }
  });

  test("reconnects to the same listener after a close", async () => {
    const listener = await adapter.listen(
      adapter.url,
      await adapter.serverOptions(),
    );
    try {
      for (let round = 0; round < 2; round++) {
        const accepted = listener.accept();
        const client = await adapter.connect(
          listener.url,
          await adapter.clientOptions(),
        );
        const server = await accepted;
        assert(server);
        await client.send(pattern(round, 10));
        assertEquals(await server.receive(), pattern(round, 10));
        await server.send(pattern(round + 10, 20));
        assertEquals(await client.receive(), pattern(round + 10, 20));
        await client.close();
        assertEquals(await server.receive(), null);
        await server.close();
      }
    } finally {
      await listener.close();
    }
  });

  test("listener close: pending accept gets null, accepted connections stay open", async () => {
    const pair = await openPair(adapter);
    try {
      const pending = pair.listener.accept();
      await pair.listener.close();
      assertEquals(await within(pending, 5_000, "pending accept"), null);
      await pair.client.send(new Uint8Array([1, 2]));
      assertEquals(await pair.server.receive(), new Uint8Array([1, 2]));
      await pair.server.send(new Uint8Array([3]));
      assertEquals(await pair.client.receive(), new Uint8Array([3]));
    } finally {
      await pair.close();
    }
  });

  test("connect to a closed listener rejects with the URL", async () => {
    const listener = await adapter.listen(
      adapter.url,
      await adapter.serverOptions(),
    );
    const url = listener.url;
    await listener.close();
    const accepted = await listener.accept();
    assertEquals(accepted, null);
    const started = performance.now();
    await assertRejectsTransport(
      adapter.connect(url, {
        ...await adapter.clientOptions(),
        connectTimeoutMs: 1_000,
      }),
      url.replace(/\/patchwire$|\/sync$/, ""),
    );
    assert(performance.now() - started < 2_000, "connect was not prompt");
  });

  if (["tls", "quic", "wss"].includes(adapter.name)) {
    test("an untrusting client is refused; the listener goes on", async () => {
      const listener = await adapter.listen(
        adapter.url,
        await adapter.serverOptions(),
      );
      try {
        const accepted = listener.accept();
        await assertRejectsTransport(
          adapter.connect(listener.url, { connectTimeoutMs: 5_000 }),
          new URL(listener.url).port,
          "certificate",
        );
        const client = await adapter.connect(
          listener.url,
          await adapter.clientOptions(),
        );
        const server = await within(accepted, 5_000, "accept after refusal");
        assert(server);
        await client.send(new Uint8Array([4]));
        assertEquals(await server.receive(), new Uint8Array([4]));
        await Promise.all([client.close(), server.close()]);
      } finally {
        await listener.close();
      }
    });
  }

  if (adapter.name !== "memory") {
    test("port 0 listens on a real port", async () => {
      const listener = await adapter.listen(
        adapter.url,
        await adapter.serverOptions(),
      );
      try {
        const port = Number(new URL(listener.url).port);
        assert(port > 0, `listener.url ${listener.url} has no real port`);
      } finally {
        await listener.close();
      }
    });
  }
}

for (const adapter of ADAPTERS) conformance(adapter);

// ---------------------------------------------------------------------------
// Scheme and URL handling (mod.ts)

Deno.test("transportFor: unknown scheme names it and the supported ones", () => {
  try {
    transportFor("carrier-pigeon://coop:1");
    throw new Error("expected a TransportError");
  } catch (error) {
    assert(error instanceof TransportError);
    assert(error.message.includes("carrier-pigeon:"), error.message);
    for (const scheme of ["tcp:", "tls:", "quic:", "ws:", "wss:", "memory:"]) {
      assert(error.message.includes(scheme), error.message);
    }
  }
});

Deno.test("bad URLs are TransportErrors naming the URL and the expected form", async () => {
  await assertRejectsTransport(
    listen("tcp://127.0.0.1"),
    "tcp://127.0.0.1",
    "port",
    "tcp://host:port",
  );
  await assertRejectsTransport(
    connect("tls://bad_host!:80"),
    "tls://bad_host!:80",
    "expected",
  );
  await assertRejectsTransport(connect("not a url"), "not a url", "expected");
  for (const url of ["quic://127.0.0.1:0", "tls://127.0.0.1:0"]) {
    await assertRejectsTransport(
      listen(url),
      "listener serves a certificate: give --cert FILE and --key FILE",
      "options.tls.cert",
    );
  }
  await assertRejectsTransport(
    connect("memory://nobody-here"),
    "memory://nobody-here",
    "nobody is listening",
  );
});

Deno.test("ws: mounts on a caller's hono app at the URL's path", async () => {
  const { Hono } = await import("hono");
  const app = new Hono();
  app.get("/status", (c) => c.text("ok"));
  const listener = await listen("ws://127.0.0.1:0/replicate", { app });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    app.fetch,
  );
  try {
    const url = `ws://127.0.0.1:${server.addr.port}/replicate`;
    const accepted = listener.accept();
    const client = await connect(url);
    const conn = await accepted;
    assert(conn);
    await client.send(new Uint8Array([5]));
    assertEquals(await conn.receive(), new Uint8Array([5]));
    const status = await fetch(`http://127.0.0.1:${server.addr.port}/status`);
    assertEquals(await status.text(), "ok");
    await client.close();
    assertEquals(await conn.receive(), null);
    await conn.close();
  } finally {
    await listener.close();
    await server.shutdown();
  }
});

Deno.test("memoryPair: linked ends", async () => {
  const [a, b] = memoryPair();
  await a.send(new Uint8Array([1]));
  assertEquals(await b.receive(), new Uint8Array([1]));
  await b.close();
  assertEquals(await a.receive(), null);
});

Deno.test(
  "tls and wss listeners send without Nagle's delay: their accepted sockets have TCP_NODELAY",
  {
    ignore: Deno.build.os !== "linux",
  },
  async () => {
    const libc = Deno.dlopen("libc.so.6", {
      getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
      getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
      getsockopt: {
        parameters: ["i32", "i32", "i32", "buffer", "buffer"],
        result: "i32",
      },
    });
    const portOf = (fd: number, peer: boolean): number => {
      const addr = new Uint8Array(128), len = new Uint32Array([128]);
      const call = peer ? libc.symbols.getpeername : libc.symbols.getsockname;
      if (call(fd, addr, new Uint8Array(len.buffer)) !== 0) return -1;
      return (addr[2] << 8) | addr[3];
    };
    const noDelay = (fd: number): number => {
      const v = new Int32Array(1), len = new Uint32Array([4]);
      libc.symbols.getsockopt(
        fd,
        6,
        1,
        new Uint8Array(v.buffer),
        new Uint8Array(len.buffer),
      );
      return v[0];
    };
    const certs = await testCerts();
    const options = {
      tls: { cert: certs.cert, key: certs.key, caCerts: [certs.caCert] },
    };
    try {
      for (const url of ["tls://127.0.0.1:0", "wss://127.0.0.1:0/p"]) {
        const listener = await listen(url, options);
        const accepted = listener.accept();
        const client = await connect(listener.url, options);
        await client.send(new Uint8Array([1]));
        const server = (await accepted)!;
        assertEquals((await server.receive())?.length, 1);
        const port = Number(new URL(listener.url).port);
        const fds: number[] = [];
        for (let fd = 3; fd < 4096; fd++) {
          if (portOf(fd, false) === port && portOf(fd, true) > 0) fds.push(fd);
        }
        assert(fds.length > 0, `${url}: the accepted socket was found`);
        for (const fd of fds) assertEquals(noDelay(fd), 1, `${url}: fd ${fd}`);
        await client.close();
        await server.close();
        await listener.close();
      }
    } finally {
      libc.close();
    }
  },
);
