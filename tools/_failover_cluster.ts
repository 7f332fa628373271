/**
 * A cluster of role processes on loopback for the failover demo and
 * benchmark: one etcd, a primary `p1` (with `--listen`/`--store`, so it can
 * follow once replaced) sending under `quorum:2` to a relay `r1` and to two
 * candidate backups `b2` and `b3`, and a backup `b1` behind the relay. The
 * primary's failure, the election and the first commit of the winner are
 * read from the processes' own output lines, timed as they arrive.
 * @module
 */

import { EtcdCluster } from "./_etcd_process.ts";
import { PortRange, RoleProcess, roleStatus } from "./_role_process.ts";

/** Options of {@linkcode FailoverCluster.start}. */
export interface FailoverOptions {
  /** The cluster's name in etcd (one etcd can hold several). */
  cluster: string;
  etcd: EtcdCluster;
  ports: PortRange;
  dir: string;
  leaseMs: number;
  intervalMs: number;
  /** The primary's source. */
  source: string;
}

/** One node of the cluster. */
export interface Node {
  name: string;
  url: string;
  http: string;
  process: RoleProcess;
}

/** The result of one failover. */
export interface Failover {
  winner: string;
  /** The primary's failure (the signal sent) → the winner's first commit, ms. */
  failoverMs: number;
  /** The old primary's last commit line → the winner's first commit, ms: no epoch committed meanwhile. */
  noCommitMs: number;
  /** The newest epoch the old primary reported committed. */
  committedAtFailure: number;
  /** The epoch the winner started from (it must hold every committed one). */
  winnerEpoch: number;
  /** The leader key's deletion in etcd → the winner primary, ms (as the winner logged it). */
  electionMs: number;
}

/** See the module documentation. */
export class FailoverCluster {
  readonly nodes: Node[] = [];
  #failedAt = 0;

  private constructor(readonly options: FailoverOptions) {}

  /** Starts the backups, the relay and the primary; resolves once it committed epoch 3. */
  static async start(options: FailoverOptions): Promise<FailoverCluster> {
    const c = new FailoverCluster(options);
    try {
      await c.#start();
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  node(name: string): Node {
    const n = this.nodes.find((n) => n.name === name);
    if (!n) throw new Error(`no node ${name}`);
    return n;
  }

  #clusterArgs(name: string): string[] {
    const o = this.options;
    return [
      "--etcd",
      o.etcd.endpoints.join(","),
      "--cluster",
      o.cluster,
      "--name",
      name,
      "--lease-ms",
      String(o.leaseMs),
    ];
  }

  async #start(): Promise<void> {
    const o = this.options;
    const at = () => ({
      url: `tcp://127.0.0.1:${o.ports.take()}`,
      http: `127.0.0.1:${o.ports.take()}`,
    });
    const spawn = (
      name: string,
      tool: "primary" | "relay" | "backup",
      where: { url: string; http: string },
      args: string[],
    ) => {
      const process = new RoleProcess(tool, [
        ...args,
        "--http",
        where.http,
        ...this.#clusterArgs(name),
      ]);
      const node = { name, ...where, process };
      this.nodes.push(node);
      return node;
    };
    const backup = (name: string, candidate: boolean) => {
      const where = at();
      return spawn(name, "backup", where, [
        "--listen",
        where.url,
        "--store",
        `${o.dir}/${name}`,
        ...(candidate ? ["--candidate"] : []),
      ]);
    };
    const b1 = backup("b1", false);
    const b2 = backup("b2", true);
    const b3 = backup("b3", true);
    for (const b of [b1, b2, b3]) await b.process.waitLine(/listening on/);
    const rAt = at();
    const relay = spawn("r1", "relay", rAt, [
      "--listen",
      rAt.url,
      "--to",
      b1.url,
    ]);
    await relay.process.waitLine(/listening on/);
    const pAt = at();
    const primary = spawn("p1", "primary", pAt, [
      "--source",
      o.source,
      "--to",
      [relay.url, b2.url, b3.url].join(","),
      "--ack",
      "quorum:2",
      "--interval",
      String(o.intervalMs),
      "--listen",
      pAt.url,
      "--store",
      `${o.dir}/p1`,
    ]);
    await primary.process.waitLine(/^epoch 3 committed/);
  }

  /** Sends `signal` to the primary (SIGKILL: dead; SIGSTOP: hung) and notes when. */
  fail(signal: "SIGKILL" | "SIGSTOP"): number {
    const p = this.node("p1").process;
    this.#failedAt = performance.now();
    p.kill(signal);
    return Math.max(0, ...p.commits());
  }

  /** Waits for a candidate to be elected and commit; the figures of the failover. */
  async elected(
    committedAtFailure: number,
    timeoutMs = 30_000,
  ): Promise<Failover> {
    const end = Date.now() + timeoutMs;
    const candidates = [this.node("b2"), this.node("b3")];
    const p1 = this.node("p1").process;
    for (;;) {
      for (const c of candidates) {
        const line = c.process.lines.find((l) => /elected in \d+ ms/.test(l));
        const first = c.process.timeOf(/^epoch \d+ committed/);
        if (line && first !== null) {
          const epoch = Number(/at epoch (\d+)/.exec(line)?.[1] ?? NaN);
          const electionMs = Number(/elected in (\d+) ms/.exec(line)![1]);
          const commits = p1.commits();
          const lastCommit = commits.length
            ? p1.timeOf(new RegExp(`^epoch ${commits.at(-1)} committed`))!
            : this.#failedAt;
          return {
            winner: c.name,
            failoverMs: first - this.#failedAt,
            noCommitMs: first - lastCommit,
            committedAtFailure,
            winnerEpoch: epoch,
            electionMs,
          };
        }
      }
      if (Date.now() > end) {
        throw new Error(
          `no candidate elected and committing within ${timeoutMs} ms:\n${
            candidates.map((c) => c.process.tail()).join("\n")
          }`,
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** A role's /status. */
  status(name: string): Promise<Record<string, unknown>> {
    return roleStatus(this.node(name).http);
  }

  /** Kills every role (the etcd is the caller's). */
  async stop(): Promise<void> {
    for (const n of this.nodes) {
      n.process.kill("SIGCONT");
      n.process.kill("SIGKILL");
      await n.process.done;
    }
  }
}
