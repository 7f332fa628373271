/**
 * Untrusted peers, over real sockets: an upstream without the token or a
 * client certificate is refused before anything it sends is used (and the
 * refusal is logged and counted), on every transport; the control API
 * requires the token; frames over the limit are refused; and a peer that
 * stops reading holds its link's memory at the send-buffer cap, then is
 * base-synced once it reads again, while the others commit on.
 */

import { assert, assertEquals } from "./_assert.ts";
import { Primary, type PrimaryOptions } from "../src/primary.ts";
import { Backup } from "../src/backup.ts";
import {
  AckLevel,
  type ControlMessage,
  decodeControl,
  encodeControl,
} from "../src/protocol.ts";
import { connect } from "../transports/mod.ts";
import { EpochDecoder } from "../src/decoder.ts";
import { zeroImageDigest } from "../src/image_state.ts";
import { digestsOf } from "../src/_upstream.ts";
import type { Connection } from "../src/transport.ts";
import { openSource } from "../src/open_source.ts";
import { bytesEqual } from "../src/replay.ts";
import { PeerAuth } from "../src/peer_auth.ts";
import { createControlApp, prometheus } from "../src/control_plane.ts";
import { makeDevCerts } from "../src/_dev_certs.ts";
import type { TlsOptions } from "../src/transport.ts";
import { testCerts } from "./_certs.ts";
import { runTool } from "./_run_tool.ts";
import { Stallable } from "./_gate.ts";
import { until } from "./_until.ts";

const certs = await testCerts();
const tls: TlsOptions = {
  cert: certs.cert,
  key: certs.key,
  caCerts: [certs.caCert],
};
const quiet = () => {};
const SPEC = "synthetic:images=1,size=1M,seed=3,dirty=0.05";

/** A backup that requires `token` and, on TLS listeners, a client certificate from the test CA. */
async function guardedBackup(
  listen: string,
  dir: string,
  note: (line: string) => void = quiet,
): Promise<Backup> {
  return await Backup.open({
    listen,
    store: dir,
    transport: { tls },
    auth: await PeerAuth.create({
      token: "s3cret",
      cert: certs.cert,
      key: certs.key,
      ca: [certs.caCert],
    }),
    note,
  });
}

/** Random bytes (getRandomValues fills at most 64 KiB at a time). */
function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let off = 0; off < n; off += 65536) {
    crypto.getRandomValues(out.subarray(off, Math.min(n, off + 65536)));
  }
  return out;
}

/** Overwrites `bytes` random bytes of the file at random page-aligned places. */
async function scribble(path: string, size: number, bytes: number) {
  using f = await Deno.open(path, { write: true });
  for (let done = 0; done < bytes; done += 4096) {
    await f.seek(Math.floor(Math.random() * (size / 4096)) * 4096, 0);
    await f.write(randomBytes(4096));
  }
}

async function primaryTo(
  to: string[],
  auth: PeerAuth,
  options: Partial<PrimaryOptions> = {},
  spec = SPEC,
): Promise<Primary> {
  const p = new Primary(await openSource(spec), {
    to,
    intervalMs: null,
    auth,
    link: { transport: { tls }, backoffMs: 20, maxBackoffMs: 100 },
    note: quiet,
    ...options,
  });
  p.start();
  return p;
}

async function assertStoreEquals(b: Backup, p: Primary): Promise<void> {
  await until(
    () => b.store.state?.epoch === p.committed,
    `${b.url} to store epoch ${p.committed}`,
  );
  for (const image of p.encoder.images) {
    const stored = await Deno.readFile(`${b.store.dir}/${image.id}.img`);
    assert(
      bytesEqual(stored, image.committed.subarray(0, image.size)),
      `${b.url}: ${image.id}.img differs from the primary`,
    );
  }
}

const SCHEMES = [
  "tcp://127.0.0.1:0",
  "tls://127.0.0.1:0",
  "quic://127.0.0.1:0",
  "ws://127.0.0.1:0/patchwire",
  "wss://127.0.0.1:0/patchwire",
];

