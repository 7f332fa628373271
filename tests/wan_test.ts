/**
 * Replication over an emulated WAN: real primary, relay and backup processes
 * (`tools/primary.ts`, `relay.ts`, `backup.ts`), each in its own network
 * namespace, joined by links with delay, jitter, loss and partitions
 * (`tools/wan.ts`), and the delay forwarder those links are made with
 * (`tools/wan_forwarder.ts`).
 *
 * The WAN tests need root, nftables and ethtool; where `ip netns` is
 * unusable they are ignored, and the reason is printed. The forwarder tests
 * run anywhere (loopback only).
 * @module
 */

import { assert, assertEquals } from "./_assert.ts";
import { type LinkSpec, Wan, wanUnavailable } from "../tools/wan.ts";
import { Forwarder } from "../tools/wan_forwarder.ts";
import {
  Cluster,
  makeCredentials,
  type Scheme,
  waitUntil as until,
  wanAddresses,
} from "../tools/_wan_roles.ts";
import { parseSyntheticSpec, SyntheticWorkload } from "../src/synthetic.ts";
import { bytesEqual } from "../src/replay.ts";

/** The port the topology test's servers listen on. */
const PORT = 7000;

const unavailable = await wanUnavailable();
if (unavailable) console.error(`wan_test: WAN tests ignored: ${unavailable}`);
/** Options of every test that needs namespaces. */
const WAN = { ignore: unavailable !== null };

// ---------------------------------------------------------------- forwarder

/** An echo server on loopback, TCP and UDP on one port. */
function echoServer(): { port: number; close: () => Promise<void> } {
  const tcp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const udp = Deno.listenDatagram({
    hostname: "127.0.0.1",
    port: tcp.addr.port,
    transport: "udp",
  });
  const conns = new Set<Deno.Conn>();
  const tasks: Promise<void>[] = [];
  tasks.push(
    (async () => {
      for await (const c of tcp) {
        conns.add(c);
        tasks.push(
          (async () => {
            try {
              for await (const chunk of c.readable) await c.write(chunk);
            } catch {
              // closed under us
            }
          })(),
        );
      }
    })(),
    (async () => {
      try {
        for (;;) {
          const [d, a] = await udp.receive();
          await udp.send(d, a);
        }
      } catch {
        // closed
      }
    })(),
  );
  return {
    port: tcp.addr.port,
    close: async () => {
      tcp.close();
      udp.close();
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // the reader closed it at EOF already
        }
      }
      await Promise.all(tasks);
    },
  };
}

Deno.test("forwarder: TCP bytes arrive complete and in order, a round trip takes at least twice the delay", async () => {
  const echo = echoServer();
  const fwd = await Forwarder.start({
    listen: "127.0.0.1:0",
    to: `127.0.0.1:${echo.port}`,
    delayMs: 30,
    jitterMs: 10,
    proto: "tcp",
  });
  try {
    const conn = await Deno.connect({
      hostname: "127.0.0.1",
      port: fwd.tcpAddr!.port,
    });
    const data = new Uint8Array(1 << 20).map((_, i) => i * 31 >> 3);
    const t0 = performance.now();
    const writing = (async () => {
      // Many small writes: each leaves with its own jittered delay, and
      // must still come out in order.
      for (let off = 0; off < data.length; off += 4096) {
        await conn.write(data.subarray(off, off + 4096));
      }
      await conn.closeWrite();
    })();
    const got = new Uint8Array(data.length);
    let n = 0, firstMs = 0;
    while (n < got.length) {
      const r = await conn.read(got.subarray(n));
      if (r === null) break;
      if (n === 0) firstMs = performance.now() - t0;
      n += r;
    }
    await writing;
    assertEquals(await conn.read(new Uint8Array(1)), null, "EOF passed on");
    conn.close();
    assertEquals(n, data.length);
    assert(bytesEqual(got, data), "the echoed bytes equal the sent ones");
    // The delay is at least 30 - 10 ms each way (timers may be 1 ms early).
    assert(
      firstMs >= 38,
      `first byte back after ${firstMs} ms, expected >= 40`,
    );
    assertEquals(fwd.stats.tcpConnections, 1);
    assertEquals(fwd.stats.tcpBytes, 2 * data.length);
  } finally {
    await fwd.close();
    await echo.close();
  }
});

