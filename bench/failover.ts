/**
 * Failover time over many trials: per trial, a fresh cluster of role
 * processes on loopback (`tools/_failover_cluster.ts`: a primary under
 * quorum:2 to a relay and two candidate backups, a backup behind the relay)
 * in one etcd, the primary killed with SIGKILL after 20 commits. Measured:
 * the kill → the winner's first commit (failover), and the old primary's
 * last commit → the winner's first commit (the time no epoch commits).
 * Every trial also checks that the winner started at or past the last epoch
 * the old primary reported committed.
 *
 *     deno run -A --unstable-net bench/failover.ts [--trials 20] [--lease-ms 2000]
 *       [--interval 50]
 * @module
 */

import { intOption, parseArgs } from "../src/_cli.ts";
import { EtcdCluster } from "../tools/_etcd_process.ts";
import { PortRange } from "../tools/_role_process.ts";
import { FailoverCluster } from "../tools/_failover_cluster.ts";

const args = parseArgs(Deno.args, ["trials", "lease-ms", "interval"], []);
const opt = (k: string, d: string) => args.options.get(k)?.at(-1) ?? d;
const trials = intOption(opt("trials", "20"), "trials", 1);
const leaseMs = intOption(opt("lease-ms", "2000"), "lease-ms", 1000);
const intervalMs = intOption(opt("interval", "50"), "interval", 1);

const ports = new PortRange();
const etcd = await EtcdCluster.start(1, ports);
const failover: number[] = [], noCommit: number[] = [], election: number[] = [];
const winners: Record<string, number> = {};
try {
  for (let t = 0; t < trials; t++) {
    const dir = await Deno.makeTempDir({ prefix: "pw-bench-failover-" });
    const c = await FailoverCluster.start({
      cluster: `bench${t}`,
      etcd,
      ports,
      dir,
      leaseMs,
      intervalMs,
      source: `synthetic:images=1,size=16M,seed=${t + 1},dirty=0.01`,
    });
    try {
      await c.node("p1").process.waitLine(/^epoch 20 committed/);
      const committed = c.fail("SIGKILL");
      const f = await c.elected(committed);
      if (f.winnerEpoch < committed) {
        throw new Error(
          `trial ${t}: epoch ${committed} was reported committed, ${f.winner} started at ${f.winnerEpoch}`,
        );
      }
      failover.push(f.failoverMs);
      noCommit.push(f.noCommitMs);
      election.push(f.electionMs);
      winners[f.winner] = (winners[f.winner] ?? 0) + 1;
      console.error(
        `trial ${t}: ${f.winner} at epoch ${f.winnerEpoch} (committed ${committed}); failover ${
          f.failoverMs.toFixed(0)
        } ms, no commit for ${f.noCommitMs.toFixed(0)} ms`,
      );
    } finally {
      await c.stop();
      await Deno.remove(dir, { recursive: true });
    }
  }
} finally {
  await etcd.stop();
}

const q = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)];
};
console.log(
  `\nFailover, ${trials} trials, kill -9 of the primary, lease ${leaseMs} ms, checkpoints every ${intervalMs} ms:\n`,
);
console.log("| | p50 ms | p99 ms | max ms |");
console.log("|---|---:|---:|---:|");
console.log(
  `| kill → new primary's first commit | ${q(failover, 0.5).toFixed(0)} | ${
    q(failover, 0.99).toFixed(0)
  } | ${Math.max(...failover).toFixed(0)} |`,
);
console.log(
  `| no epoch committed (last commit → first commit) | ${
    q(noCommit, 0.5).toFixed(0)
  } | ${q(noCommit, 0.99).toFixed(0)} | ${Math.max(...noCommit).toFixed(0)} |`,
);
console.log(
  `| of which: the leader key gone in etcd → the winner promoted | ${
    q(election, 0.5).toFixed(0)
  } | ${q(election, 0.99).toFixed(0)} | ${Math.max(...election).toFixed(0)} |`,
);
console.log(
  `\nWinners: ${
    Object.entries(winners).map(([w, n]) => `${w} ${n}`).join(", ")
  }; every winner held the last epoch reported committed.`,
);
