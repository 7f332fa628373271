/**
 * The leader lease in a real etcd (src/cluster.ts): one primary per term,
 * and a primary that cannot renew its lease stops committing before etcd
 * could give the term to another — then carries on if its term is still
 * current, or stays fenced if a newer term began. etcd is reached through
 * a forwarder that can stall, standing in for a partition from etcd.
 */

import { assert, assertEquals } from "./_assert.ts";
import { EtcdClient } from "../src/etcd.ts";
import {
  electionWinner,
  LeaderLease,
  type LeaderRecord,
  type MemberRecord,
  readLeader,
  reportsNeeded,
} from "../src/cluster.ts";
import { Primary } from "../src/primary.ts";
import { Backup } from "../src/backup.ts";
import { openSource } from "../src/open_source.ts";
import { EtcdCluster } from "../tools/_etcd_process.ts";
import { PortRange } from "../tools/_role_process.ts";
import { Stallable } from "./_gate.ts";
import { until } from "./_until.ts";

const ports = new PortRange();
const quiet = () => {};
const SPEC = "synthetic:images=1,size=256K,seed=5,dirty=0.05";

/** etcd, a forwarder to it that can stall, a backup, and a primary holding the leader key through the forwarder. */
async function setUp(leaseMs: number) {
  const cluster = await EtcdCluster.start(1, ports);
  const url = new URL(cluster.endpoints[0]);
  const gate = new Stallable({
    hostname: url.hostname,
    port: Number(url.port),
  });
  const dir = await Deno.makeTempDir({ prefix: "pw-cluster-" });
  const backup = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: dir,
    note: quiet,
  });
  const notes: string[] = [];
  const etcd = await EtcdClient.connect(
    [gate.url.replace("tcp:", "http:")],
    { timeoutMs: 300 },
  );
  const lease = await LeaderLease.acquire(etcd, {
    cluster: "t",
    name: "n1",
    leaseMs,
    note: (l) => notes.push(l),
  });
  assert(lease instanceof LeaderLease, "the first node wins");
  const primary = new Primary(await openSource(SPEC), {
    to: [backup.url],
    intervalMs: null,
    term: lease.term,
    note: (l) => notes.push(l),
  });
  primary.start();
  lease.start(primary);
  const direct = await EtcdClient.connect(cluster.endpoints);
  return {
    cluster,
    gate,
    backup,
    primary,
    lease,
    notes,
    direct,
    async tearDown() {
      await lease.stop(false);
      await primary.stop();
      await backup.close();
      gate.close();
      await cluster.stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("cluster: the first primary takes term 1 and the leader key; another node finds it there and does not win", async () => {
  const s = await setUp(2000);
  try {
    assertEquals(s.lease.term, 1);
    const other = await LeaderLease.acquire(s.direct, {
      cluster: "t",
      name: "n2",
      leaseMs: 2000,
    });
    assert(!(other instanceof LeaderLease));
    assertEquals(other.leader.name, "n1");
    assertEquals(other.term, 1);
    await s.primary.checkpoint();
    assertEquals(s.backup.upstream.term, 1, "the backup follows term 1");
    assertEquals(s.primary.status().term, 1);
    assertEquals(s.primary.status().fenced, false);
  } finally {
    await s.tearDown();
  }
});

Deno.test("cluster: cut off from etcd, a primary stops committing before its lease could expire, and carries on once etcd confirms its term is still current", async () => {
  const s = await setUp(2000);
  try {
    await s.primary.checkpoint();
    const before = s.primary.committed;
    s.gate.stall();
    await until(() => s.primary.fenced !== null, "the primary to fence");
    // Before its lease could expire: etcd still holds its leader key.
    assertEquals(
      (await s.direct.get("/patchwire/t/leader"))?.value,
      JSON.stringify({ name: "n1", term: 1 }),
      "fenced while the lease still held the leader key",
    );
    assertEquals(s.primary.status().fenced, true);
    // It goes on capturing and sending, and the backup applies, but nothing
    // is reported committed.
    const pending = s.primary.checkpoint();
    let committedWhileFenced = false;
    pending.then(() => committedWhileFenced = s.primary.fenced !== null);
    await until(
      () => s.backup.epoch === before + 1,
      "the backup to apply the epoch",
    );
    assertEquals(s.primary.committed, before);
    s.gate.resume();
    await pending;
    assert(!committedWhileFenced, "reported only once unfenced");
    assertEquals(s.primary.fenced, null);
    assertEquals(s.primary.committed, before + 1);
    assert(s.notes.some((l) => /fenced: etcd did not confirm/.test(l)));
  } finally {
    await s.tearDown();
  }
});

Deno.test("cluster: once its lease expired and another node took a newer term, the old primary stays fenced and says so", async () => {
  const s = await setUp(1000);
  try {
    await s.primary.checkpoint();
    const before = s.primary.committed;
    s.gate.stall();
    await until(() => s.primary.fenced !== null, "the primary to fence");
    // The lease runs out in etcd; another node is elected with term 2.
    let won: LeaderLease | null = null;
    await until(async () => {
      const r = await LeaderLease.acquire(s.direct, {
        cluster: "t",
        name: "n2",
        leaseMs: 5000,
      });
      if (r instanceof LeaderLease) won = r;
      return won !== null;
    }, "another node to win the next term");
    assertEquals(won!.term, 2);
    s.gate.resume();
    await until(() => s.lease.supersededBy !== null, "the old primary to see");
    assertEquals((await readLeader(s.direct, "t")).leader?.name, "n2");
    assertEquals(s.primary.fenced !== null, true);
    s.primary.checkpoint().catch(() => {});
    await until(
      () => s.backup.epoch === before + 1,
      "the backup to apply the epoch",
    );
    assertEquals(s.primary.committed, before, "it never commits again");
    assert(
      s.notes.some((l) => /term 2 began with n2 as primary/.test(l)),
      s.notes.join("\n"),
    );
    await won!.stop();
  } finally {
    await s.tearDown();
  }
});

Deno.test("election: enough peers must report that the most advanced surely holds every committed epoch", () => {
  assertEquals(reportsNeeded("all", 3), 1);
  assertEquals(reportsNeeded("quorum:2", 3), 2);
  assertEquals(reportsNeeded("quorum:3", 3), 1);
  assertEquals(reportsNeeded("any", 3), 3);
});

Deno.test("election: the most advanced candidate among fresh reports of the old primary's peers wins, ties by name", () => {
  const last: LeaderRecord = {
    name: "p1",
    term: 4,
    ack: "quorum:2",
    peers: ["tcp://a:1", "tcp://b:1", "tcp://c:1"],
  };
  const m = (
    name: string,
    epoch: number,
    revision: number,
    candidate = true,
    term = 4,
  ): MemberRecord & { revision: number } => ({
    name,
    role: "backup",
    listen: `tcp://${name}:1`,
    term,
    epoch,
    storedEpoch: epoch,
    candidate,
    revision,
  });
  // One fresh report of three, quorum:2: not enough.
  assert(
    "waiting" in electionWinner([m("a", 9, 11), m("b", 12, 5)], last, 4, 10),
  );
  // Two fresh: the most advanced wins.
  assertEquals(
    electionWinner([m("a", 9, 11), m("b", 12, 12)], last, 4, 10),
    { winner: "b" },
  );
  // A tie goes to the first name.
  assertEquals(
    electionWinner([m("c", 12, 11), m("b", 12, 12)], last, 4, 10),
    { winner: "b" },
  );
  // The most advanced is not a candidate: nobody surely holds everything.
  assert(
    "waiting" in
      electionWinner([m("a", 9, 11), m("b", 12, 12, false)], last, 4, 10),
  );
  // Followers of another term, or not the old primary's peers, do not count.
  assert(
    "waiting" in
      electionWinner([m("a", 9, 11, true, 3), m("x", 12, 12)], last, 4, 10),
  );
  // A relay's record is not a report: it keeps no store and is never elected.
  const relay = { ...m("c", 14, 13, false), role: "relay" };
  assert("waiting" in electionWinner([m("a", 9, 11), relay], last, 4, 10));
  assertEquals(
    electionWinner([m("a", 9, 11), m("b", 12, 12), relay], last, 4, 10),
    { winner: "b" },
  );
});
