/**
 * Fencing by terms, over real sockets: a relay or backup that has seen a
 * cluster term refuses any upstream of a lower one (logged, counted, told
 * why), keeps refusing after a restart, and drops its current upstream when
 * it learns of a newer term.
 */

import { assert, assertEquals } from "./_assert.ts";
import { Backup } from "../src/backup.ts";
import { Relay } from "../src/relay.ts";
import {
  AckLevel,
  type ControlMessage,
  decodeControl,
  encodeControl,
} from "../src/protocol.ts";
import { connect } from "../transports/mod.ts";
import type { Connection } from "../src/transport.ts";
import { prometheus } from "../src/control_plane.ts";

function hello(term: number): Uint8Array {
  return encodeControl({
    type: "hello",
    token: "",
    images: [{ id: "vm", size: 1 << 16 }],
    epoch: 0,
    blockSize: 64,
    durable: false,
    level: AckLevel.applied,
    term,
  });
}

async function handshake(
  url: string,
  term: number,
): Promise<{ conn: Connection; answer: ControlMessage | null }> {
  const conn = await connect(url);
  await conn.send(hello(term));
  const bytes = await conn.receive();
  return { conn, answer: bytes === null ? null : decodeControl(bytes) };
}

Deno.test("a backup that has seen term 5 refuses an upstream of term 3, says why, counts it, and still does after a restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-term-" });
  const notes: string[] = [];
  let b = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: dir,
    note: (l) => notes.push(l),
  });
  try {
    const newer = await handshake(b.url, 5);
    assertEquals(newer.answer?.type, "state");
    await newer.conn.close();
    assertEquals(b.upstream.term, 5);
    assertEquals(b.status().term, 5);

    const older = await handshake(b.url, 3);
    assert(
      older.answer?.type === "error" &&
        /its term 3 is older than term 5, which this replica follows/.test(
          older.answer.message,
        ),
      JSON.stringify(older.answer),
    );
    await older.conn.close();
    assertEquals(b.upstream.refused.term, 1);
    assert(notes.some((l) => /refused: its term 3 is older/.test(l)));
    assert(
      /patchwire_upstream_refused_total\{role="backup",reason="term"\} 1/
        .test(prometheus(b.status())),
    );

    await b.close();
    b = await Backup.open({ listen: "tcp://127.0.0.1:0", store: dir });
    assertEquals(b.upstream.term, 5, "the term is kept in the store");
    const afterRestart = await handshake(b.url, 4);
    assertEquals(afterRestart.answer?.type, "error");
    await afterRestart.conn.close();
    const same = await handshake(b.url, 5);
    assertEquals(same.answer?.type, "state", "the same term is taken");
    await same.conn.close();
  } finally {
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a relay that learns of a newer term drops its upstream of the older one, which is told why", async () => {
  const relay = await Relay.open({
    listen: "tcp://127.0.0.1:0",
    // Nobody listens there: only the relay's upstream side is tried here.
    to: ["memory://term-test-nowhere"],
    ack: { who: { kind: "none" }, level: AckLevel.applied },
    link: { backoffMs: 3_600_000, maxBackoffMs: 3_600_000 },
    note: () => {},
  });
  try {
    const old = await handshake(relay.url, 1);
    assertEquals(old.answer?.type, "state");
    assertEquals(relay.term, 1);
    await relay.upstream.adoptTerm(2);
    const bytes = await old.conn.receive();
    const m = bytes && decodeControl(bytes);
    assert(
      m?.type === "error" &&
        /term 2 began: the upstream of term 1 was replaced/.test(m.message),
      JSON.stringify(m),
    );
    assertEquals(relay.term, 2);
    assertEquals(relay.status().term, 2);
    const again = await handshake(relay.url, 1);
    assertEquals(again.answer?.type, "error");
    await again.conn.close();
    await old.conn.close();
  } finally {
    await relay.close();
  }
});

Deno.test("an ack for an epoch not sent on this connection is ignored: a downstream cannot make the primary commit what it never received", async () => {
  const { listen } = await import("../transports/mod.ts");
  const { Primary } = await import("../src/primary.ts");
  const { openSource } = await import("../src/open_source.ts");
  const { zeroImageDigest } = await import("../src/image_state.ts");
  const listener = await listen("tcp://127.0.0.1:0");
  const p = new Primary(
    await openSource("synthetic:images=1,size=64K,seed=2,dirty=0.1"),
    { to: [listener.url], intervalMs: null, note: () => {} },
  );
  p.start();
  try {
    const conn = (await listener.accept())!;
    const hello = decodeControl((await conn.receive())!);
    assert(hello.type === "hello");
    const z = zeroImageDigest(hello.images[0].size, hello.blockSize);
    await conn.send(encodeControl({
      type: "state",
      epoch: 0,
      images: [{
        id: hello.images[0].id,
        size: hello.images[0].size,
        digestLo: z.lo,
        digestHi: z.hi,
      }],
      level: AckLevel.durable,
    }));
    // Acks for epochs 1..5 (another history's, say) before any was sent.
    await conn.send(
      encodeControl({ type: "ack", epoch: 5, level: AckLevel.durable }),
    );
    const first = p.checkpoint();
    // Epoch 1's frames arrive; only then does its ack count.
    let bytes: Uint8Array | null;
    do {
      bytes = await conn.receive();
    } while (bytes && !(bytes.length > 7 && bytes[7] === 2)); // COMMIT
    assertEquals(p.committed, 0, "the early ack was not counted");
    await conn.send(
      encodeControl({ type: "ack", epoch: 1, level: AckLevel.durable }),
    );
    assertEquals((await first).epoch, 1);
    assertEquals(p.committed, 1);
    await conn.close();
  } finally {
    await p.stop();
    await listener.close();
  }
});
