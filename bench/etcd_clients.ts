/**
 * etcd from Deno: the v3 JSON gateway over `fetch` (`src/etcd.ts`, what the
 * roles use) against the `etcd3` npm client (gRPC through @grpc/grpc-js),
 * each in its own process against its own etcd on loopback: start-up (import
 * and first request), put, range and lease keep-alive latency over 500
 * sequential requests, and the process's resident memory after.
 *
 *     deno run -A --node-modules-dir=none --no-lock bench/etcd_clients.ts
 *
 * (`--node-modules-dir=none`: `etcd3` is fetched into Deno's cache for this
 * benchmark only; the project does not depend on it.)
 * @module
 */

import { EtcdCluster } from "../tools/_etcd_process.ts";
import { EtcdClient } from "../src/etcd.ts";

const N = 500;
const q = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.floor(p * (xs.length - 1))];

/** One client's figures, measured in this process. */
async function measure(which: string): Promise<Record<string, number>> {
  const etcd = await EtcdCluster.start(1);
  try {
    const t0 = performance.now();
    const put: number[] = [], get: number[] = [], ka: number[] = [];
    const time = async (into: number[], f: () => Promise<unknown>) => {
      const s = performance.now();
      await f();
      into.push(performance.now() - s);
    };
    let startMs: number;
    if (which === "gateway") {
      const c = await EtcdClient.connect(etcd.endpoints);
      await c.list("/warm");
      startMs = performance.now() - t0;
      for (let i = 0; i < N; i++) {
        await time(put, () => c.put(`/k/${i % 10}`, `v${i}`));
      }
      for (let i = 0; i < N; i++) await time(get, () => c.list(`/k/${i % 10}`));
      const lease = await c.grant(5);
      for (let i = 0; i < N; i++) await time(ka, () => c.keepAlive(lease));
    } else {
      // Not a literal: `deno check` of the project does not resolve it (the
      // project does not depend on etcd3).
      const client = "npm:etcd3@1.1.2";
      // deno-lint-ignore no-explicit-any
      const { Etcd3 } = await import(client) as any;
      const c = new Etcd3({ hosts: etcd.endpoints });
      await c.getAll().prefix("/warm").strings();
      startMs = performance.now() - t0;
      for (let i = 0; i < N; i++) {
        await time(put, () => c.put(`/k/${i % 10}`).value(`v${i}`));
      }
      for (let i = 0; i < N; i++) {
        await time(get, () => c.getAll().prefix(`/k/${i % 10}`).strings());
      }
      const lease = c.lease(5, { autoKeepAlive: false });
      await lease.grant();
      for (let i = 0; i < N; i++) await time(ka, () => lease.keepaliveOnce());
      c.close();
    }
    return {
      startMs,
      putP50: q(put, 0.5),
      putP99: q(put, 0.99),
      getP50: q(get, 0.5),
      getP99: q(get, 0.99),
      keepAliveP50: q(ka, 0.5),
      keepAliveP99: q(ka, 0.99),
      rssMiB: Deno.memoryUsage().rss / 1048576,
    };
  } finally {
    await etcd.stop();
  }
}

if (Deno.args[0]) {
  console.log(JSON.stringify(await measure(Deno.args[0])));
} else {
  const rows: string[] = [];
  for (const which of ["gateway", "etcd3"]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--node-modules-dir=none",
        "--no-lock",
        new URL(import.meta.url).pathname,
        which,
      ],
      stderr: "inherit",
    }).output();
    if (!out.success) throw new Error(`${which}: exit ${out.code}`);
    const r = JSON.parse(
      new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!,
    );
    const f = (n: number) => n.toFixed(2);
    rows.push(
      `| ${
        which === "gateway"
          ? "JSON gateway, fetch (src/etcd.ts)"
          : "etcd3 npm client (gRPC)"
      } | ${r.startMs.toFixed(0)} | ${f(r.putP50)} / ${f(r.putP99)} | ${
        f(r.getP50)
      } / ${f(r.getP99)} | ${f(r.keepAliveP50)} / ${f(r.keepAliveP99)} | ${
        r.rssMiB.toFixed(0)
      } |`,
    );
  }
  console.log(`\netcd 3.4 on loopback, ${N} sequential requests each:\n`);
  console.log(
    "| client | start ms | put p50 / p99 ms | range p50 / p99 ms | keep-alive p50 / p99 ms | RSS MiB |",
  );
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const r of rows) console.log(r);
}
