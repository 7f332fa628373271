/**
 * A throwaway etcd cluster on loopback for tests, demos and benchmarks: one
 * or more `etcd` processes (Debian's `etcd-server`, /usr/bin/etcd) with
 * temporary data directories, on ports from a {@linkcode PortRange}, each
 * stopped by its PID.
 * @module
 */

import { PortRange } from "./_role_process.ts";

/** One member: its process, client URL and data directory. */
export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dir: string;
  process: Deno.ChildProcess | null;
  /** The command line it runs with (a restart reuses it). */
  args: string[];
}

/** Where etcd is, or why not (names the package). */
export function etcdBinary(): string {
  for (const path of ["/usr/bin/etcd", "/usr/local/bin/etcd"]) {
    try {
      Deno.statSync(path);
      return path;
    } catch {
      // not here
    }
  }
  throw new Error(
    "etcd not found (/usr/bin/etcd): install it with apt-get install etcd-server",
  );
}

/** A running etcd cluster of `members` members; see the module documentation. */
export class EtcdCluster {
  readonly members: EtcdMember[];
  readonly #root: string;

  private constructor(members: EtcdMember[], root: string) {
    this.members = members;
    this.#root = root;
  }

  /** The client URLs of every member. */
  get endpoints(): string[] {
    return this.members.map((m) => m.clientUrl);
  }

  /** Starts `size` members and waits until every one answers. */
  static async start(
    size = 1,
    ports: PortRange = new PortRange(),
  ): Promise<EtcdCluster> {
    etcdBinary(); // say now, naming the package, if it is missing
    const root = await Deno.makeTempDir({ prefix: "patchwire-etcd-" });
    const members: EtcdMember[] = [];
    for (let i = 0; i < size; i++) {
      members.push({
        name: `e${i}`,
        clientUrl: `http://127.0.0.1:${ports.take()}`,
        peerUrl: `http://127.0.0.1:${ports.take()}`,
        dir: `${root}/e${i}`,
        process: null,
        args: [],
      });
    }
    const initial = members.map((m) => `${m.name}=${m.peerUrl}`).join(",");
    const cluster = new EtcdCluster(members, root);
    try {
      for (const m of members) {
        m.args = [
          "--name",
          m.name,
          "--data-dir",
          m.dir,
          "--listen-client-urls",
          m.clientUrl,
          "--advertise-client-urls",
          m.clientUrl,
          "--listen-peer-urls",
          m.peerUrl,
          "--initial-advertise-peer-urls",
          m.peerUrl,
          "--initial-cluster",
          initial,
          "--initial-cluster-state",
          "new",
          "--initial-cluster-token",
          root,
          // Elections within a second on loopback, as tests want.
          "--heartbeat-interval",
          "50",
          "--election-timeout",
          "500",
        ];
        cluster.#spawn(m);
      }
      for (const m of members) await cluster.#ready(m);
    } catch (e) {
      await cluster.stop();
      throw e;
    }
    return cluster;
  }

  #spawn(m: EtcdMember): void {
    m.process = new Deno.Command(etcdBinary(), {
      args: m.args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  }

  /** Starts member `i` again on its data directory (after {@linkcode EtcdCluster.kill}) and waits until it serves. */
  async restart(i: number): Promise<void> {
    const m = this.members[i];
    if (m.process) return;
    this.#spawn(m);
    await this.#ready(m);
  }

  /** Waits until `m` serves a linearizable read (it has a leader). */
  async #ready(m: EtcdMember, timeoutMs = 20_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < end) {
      try {
        const res = await fetch(`${m.clientUrl}/v3/kv/range`, {
          method: "POST",
          body: JSON.stringify({ key: btoa("/ready") }),
          signal: AbortSignal.timeout(1000),
        });
        const text = await res.text();
        if (res.ok) return;
        last = text;
      } catch (e) {
        last = (e as Error).message;
      }
      // Polling a process that is starting: nothing to wait on but time.
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`etcd ${m.name} at ${m.clientUrl} not ready: ${last}`);
  }

  /** Kills member `i` (SIGKILL) and waits for it to exit. */
  async kill(i: number): Promise<void> {
    const p = this.members[i].process;
    if (!p) return;
    try {
      p.kill("SIGKILL");
    } catch {
      // gone already
    }
    await p.status;
    this.members[i].process = null;
  }

  /** Stops every member and removes the data directories. */
  async stop(): Promise<void> {
    for (let i = 0; i < this.members.length; i++) await this.kill(i);
    await Deno.remove(this.#root, { recursive: true }).catch(() => {});
  }
}