Deno.test("forwarder: UDP keeps a session per client and each client's datagrams in order", async () => {
  const echo = echoServer();
  const fwd = await Forwarder.start({
    listen: "127.0.0.1:0",
    to: `127.0.0.1:${echo.port}`,
    delayMs: 5,
    jitterMs: 5,
    proto: "udp",
  });
  const clients = [0, 1].map(() =>
    Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" })
  );
  try {
    const target: Deno.NetAddr = {
      transport: "udp",
      hostname: "127.0.0.1",
      port: fwd.udpAddr!.port,
    };
    for (let i = 0; i < 50; i++) {
      for (const [c, client] of clients.entries()) {
        await client.send(new Uint8Array([c, i]), target);
      }
    }
    for (const [c, client] of clients.entries()) {
      const seen: number[] = [];
      while (seen.length < 50) {
        const [d] = await client.receive();
        assertEquals(d[0], c, "a client gets only its own echoes");
        seen.push(d[1]);
      }
      assertEquals(seen, [...Array(50).keys()], "in the order sent");
    }
    assertEquals(fwd.stats.udpSessions, 2);
    assertEquals(fwd.stats.udpDatagrams, 200);
  } finally {
    for (const c of clients) c.close();
    await fwd.close();
    await echo.close();
  }
});

Deno.test("forwarder: a bad address or option is refused with what was expected", async () => {
  for (
    const [options, message] of [
      [{ listen: "nowhere", to: "127.0.0.1:1" }, /expected HOST:PORT/],
      [{ listen: "127.0.0.1:0", to: "127.0.0.1:0" }, /port 0/],
      [{ listen: "127.0.0.1:0", to: "127.0.0.1:1", delayMs: -1 }, />= 0/],
      [{ listen: "127.0.0.1:0", to: "127.0.0.1:1", proto: "sctp" }, /tcp, udp/],
    ] as const
  ) {
    let error: Error | null = null;
    try {
      const f = await Forwarder.start({ delayMs: 1, ...options } as never);
      await f.close();
    } catch (e) {
      error = e as Error;
    }
    assert(error && message.test(error.message), `${error?.message}`);
  }
});

// ---------------------------------------------------------------- topology

/** Runs a `deno eval` program in a region and returns what it printed. */
async function evalIn(wan: Wan, region: string, code: string): Promise<string> {
  const p = wan.spawn(region, Deno.execPath(), [
    "eval",
    "--unstable-net",
    code,
  ], { label: "deno eval" });
  const status = await p.status;
  await p.stop();
  assertEquals(status.code, 0, p.output());
  return p.lines.join("\n");
}