for (const listen of SCHEMES) {
  const scheme = listen.split(":")[0];
  const tlsScheme = ["tls", "quic", "wss"].includes(scheme);
  Deno.test(
    `${scheme}: an upstream with a wrong token${
      tlsScheme ? " or no client certificate" : ""
    } is refused before any frame is used, logged and counted; the right credentials replicate`,
    async () => {
      const dir = await Deno.makeTempDir({ prefix: "pw-auth-" });
      const notes: string[] = [];
      const b = await guardedBackup(listen, `${dir}/b`, (l) => notes.push(l));
      const attempts: [PeerAuth, "token" | "certificate"][] = [
        [
          await PeerAuth.create({
            token: "guess",
            cert: certs.cert,
            key: certs.key,
          }),
          "token",
        ],
      ];
      if (tlsScheme) {
        attempts.push([PeerAuth.withToken("s3cret"), "certificate"]);
      }
      try {
        for (const [auth, reason] of attempts) {
          const p = await primaryTo([b.url], auth);
          try {
            // The primary captured and sent an epoch's frames after its HELLO:
            // none of them reaches the store.
            const attempt = p.checkpoint();
            attempt.catch(() => {});
            await until(
              () => b.upstream.refused[reason] > 0,
              `a ${reason} refusal`,
            );
            await until(
              () => /authentication failed/.test(p.links[0].lastError ?? ""),
              "the primary to learn why",
            );
            assertEquals(b.epoch, 0, "nothing applied");
            assertEquals(b.store.state, null, "nothing stored");
          } finally {
            await p.stop();
          }
        }
        assert(notes.some((l) => /refused: wrong token/.test(l)), notes.join());
        const metrics = prometheus(b.status());
        assert(
          /patchwire_upstream_refused_total\{role="backup",reason="token"\} [1-9]/
            .test(metrics),
          metrics,
        );
        if (tlsScheme) {
          assert(
            notes.some((l) => /refused: no client certificate/.test(l)),
            notes.join("\n"),
          );
          assert(
            /reason="certificate"\} [1-9]/.test(metrics),
            metrics,
          );
        }
        const good = await primaryTo(
          [b.url],
          await PeerAuth.create({
            token: "s3cret",
            cert: certs.cert,
            key: certs.key,
            ca: [certs.caCert],
          }),
        );
        try {
          for (let i = 0; i < 3; i++) await good.checkpoint();
          await assertStoreEquals(b, good);
          assertEquals(
            b.status().upstream,
            {
              ...(b.status().upstream as Record<string, unknown>),
              peer: tlsScheme ? "CN=localhost" : "token",
            },
          );
        } finally {
          await good.stop();
        }
      } finally {
        await b.close();
        await Deno.remove(dir, { recursive: true });
      }
    },
  );
}

