/**
 * Primary, relay and backup as library classes over real sockets: what each
 * role promises, checked against the backups' stores on disk.
 */

import { assert, assertEquals } from "./_assert.ts";
import { Primary, type PrimaryOptions } from "../src/primary.ts";
import { Relay } from "../src/relay.ts";
import { Backup } from "../src/backup.ts";
import { AckLevel } from "../src/protocol.ts";
import type { AckPolicy } from "../src/ack_policy.ts";
import { openSource } from "../src/open_source.ts";
import { bytesEqual } from "../src/replay.ts";
import type { TlsOptions } from "../src/transport.ts";
import { makeDevCerts } from "../src/_dev_certs.ts";
import { Stallable } from "./_gate.ts";
import { prometheus } from "../src/control_plane.ts";
import {
  type CommitBody,
  decodeFrame,
  encodeFrame,
  FrameType,
} from "../src/frame.ts";
import { until } from "./_until.ts";

const certs = await makeDevCerts();
const tls: TlsOptions = {
  cert: certs.cert,
  key: certs.key,
  caCerts: [certs.caCert],
};
const quiet = () => {};
const SPEC = "synthetic:images=2,size=1M,seed=7,dirty=0.05";

function policy(
  who: AckPolicy["who"],
  level: AckLevel = AckLevel.applied,
): AckPolicy {
  return { who, level };
}

async function backup(listen: string, store: string): Promise<Backup> {
  return await Backup.open({ listen, store, transport: { tls }, note: quiet });
}

async function primaryTo(
  to: string[],
  options: Partial<PrimaryOptions> = {},
): Promise<Primary> {
  const p = new Primary(await openSource(SPEC), {
    to,
    intervalMs: null,
    link: { transport: { tls }, backoffMs: 20, maxBackoffMs: 200 },
    note: quiet,
    ...options,
  });
  p.start();
  return p;
}

/** The backup's store files equal the primary's committed images at `epoch`. */
async function assertStoreEquals(
  b: Backup,
  p: Primary,
  epoch = p.committed,
): Promise<void> {
  assertEquals(b.epoch, epoch, `backup ${b.url} epoch`);
  // Without durable acks the store follows the replica in batches.
  await until(
    () => b.store.state?.epoch === epoch,
    `backup ${b.url} to store epoch ${epoch}`,
  );
  for (const image of p.encoder.images) {
    const stored = await Deno.readFile(`${b.store.dir}/${image.id}.img`);
    assert(
      bytesEqual(stored, image.committed.subarray(0, image.size)),
      `backup ${b.url}: ${image.id}.img differs from the primary at epoch ${epoch}`,
    );
  }
}

/**
 * Damages the primary's next epoch as it enters the retained log (so every
 * peer is sent the damaged frames); returns what puts the good frames back,
 * so that a resend commits.
 */
function corruptNextEpoch(
  p: Primary,
  damage: (frames: Uint8Array[]) => Uint8Array[],
): () => void {
  const origAppend = p.retained.append.bind(p.retained);
  let epoch = -1;
  let good: Uint8Array[] = [];
  p.retained.append = (entry) => {
    p.retained.append = origAppend; // once
    epoch = entry.epoch;
    good = entry.frames.slice();
    origAppend({ ...entry, frames: damage(entry.frames) });
  };
  return () => p.retained.get(epoch)!.frames.splice(0, good.length, ...good);
}

/** Flips a byte in the first frame, as a broken link would. */
function flipByte(frames: Uint8Array[]): Uint8Array[] {
  const bad = frames[0].slice();
  bad[bad.length - 20] ^= 0xff;
  return [bad, ...frames.slice(1)];
}

const TRANSPORTS = [
  "tcp://127.0.0.1:0",
  "tls://127.0.0.1:0",
  "quic://127.0.0.1:0",
  "ws://127.0.0.1:0/patchwire",
  "wss://127.0.0.1:0/patchwire",
  "memory://roles-e2e",
];

