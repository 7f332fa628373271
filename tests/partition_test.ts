/**
 * A primary cut off by a network partition (network namespaces, as the WAN
 * tests build them) from etcd and from its backups, then healed: it stops
 * committing before its lease can expire, a backup is elected with the next
 * term and commits, nothing the old primary reported committed is lost, and
 * once healed the old primary finds the newer term, commits nothing more,
 * and follows the new primary, brought to its history by block hashes.
 *
 * Regions: `p` (the primary) and `core` (etcd and two candidate backups),
 * one link between them. Needs root, `ip` and nftables; without them the
 * test is ignored and says why.
 */

import { assert, assertEquals } from "./_assert.ts";
import { Wan, type WanProcess, wanUnavailable } from "../tools/wan.ts";
import { etcdBinary } from "../tools/_etcd_process.ts";
import { rolePermissions } from "../tools/_role_permissions.ts";
import { until } from "./_until.ts";

const unavailable = await wanUnavailable();
if (unavailable) {
  console.error(`partition_test: ignored: ${unavailable}`);
}
let etcdMissing: string | null = null;
try {
  etcdBinary();
} catch (e) {
  etcdMissing = (e as Error).message;
}

const ROOT = new URL("..", import.meta.url).pathname;

/** Epochs a primary reported committed. */
function commits(p: WanProcess): number[] {
  return p.lines.flatMap((l) => {
    const m = /^epoch (\d+) committed/.exec(l);
    return m ? [Number(m[1])] : [];
  });
}

Deno.test({
  name:
    "partition: a primary cut off from etcd and its backups is replaced, commits nothing more, and once healed follows the new primary by block hashes",
  ignore: unavailable !== null || etcdMissing !== null,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "pw-partition-" });
    try {
      await run(dir);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

async function run(dir: string): Promise<void> {
  // Control planes on every address of a namespace need a token.
  const token = "partition-test-token";
  await Deno.writeTextFile(`${dir}/token`, token, { mode: 0o600 });
  await Deno.chmod(`${dir}/token`, 0o600);
  await using wan = await Wan.create({ links: [{ a: "p", b: "core" }] });
  const core = wan.address("p", "core"); // core's side, also local in core
  const pSide = wan.address("core", "p");
  const etcdUrl = `http://${core}:2379`;
  wan.spawn("core", etcdBinary(), [
    "--name",
    "e0",
    "--data-dir",
    `${dir}/etcd`,
    "--listen-client-urls",
    "http://0.0.0.0:2379",
    "--advertise-client-urls",
    etcdUrl,
    "--listen-peer-urls",
    "http://127.0.0.1:2380",
    "--initial-advertise-peer-urls",
    "http://127.0.0.1:2380",
    "--initial-cluster",
    "e0=http://127.0.0.1:2380",
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "500",
  ], { label: "etcd" });
  const role = (
    region: string,
    tool: "primary" | "backup",
    name: string,
    http: number,
    args: string[],
  ) =>
    wan.spawn(region, Deno.execPath(), [
      "run",
      ...rolePermissions(tool),
      `${ROOT}tools/${tool}.ts`,
      ...args,
      "--http",
      `0.0.0.0:${http}`,
      "--token-file",
      `${dir}/token`,
      "--etcd",
      etcdUrl,
      "--cluster",
      "part",
      "--name",
      name,
      "--lease-ms",
      "2000",
    ], { cwd: ROOT, label: name });
  const status = async (region: string, http: number) => {
    const res = await fetch(
      `http://${wan.controlAddress(region)}:${http}/status`,
      { headers: { authorization: `Bearer ${token}` } },
    );
    return await res.json() as Record<string, unknown>;
  };
  // etcd serves before any role starts (one that cannot reach it stops).
  await until(async () => {
    const res = await fetch(
      `http://${wan.controlAddress("core")}:2379/health`,
    );
    return (await res.json()).health === "true";
  }, "etcd to serve");
  const backups = [1, 2].map((i) =>
    role("core", "backup", `b${i}`, 8000 + i, [
      "--listen",
      `tcp://${core}:${7000 + i}`,
      "--store",
      `${dir}/b${i}`,
      "--candidate",
      "--interval",
      "100",
    ])
  );
  for (const b of backups) {
    await b.waitFor(/listening on/, 60_000).catch((e) => {
      throw new Error(`${b.lines.slice(0, 3).join("\n")}\n${e.message}`);
    });
  }
  const primary = role("p", "primary", "p1", 8000, [
    "--source",
    "synthetic:images=1,size=1M,seed=4,dirty=0.02",
    "--to",
    `tcp://${core}:7001,tcp://${core}:7002`,
    "--interval",
    "100",
    "--listen",
    `tcp://${pSide}:7100`,
    "--store",
    `${dir}/p1`,
  ]);
  await primary.waitFor(/^epoch 5 committed/, 60_000);

  await wan.partition("p");
  await primary.waitFor(/fenced: .*committing nothing from now on/);
  const committed = Math.max(...commits(primary));
  // A backup is elected with the next term and commits with the other.
  let winner = -1;
  await until(async () => {
    for (const i of [0, 1]) {
      const s = await status("core", 8001 + i);
      if (s.role === "primary" && (s.committedEpoch as number) > committed) {
        winner = i;
        return true;
      }
    }
    return false;
  }, "a backup to be elected and commit");
  const elected = backups[winner].lines.find((l) =>
    /elected in \d+ ms/.test(l)
  )!;
  const startEpoch = Number(/at epoch (\d+)/.exec(elected)![1]);
  assert(
    startEpoch >= committed,
    `epoch ${committed} was reported committed; the winner started at ${startEpoch}`,
  );
  assertEquals((await status("core", 8001 + winner)).term, 2);

  await wan.heal("p");
  await primary.waitFor(
    /replaced by b\d \(term 2\): following it as a backup/,
  );
  assertEquals(
    Math.max(...commits(primary)),
    committed,
    "the old primary committed nothing after the partition",
  );
  const pUrl = `tcp://${pSide}:7100`;
  await until(async () => {
    const s = await status("core", 8001 + winner);
    const link = (s.peers as { url: string; rejoins: number }[]).find((p) =>
      p.url === pUrl
    );
    return link !== undefined && link.rejoins >= 1;
  }, "the new primary to rejoin the old one by block hashes");
  await until(
    async () => {
      const [now, old] = [
        await status("core", 8001 + winner),
        await status("p", 8000),
      ];
      return old.role === "backup" && old.term === 2 &&
        old.epoch === now.committedEpoch &&
        JSON.stringify(old.images) === JSON.stringify(now.images);
    },
    "the old primary, now a backup of term 2, to hold the new primary's images",
  );
  const other = await status("core", 8002 - winner);
  assertEquals(other.term, 2);
  assert((other.epoch as number) > committed);
}