Deno.test({
  name:
    "wan: a link delays by its RTT, loses its share, partitions and heals; close removes everything",
  ...WAN,
  fn: async () => {
    const wan = await Wan.create({
      links: [{ a: "left", b: "right", rttMs: 60, jitterMs: 5, lossPct: 20 }],
    });
    let closed = false;
    try {
      const server = wan.spawn("right", Deno.execPath(), [
        "eval",
        "--unstable-net",
        `const t = Deno.listen({ hostname: "0.0.0.0", port: ${PORT} });
         const u = Deno.listenDatagram({ hostname: "0.0.0.0", port: ${PORT}, transport: "udp" });
         (async () => { for await (const c of t) c.readable.pipeTo(c.writable).catch(() => {}); })();
         // Datagrams [burst, 0] are counted; the first [burst, 1] prints the count.
         const counts = new Map();
         (async () => { for (;;) {
           const [d] = await u.receive();
           if (d[1] === 0) counts.set(d[0], (counts.get(d[0]) ?? 0) + 1);
           else if (counts.get(d[0]) !== -1) console.log("burst", d[0], counts.get(d[0]) ?? 0), counts.set(d[0], -1);
         } })();
         console.log("ready");`,
      ], { label: "echo" });
      await server.waitFor(/ready/);
      const to = wan.address("left", "right");
      // A round trip over TCP (past the first, which also resolves ARP) takes >= 2 × (30 - 5) ms.
      const rtt = await evalIn(
        wan,
        "left",
        `const c = await Deno.connect({ hostname: "${to}", port: ${PORT} });
         const b = new Uint8Array(1); let min = Infinity;
         for (let i = 0; i < 5; i++) {
           const t = performance.now(); await c.write(b); await c.read(b);
           min = Math.min(min, performance.now() - t);
         }
         console.log(min);`,
      );
      assert(Number(rtt) >= 49, `round trip ${rtt} ms, expected >= 50`);
      // 400 datagrams, then 30 end markers (so that one arrives despite the loss).
      const burst = (id: number) =>
        `const u = Deno.listenDatagram({ hostname: "0.0.0.0", port: 0, transport: "udp" });
         const a = { transport: "udp", hostname: "${to}", port: ${PORT} };
         for (let i = 0; i < 400; i++) {
           await u.send(new Uint8Array([${id}, 0]), a);
           // Paced: a burst beyond the forwarder's socket buffer would be dropped.
           if (i % 25 === 24) await new Promise((r) => setTimeout(r, 5));
         }
         await new Promise((r) => setTimeout(r, 200));
         for (let i = 0; i < 30; i++) await u.send(new Uint8Array([${id}, 1]), a);`;
      await evalIn(wan, "left", burst(1));
      const through = Number((await server.waitFor(/^burst 1 (\d+)/))[1]);
      assert(
        through > 200 && through < 400,
        `${through} of 400 arrived at 20% loss`,
      );
      // Cut: nothing arrives; healed: it does again.
      await wan.partition("left");
      assertEquals(wan.link("left", "right").partitioned, true);
      await evalIn(wan, "left", burst(2));
      // Let the last of them, still in the forwarder, reach the cut.
      await new Promise((r) => setTimeout(r, 200));
      await wan.heal("left");
      await wan.setLink("left", "right", { lossPct: 0 });
      await evalIn(wan, "left", burst(3));
      const healed = Number((await server.waitFor(/^burst 3 (\d+)/))[1]);
      assert(
        healed > 300,
        `${healed} of 400 arrived after healing, at no loss`,
      );
      assertEquals(await wan.queueDrops("left", "right"), 0, "paced enough");
      assert(
        !server.lines.some((l) => l.startsWith("burst 2")),
        `nothing crossed the partition:\n${server.output()}`,
      );
      const ns = wan.namespace("left");
      await wan.close();
      closed = true;
      const list = await new Deno.Command("ip", { args: ["netns", "list"] })
        .output();
      const left = new TextDecoder().decode(list.stdout);
      assert(
        !left.includes(wan.id),
        `namespaces of ${wan.id} remain:\n${left}`,
      );
      assert(!left.includes(ns));
      const links = await new Deno.Command("ip", { args: ["-o", "link"] })
        .output();
      const tag = wan.id.split("-")[1];
      assert(
        !new TextDecoder().decode(links.stdout).includes(`pw${tag}c`),
        "the host's ends of the control links are gone",
      );
    } finally {
      if (!closed) await wan.close();
    }
  },
});

// ---------------------------------------------------------------- replication

/** The synthetic source's image 0 after each epoch in `epochs` (epoch 1 is the first capture). */
function syntheticImages(
  spec: string,
  epochs: number[],
): Map<number, Uint8Array> {
  const w = new SyntheticWorkload(parseSyntheticSpec(spec));
  const out = new Map<number, Uint8Array>();
  let at = 1;
  for (const e of [...new Set(epochs)].sort((a, b) => a - b)) {
    while (at < e) {
      w.step();
      at++;
    }
    out.set(e, w.images[0].slice());
  }
  return out;
}

/**
 * With the primary stopped: waits until every backup holds, in its store,
 * the relay's newest epoch, then checks each store file byte for byte
 * against the synthetic source at that epoch. Returns the epoch.
 */
async function verifyStores(
  c: Cluster,
  spec: string,
  relay: string,
  backups: string[],
): Promise<number> {
  let epoch = 0;
  await until("every backup to store the relay's newest epoch", async () => {
    const r = await c.status(relay);
    const bs = await Promise.all(backups.map((b) => c.status(b)));
    epoch = r.log.last;
    return bs.every((s) => s.epoch === epoch && s.storedEpoch === epoch) ||
      `relay log at ${epoch}, backups (epoch/stored) ${
        bs.map((s) => `${s.epoch}/${s.storedEpoch}`).join(" ")
      }`;
  });
  const expected = syntheticImages(spec, [epoch]).get(epoch)!;
  for (const b of backups) {
    const stored = await Deno.readFile(`${c.dir}/${b}/img0.img`);
    assert(
      bytesEqual(stored, expected),
      `backup ${b}'s store equals the primary's image at epoch ${epoch}`,
    );
  }
  return epoch;
}