for (const listen of TRANSPORTS) {
  const scheme = listen.split(":")[0];
  Deno.test(`primary → backup over ${scheme}: every committed epoch is stored exactly`, async () => {
    const dir = await Deno.makeTempDir();
    const b = await backup(listen, `${dir}/store`);
    const p = await primaryTo([b.url]);
    try {
      for (let i = 0; i < 5; i++) {
        const r = await p.checkpoint();
        assertEquals(r.epoch, i + 1);
        await assertStoreEquals(b, p, r.epoch);
      }
    } finally {
      await p.stop();
      await b.close();
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("relay fans out to three backups over tcp, quic and ws, forwarding frames unchanged", async () => {
  const dir = await Deno.makeTempDir();
  const bs = [
    await backup("tcp://127.0.0.1:0", `${dir}/b1`),
    await backup("quic://127.0.0.1:0", `${dir}/b2`),
    await backup("ws://127.0.0.1:0/pw", `${dir}/b3`),
  ];
  const relay = await Relay.open({
    listen: "tcp://127.0.0.1:0",
    to: bs.map((b) => b.url),
    transport: { tls },
    link: { transport: { tls }, backoffMs: 20 },
    note: quiet,
  });
  const p = await primaryTo([relay.url]);
  try {
    for (let i = 0; i < 6; i++) {
      const r = await p.checkpoint();
      for (const b of bs) await assertStoreEquals(b, p, r.epoch);
    }
    // The relay sent each backup exactly what it received.
    const up = relay.upstream.bytesReceived;
    for (const l of relay.links) {
      assertEquals(
        l.baseSyncs,
        0,
        "no base sync for backups present from the start",
      );
      assert(l.bytesSent > 0 && l.bytesSent <= up, "forwarded bytes");
    }
    // Upload from the primary does not grow with the number of backups.
    assertEquals(p.links.length, 1);
  } finally {
    await p.stop();
    await relay.close();
    for (const b of bs) await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("quorum:2 keeps committing with one of three backups stopped; all does not", async () => {
  const dir = await Deno.makeTempDir();
  const bs = [
    await backup("tcp://127.0.0.1:0", `${dir}/b1`),
    await backup("tcp://127.0.0.1:0", `${dir}/b2`),
    await backup("tcp://127.0.0.1:0", `${dir}/b3`),
  ];
  const urls = bs.map((b) => b.url);
  const quorum = await primaryTo(urls, {
    ack: policy({ kind: "quorum", k: 2 }),
  });
  try {
    await quorum.checkpoint();
    await bs[2].close();
    for (let i = 0; i < 3; i++) {
      const r = await quorum.checkpoint();
      await assertStoreEquals(bs[0], quorum, r.epoch);
      await assertStoreEquals(bs[1], quorum, r.epoch);
    }
    assertEquals(bs[2].epoch, 1, "the stopped backup stayed at epoch 1");
  } finally {
    await quorum.stop();
  }
  // A fresh primary with `all` and the same stopped backup: no commit.
  const all = await primaryTo(urls.slice(0, 2).concat(urls[2]), {
    ack: policy({ kind: "all" }),
  });
  try {
    for (const b of bs.slice(0, 2)) await b.close();
    const b1 = await backup(urls[0], `${dir}/c1`);
    const b2 = await backup(urls[1], `${dir}/c2`);
    let committed = false;
    const pending = all.checkpoint().then(() => committed = true);
    await new Promise((r) => setTimeout(r, 700));
    assertEquals(committed, false, "`all` must wait for the stopped backup");
    // The third backup comes back (a new store): it is base-synced and the epoch commits.
    const b3 = await backup(urls[2], `${dir}/c3`);
    await pending;
    for (const b of [b1, b2, b3]) await assertStoreEquals(b, all);
    for (const b of [b1, b2, b3]) await b.close();
  } finally {
    await all.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ack levels: received, applied and durable each commit; durable is reported by the backup", async () => {
  const dir = await Deno.makeTempDir();
  const b = await backup("tcp://127.0.0.1:0", `${dir}/b`);
  try {
    for (
      const level of [AckLevel.received, AckLevel.applied, AckLevel.durable]
    ) {
      const p = await primaryTo([b.url], {
        ack: policy({ kind: "all" }, level),
      });
      try {
        const r = await p.checkpoint();
        await until(() => b.epoch === r.epoch, "the backup to apply");
        await until(() => p.links[0].acks.epochs[level] >= r.epoch, "ack");
        if (level === AckLevel.durable) {
          assertEquals(p.links[0].acks.epochs[AckLevel.durable], r.epoch);
        }
      } finally {
        await p.stop();
      }
      // Each new primary starts from epoch 0: the backup is base-synced or restarted.
    }
  } finally {
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a restarted backup catches up from the retained log, without a base sync", async () => {
  const dir = await Deno.makeTempDir();
  let b = await backup("tcp://127.0.0.1:0", `${dir}/b`);
  const url = b.url;
  const other = await backup("tcp://127.0.0.1:0", `${dir}/other`);
  const p = await primaryTo([url, other.url], {
    ack: policy({ kind: "any" }),
  });
  try {
    await p.checkpoint();
    await p.checkpoint();
    await until(() => b.epoch === 2, "backup at epoch 2");
    await b.close();
    for (let i = 0; i < 4; i++) await p.checkpoint();
    assertEquals(p.committed, 6);
    b = await backup(url, `${dir}/b`);
    assertEquals(b.epoch, 2, "the store reopens at its last committed epoch");
    await until(() => b.epoch === 6, "catch-up to epoch 6");
    await assertStoreEquals(b, p, 6);
    assertEquals(p.links[0].baseSyncs, 0, "caught up from the log");
  } finally {
    await p.stop();
    await b.close();
    await other.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a backup joining after the log moved on gets a base sync, then the stream", async () => {
  const dir = await Deno.makeTempDir();
  const first = await backup("tcp://127.0.0.1:0", `${dir}/first`);
  // A port nobody listens on yet: reserve one, then free it.
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const lateUrl = `tcp://127.0.0.1:${(probe.addr as Deno.NetAddr).port}`;
  probe.close();
  const p = await primaryTo([first.url, lateUrl], {
    ack: policy({ kind: "any" }),
    logBytes: 1, // keep only the newest epoch
  });
  let late: Backup | null = null;
  try {
    for (let i = 0; i < 5; i++) await p.checkpoint();
    late = await backup(lateUrl, `${dir}/late`);
    await until(() => late!.epoch === 5, "base sync to epoch 5");
    await assertStoreEquals(late, p, 5);
    assertEquals(p.links[1].baseSyncs, 1);
    const r = await p.checkpoint();
    await until(
      () => late!.epoch === r.epoch,
      "the next epoch after the base sync",
    );
    await assertStoreEquals(late, p, r.epoch);
  } finally {
    await p.stop();
    await first.close();
    await late?.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("two chained relays: primary → relay → relay → backups", async () => {
  const dir = await Deno.makeTempDir();
  const bs = [
    await backup("tcp://127.0.0.1:0", `${dir}/b1`),
    await backup("ws://127.0.0.1:0/pw", `${dir}/b2`),
  ];
  const edge = await Relay.open({
    listen: "quic://127.0.0.1:0",
    to: bs.map((b) => b.url),
    transport: { tls },
    link: { transport: { tls }, backoffMs: 20 },
    note: quiet,
  });
  const core = await Relay.open({
    listen: "tcp://127.0.0.1:0",
    to: [edge.url],
    transport: { tls },
    link: { transport: { tls }, backoffMs: 20 },
    note: quiet,
  });
  const p = await primaryTo([core.url]);
  try {
    for (let i = 0; i < 4; i++) {
      const r = await p.checkpoint();
      for (const b of bs) await assertStoreEquals(b, p, r.epoch);
    }
  } finally {
    await p.stop();
    await core.close();
    await edge.close();
    for (const b of bs) await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("promote: a backup becomes the primary and peers at its epoch continue incrementally", async () => {
  const dir = await Deno.makeTempDir();
  const b1 = await backup("tcp://127.0.0.1:0", `${dir}/b1`);
  const b2 = await backup("tcp://127.0.0.1:0", `${dir}/b2`);
  const p = await primaryTo([b1.url, b2.url]);
  for (let i = 0; i < 3; i++) await p.checkpoint();
  await p.stop(); // the primary's host fails
  const promoted = await b1.promote({
    to: [b2.url],
    intervalMs: null,
    link: { backoffMs: 20 },
    note: quiet,
  });
  try {
    assertEquals(promoted.epoch, 3);
    // Whatever now runs on b1's images changes them.
    const img = `${b1.store.dir}/${promoted.encoder.images[0].id}.img`;
    const f = await Deno.open(img, { write: true });
    await f.write(new TextEncoder().encode("written after failover"));
    f.close();
    const r = await promoted.checkpoint();
    assertEquals(r.epoch, 4);
    await assertStoreEquals(b2, promoted, 4);
    assertEquals(
      promoted.links[0].baseSyncs,
      0,
      "b2 was at epoch 3: no resync",
    );
    const stored = await Deno.readFile(
      `${b2.store.dir}/${promoted.encoder.images[0].id}.img`,
    );
    assertEquals(
      new TextDecoder().decode(stored.subarray(0, 22)),
      "written after failover",
    );
  } finally {
    await b1.close();
    await b2.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a frame corrupted in transit is rejected: the store stays at the last committed epoch, then the resend commits", async () => {
  const dir = await Deno.makeTempDir();
  const b = await backup("tcp://127.0.0.1:0", `${dir}/b`);
  const p = await primaryTo([b.url]);
  try {
    await p.checkpoint();
    await assertStoreEquals(b, p, 1);
    const epoch1 = p.encoder.images.map((i) => i.committed.slice(0, i.size));
    const repair = corruptNextEpoch(p, flipByte);
    const pending = p.checkpoint();
    await until(
      () => b.upstream.lastError !== null,
      "the backup to reject epoch 2",
    );
    assert(
      /epoch 2 rejected: frame checksum mismatch/.test(b.upstream.lastError!),
      `the error names the cause: ${b.upstream.lastError}`,
    );
    assertEquals(b.epoch, 1);
    assertEquals(b.store.state?.epoch, 1);
    for (const [s, image] of p.encoder.images.entries()) {
      const stored = await Deno.readFile(`${b.store.dir}/${image.id}.img`);
      assert(bytesEqual(stored, epoch1[s]), "store untouched by the bad epoch");
    }
    // The corruption was in transit: the link reconnects and resends epoch 2.
    repair();
    const r = await pending;
    assertEquals(r.epoch, 2);
    await assertStoreEquals(b, p, 2);
    assert(p.links[0].connects >= 2, "the link reconnected");
  } finally {
    await p.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a relay forwards a corrupted epoch before verifying it, then rejects it like its backup, and the resend commits", async () => {
  const dir = await Deno.makeTempDir();
  const b = await backup("tcp://127.0.0.1:0", `${dir}/b`);
  const r = await Relay.open({
    listen: "tcp://127.0.0.1:0",
    to: [b.url],
    link: { backoffMs: 20 },
    note: quiet,
  });
  const p = await primaryTo([r.url]);
  try {
    await p.checkpoint();
    await assertStoreEquals(b, p, 1);
    // The relay's own decode runs after its peers acked: it follows.
    await until(() => r.epoch === 1, "the relay's replica to reach epoch 1");
    const repair = corruptNextEpoch(p, flipByte);
    const pending = p.checkpoint();
    await until(
      () => r.upstream.lastError !== null && b.upstream.lastError !== null,
      "the relay and the backup to reject epoch 2",
    );
    for (const e of [r.upstream.lastError!, b.upstream.lastError!]) {
      assert(/epoch 2 rejected: frame checksum mismatch/.test(e), e);
    }
    assertEquals(r.epoch, 1);
    assertEquals(b.epoch, 1);
    repair();
    assertEquals((await pending).epoch, 2);
    await assertStoreEquals(b, p, 2);
    await until(() => r.epoch === 2, "the relay's replica to reach epoch 2");
  } finally {
    await p.stop();
    await r.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bad input: unknown scheme, bad --store, unreachable peer", async () => {
  const dir = await Deno.makeTempDir();
  try {
    let err = "";
    await backup("gopher://127.0.0.1:1", `${dir}/s`).catch((e) =>
      err = e.message
    );
    assert(
      /gopher/.test(err) && /tcp/.test(err),
      `names scheme and choices: ${err}`,
    );
    await Deno.writeTextFile(`${dir}/file`, "x");
    err = "";
    await backup("tcp://127.0.0.1:0", `${dir}/file`).catch((e) =>
      err = e.message
    );
    assert(err.includes(`${dir}/file`), `names the store: ${err}`);
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    const p = await primaryTo([`tcp://127.0.0.1:${port}`], {
      ack: policy({ kind: "none" }),
    });
    try {
      const r = await p.checkpoint();
      assertEquals(r.epoch, 1, "`none` commits without peers");
      await until(() => p.links[0].lastError !== null, "a connect error");
      assert(
        p.links[0].lastError!.includes(`127.0.0.1:${port}`),
        `names the peer: ${p.links[0].lastError}`,
      );
      assertEquals(p.links[0].state === "live", false);
    } finally {
      await p.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a synthetic source's dirty log names every page it wrote: the hinted scan encodes exactly", async () => {
  const source = await openSource(
    "synthetic:images=2,size=2M,seed=11,dirty=0.1",
  );
  const { EpochEncoder } = await import("../src/encoder.ts");
  const { EpochDecoder } = await import("../src/decoder.ts");
  const encoder = new EpochEncoder(source.images);
  const decoder = new EpochDecoder(source.images);
  const synthetic =
    source as import("../src/synthetic_source.ts").SyntheticSource;
  let hinted = 0;
  for (let e = 0; e < 12; e++) {
    const { dirtyPages } = await source.capture(encoder.captureBuffers);
    if (dirtyPages) hinted++;
    decoder.applyEpoch(
      encoder.encode(encoder.captureBuffers, dirtyPages).frames,
    );
    synthetic.workload.images.forEach((img, i) => {
      assert(
        bytesEqual(encoder.captureBuffers[i], img),
        `capture of image ${i}`,
      );
      assert(
        bytesEqual(decoder.images[i].committed.subarray(0, img.length), img),
        `epoch ${e + 1}: receiver equals the workload's image ${i}`,
      );
    });
  }
  assertEquals(hinted, 11, "every capture after the first carries a dirty log");
  encoder.close();
  decoder.close();
});

Deno.test("ack-level received commits once an epoch's frames arrive, before the backup verifies and applies it", async () => {
  const dir = await Deno.makeTempDir();
  const b = await backup("tcp://127.0.0.1:0", `${dir}/b`);
  const p = await primaryTo([b.url], {
    ack: policy({ kind: "all" }, AckLevel.received),
  });
  try {
    await p.checkpoint();
    await until(() => b.epoch === 1, "epoch 1 applied");
    // Epoch 2 arrives whole and well-formed, but its COMMIT names a wrong
    // digest: the backup will refuse to apply it …
    const repair = corruptNextEpoch(p, (frames) => {
      const commit = decodeFrame(frames[frames.length - 1]);
      const body = commit.body as CommitBody;
      const wrong = encodeFrame(
        FrameType.COMMIT,
        commit.level,
        commit.epoch,
        "",
        {
          ...body,
          images: body.images.map((i) => ({ ...i, digestLo: i.digestLo ^ 1 })),
        },
      );
      return [...frames.slice(0, -1), wrong];
    });
    // … but it had received every frame: under protocol A the epoch commits.
    const r = await p.checkpoint();
    assertEquals(r.epoch, 2);
    await until(() => b.upstream.lastError !== null, "the refused apply");
    assert(
      /digest mismatch/.test(b.upstream.lastError!),
      b.upstream.lastError!,
    );
    assertEquals(b.epoch, 1);
    // The link reconnects and resends epoch 2 from the log; now it applies.
    repair();
    await until(() => b.epoch === 2, "epoch 2 applied after the resend");
    await assertStoreEquals(b, p, 2);
  } finally {
    await p.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a backup whose store write fails reopens the store, reloads its replica from it, and carries on", async () => {
  const { _testing } = await import("../src/backup_store.ts");
  const dir = await Deno.makeTempDir();
  const b = await backup("tcp://127.0.0.1:0", `${dir}/b`);
  // Durable acks: every epoch is written to the store before it is acked.
  const p = await primaryTo([b.url], {
    ack: policy({ kind: "all" }, AckLevel.durable),
  });
  try {
    await p.checkpoint();
    await p.checkpoint();
    // Epoch 3's write stops right after its journal: the store refuses writes
    // until reopened; reopening redoes the whole journal.
    _testing.crashAfter = "journal";
    const r = await p.checkpoint();
    _testing.crashAfter = null;
    assertEquals(r.epoch, 3);
    assert(
      /could not be stored/.test(b.upstream.lastError ?? ""),
      `the failed write rejected the epoch: ${b.upstream.lastError}`,
    );
    assertEquals(b.store.recovery.journal, "redone");
    await assertStoreEquals(b, p, 3);
    const next = await p.checkpoint();
    await assertStoreEquals(b, p, next.epoch);
  } finally {
    _testing.crashAfter = null;
    await p.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("without durable acks the store follows the replica in batches; with them, before each ack", async () => {
  const dir = await Deno.makeTempDir();
  const b = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/b`,
    flushMs: 60_000, // only the 16-epoch batch limit flushes
    note: quiet,
  });
  const applied = await primaryTo([b.url]);
  try {
    for (let i = 0; i < 20; i++) await applied.checkpoint();
    assertEquals(b.epoch, 20);
    const stored = b.store.state?.epoch ?? 0;
    assert(stored >= 16 && stored < 20, `one batch of 16 written: ${stored}`);
    b.flush();
    await assertStoreEquals(b, applied, 20);
  } finally {
    await applied.stop();
  }
  const durable = await primaryTo([b.url], {
    ack: policy({ kind: "all" }, AckLevel.durable),
  });
  try {
    for (let i = 0; i < 3; i++) {
      const r = await durable.checkpoint();
      assertEquals(b.store.state?.epoch, r.epoch, "stored before the ack");
    }
  } finally {
    await durable.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a peer cut off without a word is noticed within the peer timeout, and caught up once it is back", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-liveness-" });
  const b = await backup("tcp://127.0.0.1:0", `${dir}/b`);
  const gate = new Stallable({
    hostname: "127.0.0.1",
    port: Number(new URL(b.url).port),
  });
  const p = await primaryTo([gate.url], {
    link: {
      // Generous for a loaded CI machine, short against TCP's minutes.
      peerTimeoutMs: 2000,
      keepaliveMs: 200,
      backoffMs: 20,
      maxBackoffMs: 100,
    },
    ack: policy({ kind: "none" }),
  });
  try {
    await p.checkpoint();
    await until(() => b.epoch === 1, "the first epoch");
    // An idle link stays up: PINGs and PONGs keep it alive.
    await new Promise((r) => setTimeout(r, 2500));
    assertEquals(p.links[0].connects, 1, "no reconnect while idle");
    gate.stall(); // nothing reaches the backup any more; it says nothing
    await p.checkpoint();
    await until(
      () => /no word from the peer/.test(p.links[0].lastError ?? ""),
      "the link to give the peer up",
      10_000,
    );
    assert(p.links[0].state !== "live", p.links[0].state);
    gate.resume();
    await p.checkpoint();
    await until(() => b.epoch === p.encoder.epoch, "catch-up after the cut");
    assertEquals(
      p.links[0].baseSyncs,
      0,
      "from the retained log, no base sync",
    );
  } finally {
    await p.stop();
    gate.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("commit latency runs from when a checkpoint was due: time queued behind the previous capture counts, as capture wait and in the commit", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-due-" });
  const b = await backup("tcp://127.0.0.1:0", `${dir}/b`);
  const inner = await openSource(SPEC);
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  let gated = true;
  // The first capture holds until released; the ones after it do not.
  const source = {
    name: inner.name,
    images: inner.images,
    capture: async (into: Uint8Array[], epoch?: number) => {
      if (gated) {
        gated = false;
        await gate;
      }
      return await inner.capture(into, epoch);
    },
    close: () => inner.close(),
  };
  const p = new Primary(source, {
    to: [b.url],
    intervalMs: null,
    note: quiet,
  });
  p.start();
  try {
    const first = p.checkpoint();
    const second = p.checkpoint(); // due now, queued behind the first
    const held = 30;
    await new Promise((r) => setTimeout(r, held));
    release();
    const [a, c] = await Promise.all([first, second]);
    assert(a.commitMs >= held - 1, `first: ${a.commitMs} ms`);
    assert(c.captureWaitMs >= held - 1, `second waited ${c.captureWaitMs} ms`);
    assert(c.commitMs >= c.captureWaitMs, "the wait is in the commit latency");
    const status = p.status() as Record<string, Record<string, number>>;
    assert(status.captureWaitMs.p99 >= held - 1, JSON.stringify(status));
    assert(
      /patchwire_capture_wait_ms\{role="primary",quantile="0.99"\} \d/.test(
        prometheus(p.status()),
      ),
    );
  } finally {
    await p.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});
