/**
 * The etcd client (src/etcd.ts) against a real etcd (Debian's etcd-server)
 * started on loopback: leases, create-if-absent, transactions, watches, and
 * a 3-member cluster that goes on serving with a member killed.
 */

import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { EtcdClient, EtcdError, type WatchEvent } from "../src/etcd.ts";
import { EtcdCluster } from "../tools/_etcd_process.ts";
import { PortRange } from "../tools/_role_process.ts";

const ports = new PortRange();

Deno.test("etcd: a key under a lease exists while the lease is kept alive, and only one create-if-absent wins", async () => {
  const cluster = await EtcdCluster.start(1, ports);
  try {
    const etcd = await EtcdClient.connect(cluster.endpoints);
    const lease = await etcd.grant(2);
    const first = await etcd.createIfAbsent("/pw/t/leader", "n1", lease);
    assert(first.created);
    assertEquals(first.kv?.value, "n1");
    assertEquals(first.kv?.lease, lease);
    const second = await etcd.createIfAbsent("/pw/t/leader", "n2");
    assert(!second.created);
    assertEquals(second.kv?.value, "n1", "the winner's value is returned");
    assert((await etcd.keepAlive(lease)) > 0);
    await etcd.revoke(lease);
    assertEquals(await etcd.get("/pw/t/leader"), null);
    assertEquals(await etcd.keepAlive(lease), 0, "a revoked lease is gone");
  } finally {
    await cluster.stop();
  }
});

Deno.test("etcd: transactions compare values, and lists and watches see a prefix", async () => {
  const cluster = await EtcdCluster.start(1, ports);
  const abort = new AbortController();
  try {
    const etcd = await EtcdClient.connect(cluster.endpoints);
    await etcd.put("/pw/t/term", "1");
    const events: WatchEvent[] = [];
    let seen: () => void;
    const two = new Promise<void>((r) => seen = r);
    const start = await etcd.get("/pw/t/term");
    const watching = etcd.watch(
      "/pw/t/",
      (e) => {
        events.push(e);
        if (events.length === 2) seen();
      },
      abort.signal,
      {
        prefix: true,
        fromRevision: start!.modRevision + 1,
      },
    );
    const bump = await etcd.txn(
      [{ key: "/pw/t/term", target: "value", value: "1" }],
      [{ put: { key: "/pw/t/term", value: "2" } }],
    );
    assert(bump.succeeded);
    const stale = await etcd.txn(
      [{ key: "/pw/t/term", target: "value", value: "1" }],
      [{ put: { key: "/pw/t/term", value: "3" } }],
      [{ range: { key: "/pw/t/term" } }],
    );
    assert(!stale.succeeded);
    assertEquals(stale.ranges[0][0].value, "2");
    await etcd.delete("/pw/t/term");
    await two;
    assertEquals(events.map((e) => [e.type, e.kv.key, e.kv.value]), [
      ["put", "/pw/t/term", "2"],
      ["delete", "/pw/t/term", ""],
    ]);
    await etcd.put("/pw/t/a", "x");
    await etcd.put("/pw/u", "y");
    assertEquals((await etcd.list("/pw/t/")).map((kv) => kv.key), [
      "/pw/t/a",
    ]);
    abort.abort();
    await watching;
  } finally {
    abort.abort();
    await cluster.stop();
  }
});

Deno.test("etcd: with one member of three killed, the client goes on through the others", async () => {
  const cluster = await EtcdCluster.start(3, ports);
  try {
    const etcd = await EtcdClient.connect(cluster.endpoints, {
      timeoutMs: 1000,
    });
    await etcd.put("/pw/t/k", "before");
    await cluster.kill(0);
    await etcd.put("/pw/t/k", "after");
    assertEquals((await etcd.get("/pw/t/k"))?.value, "after");
    assert(etcd.endpoint !== cluster.endpoints[0]);
  } finally {
    await cluster.stop();
  }
});

Deno.test("etcd: an unreachable etcd is a clear error at start, naming the endpoints", async () => {
  const dead = `http://127.0.0.1:${ports.take()}`;
  const e = await assertRejects(
    () => EtcdClient.connect([dead], { timeoutMs: 500 }),
    EtcdError,
  );
  assert(e.message.includes(`etcd unreachable (${dead}`), e.message);
  assert(
    /--etcd foo: not a URL/.test(
      (() => {
        try {
          new EtcdClient(["foo"]);
          return "";
        } catch (e) {
          return (e as Error).message;
        }
      })(),
    ),
  );
});
