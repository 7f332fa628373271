/**
 * The WebSocket client of `transports/_ws_client.ts` against a hand-written
 * server (frames it cannot get from `Deno.serve`: fragments, pings, masked or
 * oversized frames, bad handshakes), and the ws:/wss: round trips it exists
 * for (no ~40 ms delayed-ACK stalls).
 */

import { assert, assertEquals } from "./_assert.ts";
import { testCerts } from "./_certs.ts";
import { connect, listen, TransportError } from "../transports/mod.ts";
import {
  connectWebSocket,
  type WsClientSocket,
} from "../transports/_ws_client.ts";

const encoder = new TextEncoder();
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** One frame as the server reads it (unmasked). */
interface Frame {
  fin: boolean;
  opcode: number;
  masked: boolean;
  payload: Uint8Array;
}

/** The server end of one raw connection: reads and writes frames by hand. */
class RawPeer {
  readonly conn: Deno.Conn;
  #buffer = new Uint8Array(0);

  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  async #need(n: number): Promise<void> {
    while (this.#buffer.length < n) {
      const chunk = new Uint8Array(64 << 10);
      const got = await this.conn.read(chunk);
      if (got === null) throw new Error("client ended the stream");
      const next = new Uint8Array(this.#buffer.length + got);
      next.set(this.#buffer);
      next.set(chunk.subarray(0, got), this.#buffer.length);
      this.#buffer = next;
    }
  }

  #take(n: number): Uint8Array {
    const out = this.#buffer.slice(0, n);
    this.#buffer = this.#buffer.slice(n);
    return out;
  }

  /** Reads the upgrade request; returns its Sec-WebSocket-Key. */
  async readRequest(): Promise<string> {
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      await this.#need(this.#buffer.length + 1);
      head = new TextDecoder().decode(this.#buffer);
    }
    const end = head.indexOf("\r\n\r\n") + 4;
    this.#take(end);
    const key = /^sec-websocket-key: *(.*)$/im.exec(head.slice(0, end));
    assert(key, `no Sec-WebSocket-Key in ${head}`);
    assert(/^upgrade: *websocket$/im.test(head), head);
    assert(/^sec-websocket-version: *13$/im.test(head), head);
    return key[1].trim();
  }

  async accept(key: string): Promise<void> {
    const digest = await crypto.subtle.digest(
      "SHA-1",
      encoder.encode(key + GUID),
    );
    const accept = btoa(String.fromCharCode(...new Uint8Array(digest)));
    await this.write(
      encoder.encode(
        `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
      ),
    );
  }

  async write(bytes: Uint8Array): Promise<void> {
    for (let at = 0; at < bytes.length;) {
      at += await this.conn.write(bytes.subarray(at));
    }
  }

  /** Writes a frame (unmasked unless `mask`). */
  writeFrame(
    opcode: number,
    payload: Uint8Array,
    { fin = true, mask = false } = {},
  ): Promise<void> {
    const n = payload.length;
    const head = n < 126 ? 2 : n < 0x10000 ? 4 : 10;
    const frame = new Uint8Array(head + (mask ? 4 : 0) + n);
    frame[0] = (fin ? 0x80 : 0) | opcode;
    const view = new DataView(frame.buffer);
    if (n < 126) frame[1] = n;
    else if (n < 0x10000) {
      frame[1] = 126;
      view.setUint16(2, n);
    } else {
      frame[1] = 127;
      view.setUint32(6, n);
    }
    if (mask) frame[1] |= 0x80; // key of zeros: the payload stays as is
    frame.set(payload, head + (mask ? 4 : 0));
    return this.write(frame);
  }

  async readFrame(): Promise<Frame> {
    await this.#need(2);
    const b0 = this.#buffer[0];
    const b1 = this.#buffer[1];
    let n = b1 & 0x7f;
    let head = 2;
    if (n === 126) {
      await this.#need(4);
      n = this.#buffer[2] << 8 | this.#buffer[3];
      head = 4;
    } else if (n === 127) {
      await this.#need(10);
      n = new DataView(this.#buffer.buffer).getUint32(6);
      head = 10;
    }
    const masked = (b1 & 0x80) !== 0;
    await this.#need(head + (masked ? 4 : 0) + n);
    this.#take(head);
    const key = masked ? this.#take(4) : new Uint8Array(4);
    const payload = this.#take(n);
    for (let i = 0; i < n; i++) payload[i] ^= key[i & 3];
    return { fin: (b0 & 0x80) !== 0, opcode: b0 & 0x0f, masked, payload };
  }
}

/** A one-connection raw server; `serve` runs against the accepted peer. */
async function withRawServer(
  serve: (peer: RawPeer) => Promise<void>,
  client: (url: URL) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = new URL(`ws://127.0.0.1:${listener.addr.port}/raw`);
  const served = (async () => {
    const conn = await listener.accept();
    conn.setNoDelay(true); // frames are written piecemeal here
    try {
      await serve(new RawPeer(conn));
    } finally {
      try {
        conn.close();
      } catch {
        // Closed by the test.
      }
    }
  })();
  try {
    await client(url);
    await served;
  } finally {
    listener.close();
  }
}

/** An upgraded raw peer. */
async function upgraded(peer: RawPeer): Promise<RawPeer> {
  await peer.accept(await peer.readRequest());
  return peer;
}

/** The socket's next events of interest, in order. */
function record(ws: WsClientSocket): {
  messages: (string | ArrayBuffer)[];
  errors: string[];
  closed: Promise<CloseEvent>;
} {
  const messages: (string | ArrayBuffer)[] = [];
  const errors: string[] = [];
  const closed = Promise.withResolvers<CloseEvent>();
  ws.addEventListener("message", (event) => messages.push(event.data));
  ws.addEventListener("error", (event) => {
    errors.push((event as ErrorEvent).message);
  });
  ws.addEventListener("close", (event) => closed.resolve(event));
  return { messages, errors, closed: closed.promise };
}

async function rejects(
  promise: Promise<unknown>,
  ...mustMention: string[]
): Promise<void> {
  try {
    await promise;
  } catch (error) {
    assert(error instanceof TransportError, `not a TransportError: ${error}`);
    for (const text of mustMention) {
      assert(
        error.message.includes(text),
        `"${error.message}" lacks "${text}"`,
      );
    }
    return;
  }
  throw new Error("expected a rejection");
}

Deno.test("ws client: masked frames of every length form, in order", async () => {
  const sizes = [0, 125, 126, 65_535, 65_536, 70_000, 600_000];
  const payloads = sizes.map((n) => {
    const bytes = new Uint8Array(n);
    for (let i = 0; i < n; i++) bytes[i] = (i * 13 + n) & 255;
    return bytes;
  });
  await withRawServer(async (raw) => {
    const peer = await upgraded(raw);
    for (const expected of payloads) {
      const frame = await peer.readFrame();
      assert(frame.masked, "client frames must be masked");
      assertEquals([frame.fin, frame.opcode], [true, 2]);
      assertEquals(frame.payload, expected);
    }
    const text = await peer.readFrame();
    assertEquals(new TextDecoder().decode(text.payload), "a 5 ü");
    assertEquals(text.opcode, 1);
    const close = await peer.readFrame();
    assertEquals(close.opcode, 8);
    assertEquals(close.payload[0] << 8 | close.payload[1], 1000);
    await peer.writeFrame(8, close.payload);
  }, async (url) => {
    const ws = await connectWebSocket(url, { timeoutMs: 5_000 });
    const events = record(ws);
    for (const payload of payloads) await ws.send(payload);
    await ws.send("a 5 ü");
    ws.close();
    const event = await events.closed;
    assertEquals([event.code, event.wasClean], [1000, true]);
    assertEquals(events.errors, []);
  });
});

Deno.test("ws client: fragments join into one message; pings are answered", async () => {
  await withRawServer(async (raw) => {
    const peer = await upgraded(raw);
    await peer.writeFrame(2, new Uint8Array([1, 2]), { fin: false });
    await peer.writeFrame(9, encoder.encode("are you there"));
    await peer.writeFrame(0, new Uint8Array([3]), { fin: false });
    await peer.writeFrame(0, new Uint8Array(200_000).fill(4));
    await peer.writeFrame(1, encoder.encode("hé"), { fin: false });
    await peer.writeFrame(0, encoder.encode("llo"));
    const pong = await peer.readFrame();
    assertEquals(pong.opcode, 10);
    assertEquals(new TextDecoder().decode(pong.payload), "are you there");
    await peer.writeFrame(8, new Uint8Array([0x03, 0xe9, 0x62, 0x79, 0x65])); // 1001 "bye"
    const close = await peer.readFrame();
    assertEquals(close.opcode, 8);
    assertEquals(close.payload[0] << 8 | close.payload[1], 1001);
  }, async (url) => {
    const ws = await connectWebSocket(url, { timeoutMs: 5_000 });
    const events = record(ws);
    const event = await events.closed;
    assertEquals(events.messages.length, 2);
    const binary = new Uint8Array(events.messages[0] as ArrayBuffer);
    assertEquals(binary.length, 200_003);
    assertEquals([...binary.subarray(0, 4)], [1, 2, 3, 4]);
    assertEquals(events.messages[1], "héllo");
    assertEquals([event.code, event.reason, event.wasClean], [
      1001,
      "bye",
      true,
    ]);
    assertEquals(events.errors, []);
    await rejects(ws.send(new Uint8Array(1)), "closed");
  });
});

Deno.test("ws client: a server gone without a close frame is an error and code 1006", async () => {
  await withRawServer(async (raw) => {
    const peer = await upgraded(raw);
    await peer.writeFrame(2, new Uint8Array([9]));
    peer.conn.close();
  }, async (url) => {
    const ws = await connectWebSocket(url, { timeoutMs: 5_000 });
    const events = record(ws);
    const event = await events.closed;
    assertEquals(events.messages.length, 1);
    assertEquals([event.code, event.wasClean], [1006, false]);
    assertEquals(events.errors.length, 1);
    assert(
      events.errors[0].includes("without a close frame"),
      events.errors[0],
    );
  });
});

Deno.test("ws client: masked and oversized server frames fail the connection with 1002 / 1009", async () => {
  for (
    const { frame, code, mention } of [
      {
        frame: { opcode: 2, mask: true, size: 3 },
        code: 1002,
        mention: "masked",
      },
      {
        frame: { opcode: 2, mask: false, size: 2_000 },
        code: 1009,
        mention: "2000",
      },
      {
        frame: { opcode: 5, mask: false, size: 1 },
        code: 1002,
        mention: "opcode 5",
      },
    ]
  ) {
    await withRawServer(async (raw) => {
      const peer = await upgraded(raw);
      await peer.writeFrame(frame.opcode, new Uint8Array(frame.size), {
        mask: frame.mask,
      });
      const close = await peer.readFrame();
      assertEquals(close.opcode, 8);
      assertEquals(close.payload[0] << 8 | close.payload[1], code);
      await peer.writeFrame(8, close.payload.subarray(0, 2));
    }, async (url) => {
      const ws = await connectWebSocket(url, {
        timeoutMs: 5_000,
        maxMessageBytes: 1_000,
      });
      const events = record(ws);
      const event = await events.closed;
      assertEquals(events.messages, []);
      assertEquals(event.code, 1006);
      assert(events.errors[0]?.includes(mention), events.errors[0]);
    });
  }
});

Deno.test("ws client: handshake refusals name the URL and what was expected", async () => {
  await withRawServer(async (peer) => {
    await peer.readRequest();
    await peer.write(
      encoder.encode(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 27\r\n\r\nno patchwire listener at /x",
      ),
    );
  }, async (url) => {
    await rejects(
      connectWebSocket(url, { timeoutMs: 5_000 }),
      url.href,
      "expected HTTP status 101",
      "503",
      "no patchwire listener at /x",
    );
  });
  await withRawServer(async (peer) => {
    await peer.readRequest();
    await peer.accept("not the key");
  }, async (url) => {
    await rejects(
      connectWebSocket(url, { timeoutMs: 5_000 }),
      url.href,
      "Sec-WebSocket-Accept",
    );
  });
  await withRawServer(async (peer) => {
    await peer.readRequest();
    // Never answers: waits for the client to give up.
    await peer.conn.read(new Uint8Array(1)).catch(() => null);
  }, async (url) => {
    await rejects(
      connectWebSocket(url, { timeoutMs: 200 }),
      url.href,
      "no answer within 200 ms",
    );
  });
});

Deno.test("ws/wss: request/reply round trips take no delayed-ACK stalls, either way", async () => {
  const { cert, key, caCert } = await testCerts();
  for (const url of ["ws://127.0.0.1:0/rtt", "wss://localhost:0/rtt"]) {
    const listener = await listen(url, { tls: { cert, key } });
    const accepted = listener.accept();
    const opened = performance.now();
    const client = await connect(listener.url, { tls: { caCerts: [caCert] } });
    const openMs = performance.now() - opened;
    const server = await accepted;
    assert(server);
    try {
      for (
        const [from, to, direction] of [[client, server, "client to server"], [
          server,
          client,
          "server to client",
        ]] as const
      ) {
        const times: number[] = [];
        for (let i = 0; i < 20; i++) {
          const started = performance.now();
          const replied = to.receive().then((m) => to.send(m!.subarray(0, 8)));
          await from.send(new Uint8Array(i % 2 ? 30_000 : 2_000));
          await replied;
          assertEquals((await from.receive())?.length, 8);
          times.push(performance.now() - started);
        }
        times.sort((a, b) => a - b);
        // A Nagle/delayed-ACK stall is ~40 ms; a loopback round trip well under 1.
        assert(
          times[10] < 15,
          `${url} ${direction}: median round trip ${
            times[10].toFixed(1)
          } ms, expected no ~40 ms stalls (${times.map((t) => t.toFixed(1))})`,
        );
      }
      assert(openMs < 1_000, `${url}: connecting took ${openMs.toFixed(0)} ms`);
    } finally {
      await Promise.all([client.close(), server.close()]);
      await listener.close();
    }
  }
});