/** Runs `body` on a fresh topology and temp dir; removes both whatever happens. */
async function withCluster(
  links: LinkSpec[],
  body: (c: Cluster) => Promise<void>,
  scheme: Scheme = "tcp",
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "patchwire-wan-" });
  let wan: Wan | null = null;
  let c: Cluster | null = null;
  try {
    wan = await Wan.create({ links });
    const credentials = await makeCredentials(dir, wanAddresses(wan, links));
    c = new Cluster(wan, dir, credentials, scheme);
    await body(c);
  } catch (e) {
    if (c) (e as Error).message += `\n${c.logs()}`;
    throw e;
  } finally {
    await wan?.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Sums a figure over the primary's and the relay's peers. */
// deno-lint-ignore no-explicit-any
function baseSyncs(...statuses: any[]): number {
  return statuses.flatMap((s) => s.peers).reduce(
    (n: number, p: { baseSyncs: number }) => n + p.baseSyncs,
    0,
  );
}

Deno.test({
  name:
    "wan: steady replication over 100 ms RTT and 1% loss commits, and every backup stores the primary's images",
  ...WAN,
  fn: async () => {
    const spec = "images=1,size=4M,seed=1";
    await withCluster([
      { a: "primary", b: "relay", rttMs: 100, jitterMs: 5, lossPct: 1 },
      { a: "relay", b: "near1" },
      { a: "relay", b: "near2", rttMs: 2 },
      { a: "relay", b: "far", rttMs: 300 },
    ], async (c) => {
      const backups = ["near1", "near2", "far"];
      for (const b of backups) c.backup(b);
      c.relay("relay", backups);
      const primary = c.primary("primary", "relay", spec, [
        "--interval",
        "100",
      ]);
      await c.ready();
      await until("20 committed epochs", async () => {
        const s = await c.status("primary");
        return s.committedEpoch >= 20 || `committed ${s.committedEpoch}`;
      });
      const p = await c.status("primary");
      // Policy all/applied: a commit waits for the farthest backup, so it
      // takes at least both round trips: 2 × (50 - 5) + 2 × 150 ms.
      assert(
        p.commitMs.p50 >= 385,
        `commit p50 ${p.commitMs.p50} ms, expected >= 390 (100 + 300 ms RTT)`,
      );
      assertEquals(p.peers[0].state, "live");
      assertEquals(await primary.stop(), 0, "the primary stops cleanly");
      const epoch = await verifyStores(c, spec, "relay", backups);
      assert(
        epoch >= p.committedEpoch,
        `stored ${epoch} >= committed ${p.committedEpoch}`,
      );
    });
  },
});

/**
 * Cuts the relay off (from the primary and its backups), lets the primary
 * build a backlog, heals, and checks that everyone catches up from the
 * retained logs with no base sync. `cutOff` decides when to heal.
 */
async function partitionedRelay(
  scheme: Scheme,
  // deno-lint-ignore no-explicit-any
  cutOff: (c: Cluster) => Promise<any>,
  // deno-lint-ignore no-explicit-any
  after: (primary: any) => void,
): Promise<void> {
  const spec = "images=1,size=4M,seed=3";
  await withCluster([
    { a: "primary", b: "relay", rttMs: 50 },
    { a: "relay", b: "near1" },
    { a: "relay", b: "near2" },
  ], async (c) => {
    const backups = ["near1", "near2"];
    for (const b of backups) c.backup(b);
    c.relay("relay", backups);
    const primary = c.primary("primary", "relay", spec, [
      "--interval",
      "100",
    ]);
    await c.ready();
    await until("5 committed epochs", async () => {
      const s = await c.status("primary");
      return s.committedEpoch >= 5 || `committed ${s.committedEpoch}`;
    });
    await c.wan.partition("relay");
    const cut = await c.status("primary");
    // The primary goes on capturing while nothing commits (up to its 16 in flight).
    await until("epochs captured during the partition", async () => {
      const s = await c.status("primary");
      return s.epoch >= cut.committedEpoch + 12 ||
        `epoch ${s.epoch}, committed ${s.committedEpoch}`;
    });
    await cutOff(c);
    const atHeal = await c.status("primary");
    assert(
      atHeal.committedEpoch < atHeal.epoch,
      `a backlog built up (epoch ${atHeal.epoch}, committed ${atHeal.committedEpoch})`,
    );
    await c.wan.heal("relay");
    await until("the backlog to commit", async () => {
      const s = await c.status("primary");
      return s.committedEpoch >= atHeal.epoch + 3 ||
        `committed ${s.committedEpoch}, want ${atHeal.epoch + 3}`;
    });
    const p = await c.status("primary");
    const r = await c.status("relay");
    assertEquals(baseSyncs(p, r), 0, "no base sync: the logs covered the gap");
    for (const s of [...p.peers, ...r.peers]) assertEquals(s.state, "live");
    after(p);
    assertEquals(await primary.stop(), 0);
    const epoch = await verifyStores(c, spec, "relay", backups);
    assert(epoch >= p.committedEpoch);
    const lines = [...c.roles.values()].flatMap((p) => p.lines);
    assert(
      !lines.some((l) => /base sync of epoch/.test(l)),
      `no base sync in the logs:\n${c.logs()}`,
    );
  }, scheme);
}

Deno.test({
  name:
    "wan: a relay partitioned for seconds (TCP holds on) catches up from the retained log, without a base sync",
  ...WAN,
  fn: () =>
    partitionedRelay(
      "tcp",
      () => new Promise((r) => setTimeout(r, 3000)), // several seconds in all
      (p) => assertEquals(p.peers[0].connects, 1, "the connection held"),
    ),
});

Deno.test({
  name:
    "wan: a relay partitioned past QUIC's idle timeout reconnects and catches up from the retained log, without a base sync",
  ...WAN,
  fn: () =>
    partitionedRelay(
      "quic",
      (c) =>
        until("the primary to give the relay up", async () => {
          const link = (await c.status("primary")).peers[0];
          return link.state !== "live" || link.state;
        }, 30_000),
      (p) => assert(p.peers[0].connects >= 2, "the primary reconnected"),
    ),
});

Deno.test({
  name:
    "wan: a backup partitioned for longer than the relay's log covers gets a base sync, then the right images",
  ...WAN,
  fn: async () => {
    const spec = "images=1,size=4M,seed=5";
    await withCluster([
      { a: "primary", b: "relay", rttMs: 40 },
      { a: "relay", b: "near1" },
      { a: "relay", b: "near2" },
    ], async (c) => {
      const backups = ["near1", "near2"];
      for (const b of backups) c.backup(b);
      // quorum:1: near2 alone commits while near1 is cut off. A log of a
      // few seconds of epochs, and a send buffer that keeps the relay from
      // pouring them all into near1's socket while it cannot answer.
      const relay = c.relay("relay", backups, [
        "--ack",
        "quorum:1",
        "--log-bytes",
        String(64 << 10),
        "--send-buffer-bytes",
        String(32 << 10),
      ]);
      const primary = c.primary("primary", "relay", spec, [
        "--interval",
        "100",
      ]);
      await c.ready();
      await until("near1 to ack 5 epochs", async () => {
        const r = await c.status("relay");
        return r.peers[0].acked.applied >= 5 ||
          JSON.stringify(r.peers[0].acked);
      });
      await c.wan.partition("relay", "near1");
      // Cut off until the epoch after the last one the relay could send
      // near1 has left the relay's log: near1 can only be resynced whole.
      let sent = 0;
      await until("the relay's log to move past near1", async () => {
        const r = await c.status("relay");
        sent = r.peers[0].sentEpoch;
        return r.log.first > sent + 1 ||
          `log ${r.log.first}..${r.log.last}, near1 sent ${sent}`;
      });
      const during = await c.status("primary");
      await c.wan.heal("relay", "near1");
      await until("near1 to be base-synced and live", async () => {
        const r = await c.status("relay");
        const l = r.peers[0];
        return l.baseSyncs >= 1 && l.state === "live" &&
            l.acked.applied > sent + 1 ||
          `${l.state}, base syncs ${l.baseSyncs}, acked ${l.acked.applied}`;
      });
      await relay.waitFor(
        new RegExp(
          `peer ${c.url("relay", "near1")}: base sync of epoch \\d+ sent`,
        ),
      );
      await c.roles.get("near1")!.waitFor(/base sync of epoch \d+ installed/);
      const p = await c.status("primary");
      assert(
        p.committedEpoch > during.committedEpoch,
        "commits went on through near2 meanwhile",
      );
      assertEquals(await primary.stop(), 0);
      await verifyStores(c, spec, "relay", backups);
    });
  },
});

Deno.test({
  name:
    "wan: under --ack quorum:2 a far slower backup does not hold commits back",
  ...WAN,
  fn: async () => {
    const spec = "images=1,size=2M,seed=7";
    await withCluster([
      { a: "primary", b: "relay", rttMs: 100 },
      { a: "relay", b: "near1" },
      { a: "relay", b: "near2", rttMs: 4 },
      { a: "relay", b: "far", rttMs: 600, jitterMs: 20 },
    ], async (c) => {
      const backups = ["near1", "near2", "far"];
      for (const b of backups) c.backup(b);
      c.relay("relay", backups, ["--ack", "quorum:2"]);
      const primary = c.primary("primary", "relay", spec, [
        "--interval",
        "100",
      ]);
      await c.ready();
      await until("far to have applied 10 epochs", async () => {
        const far = (await c.status("relay")).peers[2];
        return far.acked.applied >= 10 || `far applied ${far.acked.applied}`;
      });
      // Commits run ahead of what far has applied, by more than the one
      // epoch in flight a commit waiting for far could show: the quorum is
      // near1 and near2.
      await until("commits 4 epochs ahead of the far backup", async () => {
        const r = await c.status("relay");
        const p = await c.status("primary");
        const far = r.peers[2];
        assertEquals(far.state, "live");
        return p.committedEpoch >= far.acked.applied + 4 ||
          `committed ${p.committedEpoch}, far applied ${far.acked.applied}`;
      });
      const p = await c.status("primary");
      assertEquals(await primary.stop(), 0);
      // far catches up once the primary stops.
      const epoch = await verifyStores(c, spec, "relay", backups);
      assert(epoch >= p.committedEpoch);
    });
  },
});

/**
 * A primary at `--level auto` sending to one backup over `link`: returns how
 * many of the epochs between the 20th and the 40th committed it encoded at
 * each level (the first ones measure both levels and the link).
 */
async function autoChoices(
  link: Omit<LinkSpec, "a" | "b">,
): Promise<{ fast: number; max: number }> {
  let counts = { fast: 0, max: 0 };
  await withCluster([{ a: "primary", b: "backup", ...link }], async (c) => {
    c.backup("backup");
    // Each epoch rewrites about a tenth of a 4 MiB image: fast sends about
    // 9 KB and max a fifth less for twice the encode time (6 against 13 ms).
    // At 500 kbit/s that fifth is 27 ms; on the LAN it is nothing.
    c.primary("primary", "backup", "images=1,size=4M,seed=1,dirty=0.1", [
      "--interval",
      "50",
      "--level",
      "auto",
    ]);
    await c.ready();
    const at = async (epoch: number) => {
      let s: { auto: { epochs: { fast: number; max: number } } } | null = null;
      await until(`${epoch} committed epochs`, async () => {
        const st = await c.status("primary");
        s = st;
        return st.committedEpoch >= epoch || `committed ${st.committedEpoch}`;
      });
      assertEquals(s!.auto !== undefined, true, "/status says what auto chose");
      return s!.auto.epochs;
    };
    const from = await at(20);
    const to = await at(40);
    counts = { fast: to.fast - from.fast, max: to.max - from.max };
  });
  return counts;
}

Deno.test({
  name:
    "wan: --level auto encodes at max over a 500 kbit/s link and at fast on the LAN",
  ...WAN,
  fn: async () => {
    const slow = await autoChoices({ rateKbit: 500 });
    assert(
      slow.max > 2 * slow.fast,
      `over 500 kbit/s: ${slow.max} epochs at max, ${slow.fast} at fast`,
    );
    const lan = await autoChoices({});
    assert(
      lan.fast > 2 * lan.max,
      `on the LAN: ${lan.fast} epochs at fast, ${lan.max} at max`,
    );
  },
});
