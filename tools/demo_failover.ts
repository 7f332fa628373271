/**
 * `deno task demo:failover`: automatic failover on loopback, every role a
 * real process, the decision in a real etcd.
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import { EtcdCluster } from "./_etcd_process.ts";
import { PortRange } from "./_role_process.ts";
import { FailoverCluster } from "./_failover_cluster.ts";
import { baseSyncBytes } from "../src/base_sync.ts";
import { createZstd } from "../src/compress/zstd.ts";

/** What a base sync of the images in store `dir` puts on the wire. */
async function storeBaseSyncBytes(dir: string): Promise<number> {
  const images: Uint8Array[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.endsWith(".img")) {
      images.push(await Deno.readFile(`${dir}/${e.name}`));
    }
  }
  return baseSyncBytes(images, await createZstd());
}

const USAGE = `usage: deno task demo:failover [--kill] [--lease-ms MS]

Starts an etcd (apt-get install etcd-server) and, as processes on loopback:
a primary p1 replicating a synthetic 64 MiB workload every 50 ms under
quorum:2 to a relay r1 and two candidate backups b2 and b3, and a backup b1
behind the relay. After a few seconds the primary fails:

  default  it is frozen with SIGSTOP, as a hung host is, the hardest case:
           it comes back later believing it is the primary
  --kill   it is killed with SIGKILL (then it cannot come back)

Prints who won the election and in how long (the failure → the winner's
first commit), that every epoch p1 reported committed is on the winner and
reaches every backup, and, with SIGSTOP, that p1 found itself replaced when
it woke, committed nothing more, and rejoined the new primary as a follower
by block hashes (the bytes sent against the image's size).

  --lease-ms MS  the leader lease (default 2000)`;

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, ["lease-ms"], ["kill", "help"]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const leaseMs = intOption(
    args.options.get("lease-ms")?.at(-1) ?? "2000",
    "lease-ms",
    1000,
  );
  const kill = args.options.has("kill");
  const ports = new PortRange();
  const etcd = await EtcdCluster.start(1, ports);
  const dir = await Deno.makeTempDir({ prefix: "patchwire-failover-" });
  let cluster: FailoverCluster | null = null;
  try {
    console.log(`etcd on ${etcd.endpoints[0]}`);
    cluster = await FailoverCluster.start({
      cluster: "demo",
      etcd,
      ports,
      dir,
      leaseMs,
      intervalMs: 50,
      source: "synthetic:images=1,size=64M,seed=1,dirty=0.01",
    });
    const c = cluster;
    const p1 = c.node("p1");
    console.log(
      `p1 primary (term 1) → r1 relay → b1; p1 → b2, b3 (candidates); quorum:2, lease ${leaseMs} ms`,
    );
    await p1.process.waitLine(/^epoch 40 committed/);
    const committed = c.fail(kill ? "SIGKILL" : "SIGSTOP");
    console.log(
      `p1 ${
        kill ? "killed (SIGKILL)" : "frozen (SIGSTOP, a hung host)"
      } after reporting epoch ${committed} committed`,
    );
    const f = await c.elected(committed);
    console.log(
      `${f.winner} elected: primary of term 2 at epoch ${f.winnerEpoch}, first commit ${
        f.failoverMs.toFixed(0)
      } ms after the failure (no epoch committed for ${
        f.noCommitMs.toFixed(0)
      } ms)`,
    );
    if (f.winnerEpoch < committed) {
      throw new Error(
        `epoch ${committed} was reported committed, the winner holds only ${f.winnerEpoch}`,
      );
    }
    const others = ["b1", "b2", "b3"].filter((n) => n !== f.winner);
    for (const name of others) {
      const end = Date.now() + 20_000;
      for (;;) {
        const s = await c.status(name);
        if ((s.epoch as number) > committed && s.term === 2) {
          console.log(
            `${name} follows term 2 at epoch ${s.epoch}${
              name === "b1" ? " (still behind r1)" : ""
            }`,
          );
          break;
        }
        if (Date.now() > end) {
          throw new Error(
            `${name} did not follow term 2: ${JSON.stringify(s)}`,
          );
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    console.log(
      `no committed epoch lost: all of 1..${committed} are on ${f.winner}, and every backup is past them under term 2`,
    );
    if (!kill) {
      p1.process.kill("SIGCONT");
      await p1.process.waitLine(/fenced: /);
      await p1.process.waitLine(/following it as a backup/);
      const after = Math.max(0, ...p1.process.commits());
      console.log(
        `p1 woke: found its lease gone and term 2 begun; committed nothing more (last: epoch ${after}); following ${f.winner} as a backup`,
      );
      const end = Date.now() + 30_000;
      for (;;) {
        const peers = (await c.status(f.winner)).peers as {
          url: string;
          rejoins: number;
          lastRejoin: {
            regionsDiffering: number;
            regions: number;
            differingBytes: number;
            wireBytes: number;
            totalBytes: number;
          } | null;
        }[];
        const link = peers.find((p) => p.url === p1.url);
        if (link?.lastRejoin) {
          const r = link.lastRejoin;
          const base = await storeBaseSyncBytes(`${dir}/${f.winner}`);
          console.log(
            `p1 rejoined by block hashes: ${r.regionsDiffering} of ${r.regions} regions differed; ${
              (r.wireBytes / 1048576).toFixed(2)
            } MiB sent, where a base sync of the same ${
              (r.totalBytes / 1048576).toFixed(0)
            } MiB would send ${(base / 1048576).toFixed(2)} MiB (${
              (100 * r.wireBytes / base).toFixed(1)
            }%)`,
          );
          break;
        }
        if (Date.now() > end) throw new Error("p1 did not rejoin");
        await new Promise((r) => setTimeout(r, 50));
      }
      const s = await c.status("p1");
      console.log(`p1 now: ${s.role} of term ${s.term} at epoch ${s.epoch}`);
    }
    console.log("failover demo: ok");
  } finally {
    await cluster?.stop();
    await etcd.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