Deno.test("a client certificate from another CA is refused over tls", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-auth-" });
  const b = await guardedBackup("tls://127.0.0.1:0", `${dir}/b`);
  const stranger = await makeDevCerts();
  const p = await primaryTo(
    [b.url],
    await PeerAuth.create({
      token: "s3cret",
      cert: stranger.cert,
      key: stranger.key,
    }),
  );
  try {
    p.checkpoint().catch(() => {});
    await until(() => b.upstream.refused.certificate > 0, "a refusal");
    assert(
      /not signed by a trusted CA/.test(b.upstream.lastError ?? ""),
      String(b.upstream.lastError),
    );
    assertEquals(b.store.state, null);
  } finally {
    await p.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a frame over the receiver's limit is refused with both sizes named, and nothing is applied", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-max-" });
  const b = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/b`,
    transport: { maxMessageBytes: 64 << 10 },
    note: quiet,
  });
  // The first epoch carries the whole 1 MiB image of random bytes, which do
  // not compress: its frame is far larger.
  await Deno.writeFile(`${dir}/image`, randomBytes(1 << 20));
  const p = await primaryTo([b.url], PeerAuth.none(), {}, `file:${dir}/image`);
  try {
    p.checkpoint().catch(() => {});
    await until(
      () => /limit is 65536 bytes/.test(b.upstream.lastError ?? ""),
      "the backup to refuse the frame",
    );
    assertEquals(b.store.state, null);
  } finally {
    await p.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a peer that stops reading holds its link at the send-buffer cap, the log at its cap, and commits go on; reading again, it is base-synced", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-bound-" });
  const fast = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/fast`,
    note: quiet,
  });
  const slow = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/slow`,
    note: quiet,
  });
  const port = Number(new URL(slow.url).port);
  await Deno.writeFile(`${dir}/image`, new Uint8Array(4 << 20));
  const gate = new Stallable({ hostname: "127.0.0.1", port });
  const SEND_BUFFER = 256 << 10, LOG = 2 << 20;
  const p = await primaryTo(
    [fast.url, gate.url],
    PeerAuth.none(),
    {
      ack: { who: { kind: "quorum", k: 1 }, level: AckLevel.applied },
      logBytes: LOG,
      link: {
        sendBufferBytes: SEND_BUFFER,
        backoffMs: 20,
        maxBackoffMs: 100,
      },
    },
    `file:${dir}/image`,
  );
  try {
    await p.checkpoint();
    await assertStoreEquals(slow, p);
    gate.stall();
    let maxUnacked = 0, maxLog = 0, maxEpoch = 0;
    for (let i = 0; i < 40; i++) {
      // Random bytes do not compress: ~160 KiB on the wire per epoch.
      await scribble(`${dir}/image`, 4 << 20, 160 << 10);
      const r = await p.checkpoint(); // quorum:1 — the fast backup suffices
      maxEpoch = Math.max(maxEpoch, r.wireBytes);
      maxUnacked = Math.max(maxUnacked, p.links[1].status().unackedBytes);
      maxLog = Math.max(maxLog, p.retained.bytes);
    }
    await assertStoreEquals(fast, p);
    const stalled = p.links[1].status();
    assert(stalled.throttled, "the stalled peer's link waits for acks");
    assert(
      maxUnacked <= SEND_BUFFER + maxEpoch,
      `unacknowledged bytes ${maxUnacked} stay within the cap ${SEND_BUFFER} (+ one epoch ${maxEpoch})`,
    );
    assert(
      maxLog <= LOG + maxEpoch,
      `the retained log ${maxLog} stays within its cap ${LOG} (+ one epoch)`,
    );
    assert(
      stalled.sentEpoch < p.retained.first,
      "the log moved past what the stalled peer got",
    );
    gate.resume();
    await until(() => p.links[1].baseSyncs > 0, "a base sync of the peer");
    await until(
      () => slow.epoch === p.committed,
      "the peer to catch up after its base sync",
    );
    await assertStoreEquals(slow, p);
  } finally {
    await p.stop();
    gate.close();
    await fast.close();
    await slow.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the control API requires the token (but /healthz), counts refusals, and the CLI will not expose it without one", async () => {
  const app = createControlApp(
    () => ({ status: () => ({ role: "backup", epoch: 3 }) }),
    undefined,
    { token: "s3cret" },
  );
  const get = (path: string, auth?: string) =>
    app.fetch(
      new Request(`http://x${path}`, {
        headers: auth ? { authorization: auth } : {},
      }),
    );
  assertEquals((await get("/healthz")).status, 200);
  const denied = await get("/status");
  assertEquals(denied.status, 401);
  assert(/requires Authorization: Bearer/.test(await denied.text()));
  assertEquals((await get("/status", "Bearer nope")).status, 401);
  const ok = await get("/status", "Bearer s3cret");
  assertEquals(ok.status, 200);
  assertEquals((await ok.json()).epoch, 3);
  const metrics = await (await get("/metrics", "Bearer s3cret")).text();
  assert(/patchwire_http_refused_total\{role="backup"\} 2/.test(metrics));
  const post = await app.fetch(
    new Request("http://x/promote", { method: "POST" }),
  );
  assertEquals(post.status, 401);

  const dir = await Deno.makeTempDir({ prefix: "pw-http-" });
  try {
    const r = await runTool("backup", ["--unstable-net", "-A"], [
      "--listen",
      "tcp://127.0.0.1:0",
      "--store",
      `${dir}/b`,
      "--http",
      "0.0.0.0:0",
    ]);
    assertEquals(r.code, 2, r.stderr);
    assert(
      /reachable from other hosts.*bind it to 127.0.0.1 or give --token-file/
        .test(r.stderr),
      r.stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a stranger connecting, or a connection that says nothing, neither displaces the upstream nor holds up a new one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-admit-" });
  const b = await guardedBackup("tcp://127.0.0.1:0", `${dir}/b`);
  const port = Number(new URL(b.url).port);
  const auth = PeerAuth.withToken("s3cret");
  // A connection that never sends its HELLO, held open throughout.
  const silent = await Deno.connect({ hostname: "127.0.0.1", port });
  const p = await primaryTo([b.url], auth);
  const stranger = await primaryTo([b.url], PeerAuth.withToken("guess"));
  try {
    await p.checkpoint();
    stranger.checkpoint().catch(() => {});
    await until(() => b.upstream.refused.token > 0, "the stranger's refusal");
    for (let i = 0; i < 3; i++) await p.checkpoint();
    assertEquals(p.links[0].connects, 1, "the upstream was never displaced");
    assertEquals(b.upstream.connects, 1);
    await assertStoreEquals(b, p);
  } finally {
    silent.close();
    await stranger.stop();
    await p.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** The next control message on `conn` (null: closed). */
async function nextControl(conn: Connection): Promise<ControlMessage | null> {
  const bytes = await conn.receive();
  return bytes === null ? null : decodeControl(bytes);
}

const HELLO = encodeControl({
  type: "hello",
  token: "s3cret",
  images: [{ id: "img0", size: 1 << 20 }],
  epoch: 0,
  blockSize: 64,
  durable: false,
  level: AckLevel.applied,
  term: 0,
});

Deno.test("tls: each connection gets its own challenge, and a proof captured on one is refused on any other", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-replay-" });
  const notes: string[] = [];
  const b = await guardedBackup(
    "tls://127.0.0.1:0",
    `${dir}/b`,
    (l) => notes.push(l),
  );
  const holder = await PeerAuth.create({ cert: certs.cert, key: certs.key });
  const url = b.url.replace("127.0.0.1", "localhost");
  try {
    // The honest connection: HELLO, the challenge, its proof, STATE.
    const first = await connect(url, { tls });
    await first.send(HELLO);
    const c1 = await nextControl(first);
    assert(c1?.type === "challenge", `expected a challenge, got ${c1?.type}`);
    const captured = (await holder.proof("localhost", c1.nonce))!;
    await first.send(encodeControl(captured));
    assertEquals((await nextControl(first))?.type, "state");
    await first.close();

    // The replay: the same proof, on a new connection.
    const second = await connect(url, { tls });
    await second.send(HELLO);
    const c2 = await nextControl(second);
    assert(c2?.type === "challenge");
    assert(
      c2.nonce.some((x, i) => x !== c1.nonce[i]),
      "a fresh challenge",
    );
    await second.send(encodeControl(captured));
    const answer = await nextControl(second);
    assert(
      answer?.type === "error" &&
        /authentication failed: client proof signature does not verify .* this connection's challenge/
          .test(answer.message),
      JSON.stringify(answer),
    );
    await second.close();
    assertEquals(b.upstream.refused.certificate, 1);
    assertEquals(b.epoch, 0);
    assert(notes.some((l) => /refused: client proof signature/.test(l)));
  } finally {
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a HELLO naming more than --max-image-bytes, or more in all than --max-total-image-bytes, is refused before anything is allocated", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-limits-" });
  const notes: string[] = [];
  const b = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/b`,
    imageLimits: { image: 8 << 20, total: 12 << 20 },
    note: (l) => notes.push(l),
  });
  const hello = (sizes: number[]) =>
    encodeControl({
      type: "hello",
      token: "",
      images: sizes.map((size, i) => ({ id: `img${i}`, size })),
      epoch: 0,
      blockSize: 64,
      durable: false,
      level: AckLevel.applied,
      term: 0,
    });
  const ask = async (sizes: number[]) => {
    const conn = await connect(b.url);
    try {
      await conn.send(hello(sizes));
      return await nextControl(conn);
    } finally {
      await conn.close();
    }
  };
  try {
    const big = await ask([4 * 2 ** 30]);
    assert(
      big?.type === "error" &&
        /image "img0" of 4.00 GiB is more than --max-image-bytes 8.0 MiB/
          .test(big.message),
      JSON.stringify(big),
    );
    const many = await ask([8 << 20, 8 << 20]);
    assert(
      many?.type === "error" &&
        /2 images of 16.0 MiB together are more than --max-total-image-bytes 12.0 MiB/
          .test(many.message),
      JSON.stringify(many),
    );
    assertEquals(b.upstream.refused.protocol, 2);
    // Within the limits, a HELLO of other images is answered as their
    // all-zero replica at epoch 0, and nothing is allocated for it yet.
    const fits = await ask([8 << 20]);
    assert(fits?.type === "state" && fits.epoch === 0, JSON.stringify(fits));
    assertEquals(b.decoder, null, "no replica allocated for a HELLO alone");
    // The digests it answers with are those of a new all-zero replica, so
    // an upstream at epoch 0 goes on without a base sync.
    const zero = new EpochDecoder([{ id: "img0", size: 8 << 20 }]);
    assertEquals(fits.images, digestsOf(zero));
    zero.close();
  } finally {
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the all-zero digest a new replica answers with is computed without the image, for any size and block size", () => {
  for (const blockSize of [16, 64, 4096]) {
    for (const size of [0, 1, 63, 4096, 4097, 65536 + 80]) {
      const d = new EpochDecoder([{ id: "z", size }], { blockSize });
      assertEquals(
        zeroImageDigest(size, blockSize),
        d.images[0].digestValue(),
        `size ${size}, block size ${blockSize}`,
      );
      d.close();
    }
  }
});
