/**
 * A VM survives its host: a counting guest (real QEMU under TCG, see
 * `counterWorkload` in tools/guest.ts) replicated by real role processes —
 * primary, relay, two backups — with its network output held until each
 * epoch commits. Its QEMU and the primary are killed at seeded random
 * instants; the guest is resumed from a backup's store with `deno task
 * resume`, and:
 *
 * - the resumed guest continues from the checkpoint's counter (read from the
 *   checkpoint's RAM image);
 * - the host listener's counters never repeat and never go back, across
 *   the failover;
 * - without `hold` the same failover shows the duplicates (so the test
 *   proves output commit matters);
 * - the resumed guest, protected in turn with `--from-store`, continues on
 *   the other backup incrementally, without a base sync.
 *
 * Needs qemu-system-x86_64, a kernel in /boot with virtio_net, busybox and
 * cpio (.ci/run installs them).
 */

import { assert, assertEquals } from "./_assert.ts";
import { type Guest, startGuest } from "../tools/guest.ts";
import {
  PortRange as Ports,
  processGone as pidGone,
  RoleProcess as Role,
  runToolProcess as runTool,
} from "../tools/_role_process.ts";
import {
  consoleCounters,
  type CounterListener,
  listenCounters,
} from "./_counter_guest.ts";

/** Seeded instants: the same seed kills at the same moments. */
const SEED = 20261203;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function until(
  cond: () => boolean | Promise<boolean>,
  what: string,
  roles: Role[] = [],
  ms = 60_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) {
      throw new Error(
        `timed out waiting for ${what}\n${
          roles.map((r) => r.tail()).join("\n")
        }`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The counting guest's counter in a RAM image: the newest `pwcounter=N` its shell holds. */
function counterInRam(ram: Uint8Array): number {
  // Older values linger in freed memory; values only grow, so the largest is the variable's.
  const needle = new TextEncoder().encode("pwcounter=");
  let best = -1;
  outer: for (
    let i = ram.indexOf(needle[0]);
    i >= 0;
    i = ram.indexOf(needle[0], i + 1)
  ) {
    for (let k = 1; k < needle.length; k++) {
      if (ram[i + k] !== needle[k]) continue outer;
    }
    let n = 0, d = 0;
    for (
      let j = i + needle.length;
      d < 12 && ram[j] >= 48 && ram[j] <= 57;
      j++, d++
    ) {
      n = n * 10 + ram[j] - 48;
    }
    if (d > 0 && ram[i + needle.length + d] === 0 && n > best) best = n;
  }
  return best;
}

interface Cluster {
  guest: Guest;
  listener: CounterListener;
  primary: Role;
  relay: Role;
  backups: Role[];
  stores: string[];
  backupUrls: string[];
  backupHttp: string[];
  primaryHttp: string;
}

async function startCluster(
  dir: string,
  ports: Ports,
  hold: boolean,
  interval: string,
): Promise<Cluster> {
  const listener = listenCounters();
  const guest = await startGuest({
    dir: `${dir}/vm`,
    memMiB: 128,
    net: { udpPort: listener.port },
  });
  const stores = [`${dir}/b1`, `${dir}/b2`];
  const backupUrls = stores.map(() => `tcp://127.0.0.1:${ports.take()}`);
  const backupHttp = stores.map(() => `127.0.0.1:${ports.take()}`);
  const backups = stores.map((store, i) =>
    new Role("backup", [
      "--listen",
      backupUrls[i],
      "--store",
      store,
      "--http",
      backupHttp[i],
    ])
  );
  // Each role up before the one that connects to it: no reconnect backoff to wait out.
  for (const b of backups) await b.waitLine(/listening on/);
  const relayUrl = `tcp://127.0.0.1:${ports.take()}`;
  const relay = new Role("relay", [
    "--listen",
    relayUrl,
    "--to",
    backupUrls.join(","),
    "--ack",
    "all",
  ]);
  await relay.waitLine(/listening on/);
  const primaryHttp = `127.0.0.1:${ports.take()}`;
  const primary = new Role("primary", [
    "--source",
    `${guest.spec}${hold ? "&hold=n0" : ""}`,
    "--to",
    relayUrl,
    "--interval",
    interval,
    "--ack",
    "all",
    "--http",
    primaryHttp,
  ]);
  return {
    guest,
    listener,
    primary,
    relay,
    backups,
    stores,
    backupUrls,
    backupHttp,
    primaryHttp,
  };
}

/** Takes `n` checkpoints through the primary's control API, each committed. */
async function checkpoints(c: Cluster, n: number): Promise<void> {
  await until(
    () =>
      fetch(`http://${c.primaryHttp}/healthz`).then(
        (r) => r.body?.cancel().then(() => r.ok) ?? r.ok,
        () => false,
      ),
    "the primary's control API",
    [c.primary, c.relay, ...c.backups],
  );
  for (let i = 0; i < n; i++) {
    const res = await fetch(`http://${c.primaryHttp}/checkpoint`, {
      method: "POST",
    });
    assert(res.ok, `POST /checkpoint: ${res.status}`);
    await res.json();
  }
}

/** Stops the relay and the backups cleanly (their stores are flushed). */
async function stopFollowers(c: Cluster): Promise<void> {
  for (const r of [c.relay, ...c.backups]) r.kill("SIGTERM");
  for (const r of [c.relay, ...c.backups]) await r.done;
}

function storeState(dir: string): {
  epoch: number;
  images: { id: string; size: number; length?: number }[];
} {
  return JSON.parse(Deno.readTextFileSync(`${dir}/state.json`));
}

/** Resumes from `store` with the stored command line; returns the tool's JSON. */
async function resume(store: string, dir: string) {
  const r = await runTool("resume", ["--store", store, "--dir", dir, "--json"]);
  if (r.code !== 0) throw new Error(`resume failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as {
    epoch: number;
    pid: number;
    qmp: string;
    mem: string;
    spec: string;
    times: Record<string, number>;
  };
}

function consoleOf(dir: string): number[] {
  try {
    return consoleCounters(Deno.readTextFileSync(`${dir}/console.log`));
  } catch {
    return [];
  }
}

function killPid(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch {
    // gone
  }
}

/** Kills every process of a trial (the resumed QEMU too) and removes its directory. */
async function teardown(
  c: Cluster,
  dir: string,
  resumedPid: number,
): Promise<void> {
  if (resumedPid) killPid(resumedPid);
  const roles = [c.primary, c.relay, ...c.backups];
  for (const r of roles) r.kill("SIGKILL");
  await Promise.all(roles.map((r) => r.done));
  await c.guest.stop();
  await c.listener.close();
  if (resumedPid) await until(() => pidGone(resumedPid), "QEMU to exit");
  await Deno.remove(dir, { recursive: true });
}

/** Every counter greater than the one before it: nothing repeated, nothing went back. */
function assertIncreasing(counters: number[], what: string): void {
  for (let i = 1; i < counters.length; i++) {
    assert(
      counters[i] > counters[i - 1],
      `${what}: counter ${counters[i]} arrived after ${
        counters[i - 1]
      } (position ${i}): ${
        counters.slice(Math.max(0, i - 5), i + 5).join(",")
      }`,
    );
  }
}

Deno.test({
  name:
    "vm failover: the guest resumes on a backup from its last committed checkpoint; held output is never repeated",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const random = rng(SEED);
    const ports = new Ports();
    console.log(`vm failover: seed ${SEED}`);

    for (let trial = 0; trial < 3; trial++) {
      const killAfterMs = Math.floor(random() * 1500);
      const qemuFirst = trial % 2 === 0;
      const gapMs = Math.floor(random() * 300);
      await t.step(
        `trial ${trial}: hold=n0, kill -9 ${
          qemuFirst ? "QEMU then the primary" : "the primary then QEMU"
        } ${gapMs} ms apart, ${killAfterMs} ms into the run`,
        async () => {
          const dir = await Deno.makeTempDir({ prefix: "pw-failover-" });
          const c = await startCluster(dir, ports, true, "100");
          let resumedPid = 0;
          try {
            const all = [c.primary, c.relay, ...c.backups];
            await until(
              () =>
                c.primary.commits().length >= 3 &&
                c.listener.counters.length >= 5,
              "3 commits and 5 released datagrams",
              all,
            );
            await new Promise((r) => setTimeout(r, killAfterMs));
            const killQemu = () => c.guest.process.kill("SIGKILL");
            const killPrimary = () => c.primary.kill("SIGKILL");
            (qemuFirst ? killQemu : killPrimary)();
            await new Promise((r) => setTimeout(r, gapMs));
            (qemuFirst ? killPrimary : killQemu)();
            await c.primary.done;
            await c.guest.stop();
            const lastCommit = c.primary.commits().at(-1)!;
            await stopFollowers(c);
            const before = [...c.listener.counters];
            assertIncreasing(before, "before the failover");
            assertEquals(
              before,
              before.map((_, i) => before[0] + i),
              "held output is released in order, none lost",
            );
            const L = before.at(-1)!;

            const state = storeState(c.stores[0]);
            assert(
              state.epoch >= lastCommit,
              `backup holds epoch ${state.epoch}, the primary reported ${lastCommit} committed`,
            );
            const M = counterInRam(
              await Deno.readFile(`${c.stores[0]}/ram.img`),
            );
            assert(
              M >= L,
              `the checkpoint's counter ${M} is behind what was released (${L})`,
            );

            const r = await resume(c.stores[0], `${dir}/resumed`);
            resumedPid = r.pid;
            assertEquals(r.epoch, state.epoch);
            await until(
              () => consoleOf(`${dir}/resumed`).length >= 5,
              "the resumed guest to count",
            );
            await until(
              () => c.listener.counters.length >= before.length + 5,
              "datagrams from the resumed guest",
            );
            const first = consoleOf(`${dir}/resumed`)[0];
            const after = c.listener.counters.slice(before.length);
            // The checkpoint holds pwcounter=M: the guest's next datagram is
            // M (if the checkpoint fell between the increment and its send)
            // or M+1, and its console goes on from M or M+1.
            assert(
              after[0] === M || after[0] === M + 1,
              `the resumed guest's first datagram is ${
                after[0]
              }, expected ${M} or ${M + 1} (the checkpoint's counter)`,
            );
            assert(
              first === M || first === M + 1,
              `resumed console starts at ${first}`,
            );
            assertIncreasing(c.listener.counters, "across the failover");
            assert(after[0] > L, `no repeat: ${after[0]} after ${L}`);
            console.log(
              `  committed ${lastCommit}, resumed epoch ${state.epoch}: released up to ${L}, checkpoint counter ${M}, resumed guest sent ${
                after[0]
              } first; resume ${r.times.totalMs.toFixed(0)} ms`,
            );
          } finally {
            await teardown(c, dir, resumedPid);
          }
        },
      );
    }

    await t.step(
      "without hold the same failover repeats output the outside world already saw",
      async () => {
        const dir = await Deno.makeTempDir({ prefix: "pw-failover-" });
        const c = await startCluster(dir, ports, false, "manual");
        let resumedPid = 0;
        try {
          const all = [c.primary, c.relay, ...c.backups];
          await checkpoints(c, 3);
          // The guest sends on after the last checkpoint; then its host dies.
          const seen = c.listener.counters.length;
          await until(
            () => c.listener.counters.length >= seen + 3,
            "3 more datagrams",
            all,
          );
          c.primary.kill("SIGKILL");
          c.guest.process.kill("SIGKILL");
          await c.primary.done;
          await c.guest.stop();
          await stopFollowers(c);
          const before = [...c.listener.counters];
          const r = await resume(c.stores[0], `${dir}/resumed`);
          resumedPid = r.pid;
          await until(
            () => c.listener.counters.length >= before.length + 3,
            "datagrams from the resumed guest",
          );
          const after = c.listener.counters.slice(before.length);
          assert(
            after[0] <= before.at(-1)!,
            `without hold the resumed guest repeats what was sent: it sent ${
              after[0]
            } after ${before.at(-1)}`,
          );
        } finally {
          await teardown(c, dir, resumedPid);
        }
      },
    );

    await t.step(
      "the resumed guest is protected in turn: the other backup continues from the same checkpoint without a base sync",
      async () => {
        const dir = await Deno.makeTempDir({ prefix: "pw-failover-" });
        const c = await startCluster(dir, ports, true, "manual");
        let resumedPid = 0;
        let next: Role | null = null;
        let b2: Role | null = null;
        try {
          const all = [c.primary, c.relay, ...c.backups];
          // Manual checkpoints: once one commits under ack all, both backups hold it.
          await checkpoints(c, 3);
          await until(() => c.primary.commits().length >= 3, "3 commits", all);
          c.primary.kill("SIGKILL");
          c.guest.process.kill("SIGKILL");
          await c.primary.done;
          await c.guest.stop();
          await stopFollowers(c);
          const s1 = storeState(c.stores[0]), s2 = storeState(c.stores[1]);
          assertEquals(s1.epoch, s2.epoch, "both backups hold the last commit");
          const r = await resume(c.stores[0], `${dir}/resumed`);
          resumedPid = r.pid;
          assertEquals(r.epoch, s1.epoch);
          // The other backup comes back; this host's primary protects the resumed guest.
          b2 = new Role("backup", [
            "--listen",
            c.backupUrls[1],
            "--store",
            c.stores[1],
          ]);
          const http = `127.0.0.1:${ports.take()}`;
          next = new Role("primary", [
            "--source",
            `${r.spec}&hold=n0`,
            "--from-store",
            c.stores[0],
            "--to",
            c.backupUrls[1],
            "--interval",
            "100",
            "--http",
            http,
          ]);
          await until(
            () => next!.commits().some((e) => e >= s1.epoch + 3),
            "the new primary to commit 3 epochs past the checkpoint",
            [next, b2],
          );
          const status = await (await fetch(`http://${http}/status`)).json();
          assertEquals(status.peers[0].baseSyncs, 0, "no base sync");
          const firstCommit = next.commits()[0];
          assertEquals(
            firstCommit,
            s1.epoch + 1,
            "epochs continue from the checkpoint",
          );
          const counted = c.listener.counters.length;
          await until(
            () => c.listener.counters.length >= counted + 3,
            "the protected guest's released output",
          );
          assertIncreasing(
            c.listener.counters,
            "across failover and re-protection",
          );
        } finally {
          next?.kill("SIGKILL");
          b2?.kill("SIGKILL");
          await next?.done;
          await b2?.done;
          await teardown(c, dir, resumedPid);
        }
      },
    );

    await t.step(
      "one step: POST /promote with resume on a running backup resumes the guest and protects it",
      async () => {
        const dir = await Deno.makeTempDir({ prefix: "pw-failover-" });
        const c = await startCluster(dir, ports, true, "manual");
        let resumedPid = 0;
        try {
          const all = [c.primary, c.relay, ...c.backups];
          await checkpoints(c, 3);
          c.primary.kill("SIGKILL");
          c.guest.process.kill("SIGKILL");
          await c.primary.done;
          await c.guest.stop();
          const before = [...c.listener.counters];
          // The relay and both backups still run: backup 1 takes over.
          const res = await fetch(`http://${c.backupHttp[0]}/promote`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              to: [c.backupUrls[1]],
              interval: 100,
              resume: { hold: "n0", dir: `${dir}/resumed` },
            }),
          });
          const body = await res.json();
          assert(res.ok, `POST /promote: ${JSON.stringify(body)}`);
          resumedPid = body.resumed.pid;
          assert(body.resumed.times.totalMs > 0);
          await until(
            () => consoleOf(`${dir}/resumed`).length >= 3,
            "the resumed guest to count",
            all,
          );
          await until(
            () => c.listener.counters.length >= before.length + 3,
            "the resumed guest's output, released by the promoted backup's commits",
            all,
          );
          const status = await (await fetch(`http://${c.backupHttp[0]}/status`))
            .json();
          assertEquals(status.role, "primary");
          assertEquals(status.peers[0].baseSyncs, 0, "no base sync");
          assert(status.held.releasedPackets > 0, "held output released");
          assert(
            status.held.addedLatencyMs.p50 > 0,
            "its added latency is measured",
          );
          const metrics =
            await (await fetch(`http://${c.backupHttp[0]}/metrics`))
              .text();
          assert(
            /patchwire_held_output_added_latency_ms\{role="primary",quantile="0.99"\} [\d.]+/
              .test(metrics),
            metrics,
          );
          assertIncreasing(c.listener.counters, "across the promotion");
        } finally {
          await teardown(c, dir, resumedPid);
        }
      },
    );
  },
});

