/**
 * Automatic failover, with real etcd clusters and every role a real
 * process: a 3-member etcd with a member killed still elects; an etcd that
 * cannot decide anything for 10 s promotes nobody, and the primary stops
 * committing meanwhile and carries on after; records in etcd that are not
 * ours are refused with what was found.
 */

import { assert, assertEquals } from "./_assert.ts";
import { EtcdClient } from "../src/etcd.ts";
import { readLeader, readMembers } from "../src/cluster.ts";
import { EtcdCluster } from "../tools/_etcd_process.ts";
import {
  PortRange,
  RoleProcess,
  roleStatus as status,
  runToolProcess,
} from "../tools/_role_process.ts";
import { FailoverCluster } from "../tools/_failover_cluster.ts";
import { until } from "./_until.ts";

const ports = new PortRange();

Deno.test("failover: with one member of a 3-member etcd killed, kill -9 of the primary still elects a candidate that holds every committed epoch and commits with the others", async () => {
  const etcd = await EtcdCluster.start(3, ports);
  const dir = await Deno.makeTempDir({ prefix: "pw-failover-3-" });
  let c: FailoverCluster | null = null;
  try {
    c = await FailoverCluster.start({
      cluster: "three",
      etcd,
      ports,
      dir,
      leaseMs: 2000,
      intervalMs: 50,
      source: "synthetic:images=1,size=4M,seed=5,dirty=0.02",
    });
    await etcd.kill(0);
    await c.node("p1").process.waitLine(/^epoch 10 committed/);
    const committed = c.fail("SIGKILL");
    const f = await c.elected(committed);
    assert(
      f.winnerEpoch >= committed,
      `epoch ${committed} was reported committed; ${f.winner} started at ${f.winnerEpoch}`,
    );
    const cl = c;
    for (const name of ["b1", "b2", "b3"].filter((n) => n !== f.winner)) {
      await until(async () => {
        const s = await cl.status(name);
        return s.term === 2 && (s.epoch as number) > committed;
      }, `${name} to follow term 2 past epoch ${committed}`);
    }
    const direct = await EtcdClient.connect(etcd.endpoints);
    const now = await readLeader(direct, "three");
    assertEquals([now.term, now.leader?.name], [2, f.winner]);
  } finally {
    await c?.stop();
    await etcd.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("failover: an etcd that can decide nothing for 10 s (two of three members down) promotes nobody; the primary stops committing while it cannot renew its lease, then carries on with its term, and nothing is lost", async () => {
  const etcd = await EtcdCluster.start(3, ports);
  const dir = await Deno.makeTempDir({ prefix: "pw-failover-etcd-" });
  const roles: RoleProcess[] = [];
  const cluster = (name: string) => [
    "--etcd",
    etcd.endpoints.join(","),
    "--cluster",
    "quiet",
    "--name",
    name,
    "--lease-ms",
    "2000",
  ];
  const urls = [ports.take(), ports.take()].map((p) => `tcp://127.0.0.1:${p}`);
  const https = [ports.take(), ports.take()].map((p) => `127.0.0.1:${p}`);
  try {
    for (let i = 0; i < 2; i++) {
      const b = new RoleProcess("backup", [
        "--listen",
        urls[i],
        "--store",
        `${dir}/b${i + 1}`,
        "--http",
        https[i],
        "--candidate",
        ...cluster(`b${i + 1}`),
      ]);
      roles.push(b);
      await b.waitLine(/listening on/);
    }
    const primary = new RoleProcess("primary", [
      "--source",
      "synthetic:images=1,size=1M,seed=9,dirty=0.02",
      "--to",
      urls.join(","),
      "--interval",
      "100",
      ...cluster("p1"),
    ]);
    roles.push(primary);
    await primary.waitLine(/^epoch 5 committed/);

    // Two of three members down: etcd has no quorum, so it can neither
    // renew the primary's lease nor expire it.
    await etcd.kill(1);
    await etcd.kill(2);
    const down = Date.now();
    await primary.waitLine(/fenced: .*committing nothing from now on/);
    // A commit reported just before the fence may still be in the pipe for
    // a moment; from then on until etcd is back, none.
    await new Promise((r) => setTimeout(r, 1000));
    const count = () => primary.commits().length;
    const atFence = count();
    await new Promise((r) => setTimeout(r, 10_000 - (Date.now() - down)));
    assertEquals(
      count(),
      atFence,
      "no commit while etcd cannot renew the lease",
    );
    const during = Math.max(...primary.commits());

    await etcd.restart(1);
    await etcd.restart(2);
    // Its lease survived (nobody could expire it): it carries on, same term.
    await until(
      () => Math.max(...primary.commits()) > during + 3,
      "the primary to commit again",
    );
    for (const http of https) {
      const s = await status(http);
      assertEquals([s.role, s.term], ["backup", 1], `${http} was not promoted`);
      assert(
        (s.epoch as number) >= during,
        "the backups hold every committed epoch",
      );
    }
    const direct = await EtcdClient.connect(etcd.endpoints);
    const now = await readLeader(direct, "quiet");
    assertEquals([now.term, now.leader?.name], [1, "p1"]);
  } finally {
    for (const r of roles) {
      r.kill("SIGKILL");
      await r.done;
    }
    await etcd.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("failover: records in etcd that are not ours: a foreign leader key stops a primary at start naming what it found; foreign member records are skipped", async () => {
  const etcd = await EtcdCluster.start(1, ports);
  try {
    const client = await EtcdClient.connect(etcd.endpoints);
    await client.put("/patchwire/other/leader", "some other program's value");
    await client.put("/patchwire/other/members/x", "{not json");
    await client.put(
      "/patchwire/other/members/y",
      JSON.stringify({ hello: "world" }),
    );
    assertEquals(await readMembers(client, "other"), []);
    const run = await runToolProcess("primary", [
      "--source",
      "synthetic:images=1,size=64K",
      "--to",
      "tcp://127.0.0.1:1",
      "--etcd",
      etcd.endpoints[0],
      "--cluster",
      "other",
      "--name",
      "p1",
    ]);
    assertEquals(run.code, 1, run.stderr);
    assert(
      run.stderr.includes(
        `/patchwire/other/leader holds "some other program's value", not a patchwire leader record`,
      ),
      run.stderr,
    );
    // A term that is not a number is refused the same way.
    await client.put("/patchwire/odd/term", "seven");
    const odd = await runToolProcess("primary", [
      "--source",
      "synthetic:images=1,size=64K",
      "--to",
      "tcp://127.0.0.1:1",
      "--etcd",
      etcd.endpoints[0],
      "--cluster",
      "odd",
      "--name",
      "p1",
    ]);
    assertEquals(odd.code, 1, odd.stderr);
    assert(
      /\/patchwire\/odd\/term holds "seven", expected a cluster term/.test(
        odd.stderr,
      ),
      odd.stderr,
    );
  } finally {
    await etcd.stop();
  }
});

Deno.test("failover: two primaries of one cluster started at the same moment: one takes the leader key, the other refuses and exits; only one ever commits", async () => {
  const etcd = await EtcdCluster.start(1, ports);
  const dir = await Deno.makeTempDir({ prefix: "pw-two-primaries-" });
  const roles: RoleProcess[] = [];
  try {
    const url = `tcp://127.0.0.1:${ports.take()}`;
    const b = new RoleProcess("backup", [
      "--listen",
      url,
      "--store",
      `${dir}/b`,
      "--etcd",
      etcd.endpoints[0],
      "--cluster",
      "race",
      "--name",
      "b",
    ]);
    roles.push(b);
    await b.waitLine(/listening on/);
    const primaries = ["p1", "p2"].map((name) =>
      new RoleProcess("primary", [
        "--source",
        "synthetic:images=1,size=256K,seed=2",
        "--to",
        url,
        "--interval",
        "100",
        "--etcd",
        etcd.endpoints[0],
        "--cluster",
        "race",
        "--name",
        name,
      ])
    );
    roles.push(...primaries);
    const refused = await Promise.race(
      primaries.map((p, i) => p.done.then(() => i)),
    );
    const winner = primaries[1 - refused];
    assert(
      primaries[refused].lines.some((l) =>
        /cluster race already has a primary: p\d \(term 1\)/.test(l)
      ),
      primaries[refused].tail(),
    );
    assertEquals((await primaries[refused].done).code, 1);
    await winner.waitLine(/^epoch 3 committed/);
    assertEquals(primaries[refused].commits(), []);
    const direct = await EtcdClient.connect(etcd.endpoints);
    assertEquals((await readLeader(direct, "race")).term, 1);
  } finally {
    for (const r of roles) {
      r.kill("SIGKILL");
      await r.done;
    }
    await etcd.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
