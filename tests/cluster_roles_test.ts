/**
 * Roles in a cluster, as processes, with a real etcd: one primary per
 * cluster, and a primary paused (SIGSTOP) for longer than its lease, while a
 * backup was promoted with the next term, never has anything committed or
 * applied again.
 */

import { assert, assertEquals } from "./_assert.ts";
import { EtcdClient } from "../src/etcd.ts";
import { readLeader } from "../src/cluster.ts";
import { EtcdCluster } from "../tools/_etcd_process.ts";
import {
  PortRange,
  RoleProcess,
  roleStatus as status,
  runToolProcess,
} from "../tools/_role_process.ts";
import { until } from "./_until.ts";

const ports = new PortRange();

Deno.test("cluster roles: one primary per cluster; a primary paused past its lease is replaced by a backup promoted with the next term, commits nothing after, has nothing applied after, and rejoins the new primary as a follower by block hashes", async () => {
  const etcd = await EtcdCluster.start(1, ports);
  const dir = await Deno.makeTempDir({ prefix: "pw-cluster-roles-" });
  const cluster = ["--etcd", etcd.endpoints[0], "--cluster", "c1"];
  const b1Url = `tcp://127.0.0.1:${ports.take()}`;
  const b2Url = `tcp://127.0.0.1:${ports.take()}`;
  const b1Http = `127.0.0.1:${ports.take()}`;
  const b2Http = `127.0.0.1:${ports.take()}`;
  const primaryHttp = `127.0.0.1:${ports.take()}`;
  const p1Url = `tcp://127.0.0.1:${ports.take()}`;
  const roles: RoleProcess[] = [];
  const backup = (name: string, url: string, http: string) => {
    const r = new RoleProcess("backup", [
      "--listen",
      url,
      "--store",
      `${dir}/${name}`,
      "--http",
      http,
      ...cluster,
      "--name",
      name,
      "--lease-ms",
      "2000",
    ]);
    roles.push(r);
    return r;
  };
  try {
    await backup("b1", b1Url, b1Http).waitLine(/listening on/);
    const b2Role = backup("b2", b2Url, b2Http);
    await b2Role.waitLine(/listening on/);
    const primary = new RoleProcess("primary", [
      "--source",
      "synthetic:images=1,size=256K,seed=3,dirty=0.05",
      "--to",
      `${b1Url},${b2Url}`,
      "--interval",
      "100",
      "--http",
      primaryHttp,
      ...cluster,
      "--name",
      "p1",
      "--lease-ms",
      "2000",
      // Where it follows once replaced.
      "--listen",
      p1Url,
      "--store",
      `${dir}/p1`,
    ]);
    roles.push(primary);
    await primary.waitLine(/leader of cluster c1 as p1, term 1/);
    await primary.waitLine(/^epoch 3 committed/);
    assertEquals((await status(b1Http)).term, 1);

    const second = await runToolProcess("primary", [
      "--source",
      "synthetic:images=1,size=64K",
      "--to",
      b1Url,
      ...cluster,
      "--name",
      "p2",
    ]);
    assertEquals(second.code, 1, second.stderr);
    assert(
      second.stderr.includes("cluster c1 already has a primary: p1 (term 1)"),
      second.stderr,
    );

    const promote = () =>
      fetch(`http://${b2Http}/promote`, {
        method: "POST",
        body: JSON.stringify({ to: [b1Url], interval: 100 }),
      });
    // While p1 holds the leader key, no backup can be promoted.
    const refused = await promote();
    assertEquals(refused.status, 400);
    const why = (await refused.json()).error as string;
    assert(why.includes("cluster c1 has a primary: p1 (term 1)"), why);
    assertEquals((await status(b2Http)).role, "backup", "b2 still follows");

    // Paused past its lease: b2 is promoted once etcd expired it.
    primary.kill("SIGSTOP");
    const committedAtStop = Math.max(...primary.commits());
    await until(async () => {
      const res = await promote();
      await res.body?.cancel();
      return res.ok;
    }, "b2's promotion once the old lease expired");
    const b2 = await status(b2Http);
    assertEquals([b2.role, b2.term, b2.fenced], ["primary", 2, false]);
    await until(
      async () => (await status(b1Http)).term === 2,
      "b1 to follow term 2",
    );
    await until(
      async () =>
        ((await status(b2Http)).committedEpoch as number) > committedAtStop + 2,
      "the new primary to commit through b1",
    );
    assert(
      ((await status(b1Http)).epoch as number) >= committedAtStop,
      "b1 holds every epoch the old primary reported committed",
    );

    primary.kill("SIGCONT");
    // It finds its lease gone and stops committing at once, then finds the
    // newer term and follows it.
    await primary.waitLine(/fenced: .*committing nothing from now on/);
    await primary.waitLine(
      /replaced by b2 \(term 2\): following it as a backup on tcp:\/\/127\.0\.0\.1:\d+ from epoch \d+/,
    );
    await until(
      async () => {
        const up = (await status(b1Http)).upstream as {
          refused: Record<string, number>;
        };
        return up.refused.term > 0;
      },
      "b1 to refuse the old term (the old primary's links before it stopped)",
    ).catch(() => {
      // Its links may not have reached b1 before it stopped: then nothing
      // of the old term was offered at all, which is as good.
    });
    assertEquals(
      Math.max(...primary.commits()),
      committedAtStop,
      "nothing committed after the pause",
    );
    assertEquals((await status(b1Http)).upstream, {
      ...((await status(b1Http)).upstream as Record<string, unknown>),
      term: 2,
    });
    // The new primary sends to it, and brings it to its own history by
    // block hashes; its control plane now answers as a backup.
    await until(async () => {
      const peers = (await status(b2Http)).peers as {
        url: string;
        state: string;
        rejoins: number;
        baseSyncs: number;
      }[];
      const p1 = peers.find((p) => p.url === p1Url);
      return p1 !== undefined && p1.state === "live" && p1.rejoins === 1 &&
        p1.baseSyncs === 0;
    }, "the new primary to rejoin p1 by block hashes");
    await until(async () => {
      const [now, follower] = [await status(b2Http), await status(primaryHttp)];
      return follower.role === "backup" && follower.term === 2 &&
        follower.epoch === now.committedEpoch &&
        JSON.stringify(follower.images) === JSON.stringify(now.images);
    }, "p1, now a backup of term 2, to hold the new primary's images");
    const direct = await EtcdClient.connect(etcd.endpoints);
    assertEquals((await readLeader(direct, "c1")).leader?.name, "b2");

    // Once the former primary is gone for good, its record expires and the
    // new primary stops waiting for it (its policy is all).
    primary.kill("SIGKILL");
    await primary.done;
    await b2Role.waitLine(/follower p1 left the cluster/);
    const after = (await status(b2Http)).committedEpoch as number;
    await until(
      async () => ((await status(b2Http)).committedEpoch as number) > after + 2,
      "b2 to commit without p1",
    );
  } finally {
    for (const r of roles) {
      r.kill("SIGCONT");
      r.kill("SIGKILL");
      await r.done;
    }
    await etcd.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cluster roles: after kill -9 of the primary, the most advanced candidate is elected with the next term and commits with the others; no epoch reported committed is lost", async () => {
  const etcd = await EtcdCluster.start(1, ports);
  const dir = await Deno.makeTempDir({ prefix: "pw-cluster-elect-" });
  const cluster = ["--etcd", etcd.endpoints[0], "--cluster", "c2"];
  const names = ["b1", "b2", "b3"];
  const urls = names.map(() => `tcp://127.0.0.1:${ports.take()}`);
  const https = names.map(() => `127.0.0.1:${ports.take()}`);
  const roles: RoleProcess[] = [];
  try {
    for (let i = 0; i < names.length; i++) {
      const r = new RoleProcess("backup", [
        "--listen",
        urls[i],
        "--store",
        `${dir}/${names[i]}`,
        "--http",
        https[i],
        ...cluster,
        "--name",
        names[i],
        "--lease-ms",
        "2000",
        "--candidate",
        "--interval",
        "100",
        // What an operator's workload starter sees once this node is primary.
        "--on-promote",
        `echo "term $PATCHWIRE_TERM epoch $PATCHWIRE_EPOCH store $PATCHWIRE_STORE" > ${dir}/promoted-${
          names[i]
        }`,
      ]);
      roles.push(r);
      await r.waitLine(/listening on/);
    }
    const primary = new RoleProcess("primary", [
      "--source",
      "synthetic:images=1,size=256K,seed=9,dirty=0.05",
      "--to",
      urls.join(","),
      "--ack",
      "quorum:2",
      "--interval",
      "100",
      ...cluster,
      "--name",
      "p1",
      "--lease-ms",
      "2000",
    ]);
    roles.push(primary);
    await primary.waitLine(/^epoch 5 committed/);
    primary.kill("SIGKILL");
    await primary.done;
    const killedAt = performance.now();
    const committed = Math.max(...primary.commits());

    let winner = -1;
    await until(
      async () => {
        for (let i = 0; i < names.length; i++) {
          const s = await status(https[i]);
          if (
            s.role === "primary" && (s.committedEpoch as number) > committed
          ) {
            winner = i;
            return true;
          }
        }
        return false;
      },
      "a candidate to be elected and commit",
      30_000,
    );
    console.log(
      `failover: ${
        (performance.now() - killedAt).toFixed(0)
      } ms from kill -9 to the new primary's commit past epoch ${committed}`,
    );
    const elected = await status(https[winner]);
    assertEquals(elected.term, 2);
    assert(
      roles[winner].lines.some((l) => /elected in \d+ ms/.test(l)),
      roles[winner].tail(),
    );
    // --on-promote ran on the winner alone, told the term and epoch.
    await roles[winner].waitLine(/--on-promote exited with code 0/);
    const said = await Deno.readTextFile(`${dir}/promoted-${names[winner]}`);
    assert(
      new RegExp(`^term 2 epoch \\d+ store ${dir}/${names[winner]}\n$`).test(
        said,
      ),
      said,
    );
    for (let i = 0; i < names.length; i++) {
      if (i === winner) continue;
      assert(
        !await Deno.stat(`${dir}/promoted-${names[i]}`).then(
          () => true,
          () => false,
        ),
        `${names[i]} ran --on-promote but was not elected`,
      );
    }
    // Exactly one primary.
    const rolesNow = await Promise.all(
      https.map(async (h) => (await status(h)).role),
    );
    assertEquals(rolesNow.filter((r) => r === "primary").length, 1);
    // The others follow term 2 and catch up past every epoch reported committed.
    for (let i = 0; i < names.length; i++) {
      if (i === winner) continue;
      await until(
        async () => {
          const s = await status(https[i]);
          return s.term === 2 && (s.epoch as number) > committed;
        },
        `${names[i]} to follow the new primary`,
      );
    }
    const direct = await EtcdClient.connect(etcd.endpoints);
    assertEquals((await readLeader(direct, "c2")).leader?.name, names[winner]);
  } finally {
    for (const r of roles) {
      r.kill("SIGKILL");
      await r.done;
    }
    await etcd.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