Deno.test({
  name:
    "vm failover in a cluster: when the primary's host dies, the elected backup resumes the guest itself from its last committed checkpoint; held output is never repeated",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const ports = new Ports();
    const { EtcdCluster } = await import("../tools/_etcd_process.ts");
    const etcd = await EtcdCluster.start(1, ports);
    const dir = await Deno.makeTempDir({ prefix: "pw-vm-elect-" });
    const listener = listenCounters();
    const guest = await startGuest({
      dir: `${dir}/vm`,
      memMiB: 128,
      net: { udpPort: listener.port },
    });
    const cluster = (name: string) => [
      "--etcd",
      etcd.endpoints[0],
      "--cluster",
      "vm",
      "--name",
      name,
      "--lease-ms",
      "2000",
    ];
    const names = ["b1", "b2"];
    const urls = names.map(() => `tcp://127.0.0.1:${ports.take()}`);
    const https = names.map(() => `127.0.0.1:${ports.take()}`);
    const backups = names.map((name, i) =>
      new Role("backup", [
        "--listen",
        urls[i],
        "--store",
        `${dir}/${name}`,
        "--http",
        https[i],
        "--candidate",
        "--interval",
        "200",
        // The resumed guest's output is held in turn.
        "--resume-hold",
        "n0",
        ...cluster(name),
      ])
    );
    let primary: Role | null = null;
    let resumedPid = 0;
    try {
      for (const b of backups) await b.waitLine(/listening on/);
      primary = new Role("primary", [
        "--source",
        `${guest.spec}&hold=n0`,
        "--to",
        urls.join(","),
        "--interval",
        "200",
        ...cluster("p1"),
      ]);
      const p = primary;
      const all = [p, ...backups];
      await until(
        () => p.commits().length >= 3 && listener.counters.length >= 5,
        "3 commits and 5 released datagrams",
        all,
      );
      // The primary's host dies: QEMU and the primary at once.
      guest.process.kill("SIGKILL");
      p.kill("SIGKILL");
      await p.done;
      await guest.stop();
      const committed = Math.max(...p.commits());
      const before = [...listener.counters];
      assertIncreasing(before, "before the failover");

      // A candidate is elected and resumes the guest on its own.
      let winner = -1;
      await until(
        () => {
          winner = backups.findIndex((b) =>
            b.lines.some((l) =>
              /resumed "[^"]+" at epoch \d+: QEMU pid \d+/.test(l)
            )
          );
          return winner >= 0;
        },
        "the elected backup to resume the guest",
        all,
      );
      const line = backups[winner].lines.find((l) =>
        /resumed "[^"]+" at epoch \d+: QEMU pid \d+/.test(l)
      )!;
      resumedPid = Number(/QEMU pid (\d+)/.exec(line)![1]);
      const epoch = Number(/at epoch (\d+)/.exec(line)![1]);
      assert(
        epoch >= committed,
        `resumed at epoch ${epoch}, the primary reported ${committed} committed`,
      );
      await until(
        async () => {
          const s = await (await fetch(`http://${https[winner]}/status`))
            .json();
          return s.role === "primary" && s.term === 2;
        },
        "the elected backup to be primary of term 2",
        all,
      );
      // The resumed guest runs on: its datagrams follow the last one the
      // old primary released, none repeated, none going back.
      await until(
        () => listener.counters.length >= before.length + 3,
        "the resumed guest's output",
        all,
      );
      assertIncreasing(listener.counters, "across the failover");
      const held = (await (await fetch(`http://${https[winner]}/status`))
        .json()).held;
      assert(
        held?.releasedPackets > 0,
        "the resumed guest's output is held and released by commits",
      );
      // And it is protected in turn: the other backup follows term 2.
      const other = 1 - winner;
      await until(
        async () => {
          const s = await (await fetch(`http://${https[other]}/status`))
            .json();
          return s.term === 2 && s.epoch > epoch;
        },
        "the other backup to follow the resumed guest",
        all,
      );
    } finally {
      if (resumedPid) killPid(resumedPid);
      for (const r of [...backups, ...(primary ? [primary] : [])]) {
        r.kill("SIGKILL");
        await r.done;
      }
      await guest.stop();
      await listener.close();
      if (resumedPid) await until(() => pidGone(resumedPid), "QEMU to exit");
      await etcd.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
