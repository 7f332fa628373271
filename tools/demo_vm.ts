/**
 * `deno task demo:vm`: a VM survives its host. The project's counting test
 * guest (tools/guest.ts: it prints a counter on its console and sends it as
 * a UDP datagram to this host) is replicated by real role processes — a
 * primary holding its network output until each epoch commits, a relay, two
 * backups. Then its host "dies" (QEMU and the primary, SIGKILL); the guest
 * is resumed on backup 1 from its last committed checkpoint, backup 2
 * follows it from that same checkpoint, and the demo checks that the
 * outside world's sequence of counters never repeats or goes back.
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import { consoleCounters, datagramCounter, startGuest } from "./guest.ts";
import {
  PortRange,
  processGone,
  RoleProcess,
  runToolProcess,
} from "./_role_process.ts";

const USAGE = `usage: deno task demo:vm [--seconds N] [--after N]

A VM survives its host, on this machine with real processes and QEMU (TCG):

 1. boots the counting test guest (128 MiB; it sends its counter as a UDP
    datagram every ~65 ms to a listener here);
 2. replicates it: a primary (qemu: source, whole-guest checkpoints every
    100 ms, its network output held until each epoch commits: hold=n0), a
    relay, two backups; prints a line a second;
 3. after --seconds (default 6) kills the guest's QEMU and the primary with
    SIGKILL: the primary host dies;
 4. stops the relay and the backups, resumes the guest on backup 1 from its
    last committed checkpoint (deno task resume), restarts backup 2 and
    protects the resumed guest (primary --from-store): backup 2 continues
    from the same checkpoint without a base sync;
 5. watches --after seconds (default 4) and checks that the counters the
    outside world received never repeat or go back, and that the resumed
    guest counts on from its checkpoint.

Needs qemu-system-x86_64, a kernel in /boot and a static busybox with cpio:
  apt-get install qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio

  --seconds N   run before the failover (default 6)
  --after N     run after it (default 4)
  --help        this text
`;

/** What the demo needs from the host; a message naming the packages if something is missing. */
function checkHost(): void {
  const missing: string[] = [];
  const has = (cmd: string) => {
    try {
      return new Deno.Command("sh", {
        args: ["-c", `command -v ${cmd}`],
        stdout: "null",
        stderr: "null",
      }).outputSync().success;
    } catch {
      return false;
    }
  };
  if (!has("qemu-system-x86_64")) missing.push("qemu-system-x86_64");
  let kernel = false;
  try {
    kernel = [...Deno.readDirSync("/boot")].some((e) =>
      e.name.startsWith("vmlinuz-")
    );
  } catch {
    // no /boot
  }
  if (!kernel) missing.push("a kernel in /boot");
  try {
    Deno.statSync("/bin/busybox");
  } catch {
    missing.push("/bin/busybox");
  }
  if (!has("cpio")) missing.push("cpio");
  if (missing.length) {
    throw new Error(
      `missing ${
        missing.join(", ")
      }: apt-get install qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio`,
    );
  }
}

interface Status {
  committedEpoch?: number;
  pauseMs?: { p50: number };
  held?: { addedLatencyMs: { p50: number; p99: number } };
  peers?: { baseSyncs: number; lag?: number }[];
}

async function status(http: string): Promise<Status | null> {
  try {
    const r = await fetch(`http://${http}/status`, {
      signal: AbortSignal.timeout(1000),
    });
    return r.ok ? await r.json() : (await r.body?.cancel(), null);
  } catch {
    return null;
  }
}

function consoleOf(path: string): number[] {
  try {
    return consoleCounters(Deno.readTextFileSync(path));
  } catch {
    return [];
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

if (import.meta.main) {
  await runMain(USAGE, async () => {
    const args = parseArgs(Deno.args, ["seconds", "after"], ["help"]);
    if (args.options.has("help")) {
      console.log(USAGE);
      return;
    }
    if (args.positional.length) {
      throw new UsageError(`unexpected argument "${args.positional[0]}"`);
    }
    const seconds = intOption(
      args.options.get("seconds")?.at(-1) ?? "6",
      "seconds",
      1,
    );
    const after = intOption(
      args.options.get("after")?.at(-1) ?? "4",
      "after",
      1,
    );
    checkHost();

    const dir = await Deno.makeTempDir({ prefix: "patchwire-demo-vm-" });
    const ports = new PortRange();
    const roles: RoleProcess[] = [];
    const start = (tool: "primary" | "relay" | "backup", a: string[]) => {
      const r = new RoleProcess(tool, a);
      roles.push(r);
      return r;
    };
    let resumedPid = 0;
    const udp = Deno.listenDatagram({
      transport: "udp",
      hostname: "127.0.0.1",
      port: 0,
    });
    const seen: number[] = [];
    const receiving = (async () => {
      const dec = new TextDecoder();
      for await (const [data] of udp) {
        const n = datagramCounter(dec.decode(data));
        if (n !== null) seen.push(n);
      }
    })().catch(() => {});
    const cleanup = async () => {
      for (const r of roles) r.kill("SIGKILL");
      await Promise.all(roles.map((r) => r.done));
      if (resumedPid) {
        try {
          Deno.kill(resumedPid, "SIGKILL");
        } catch {
          // gone
        }
        while (!(await processGone(resumedPid))) await sleep(10);
      }
      await guest?.stop();
      udp.close();
      await receiving;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    };
    let guest: Awaited<ReturnType<typeof startGuest>> | null = null;
    const onInt = () => {
      cleanup().finally(() => Deno.exit(130));
    };
    Deno.addSignalListener("SIGINT", onInt);
    try {
      console.log("booting the counting guest (128 MiB, TCG)…");
      guest = await startGuest({
        dir: `${dir}/vm`,
        memMiB: 128,
        net: { udpPort: (udp.addr as Deno.NetAddr).port },
      });
      const stores = [`${dir}/backup1`, `${dir}/backup2`];
      const urls = stores.map(() => `tcp://127.0.0.1:${ports.take()}`);
      const backups = stores.map((store, i) =>
        start("backup", ["--listen", urls[i], "--store", store])
      );
      // Each role up before the one that connects to it.
      for (const b of backups) await b.waitLine(/listening on/);
      const relayUrl = `tcp://127.0.0.1:${ports.take()}`;
      const relay = start("relay", [
        "--listen",
        relayUrl,
        "--to",
        urls.join(","),
        "--ack",
        "all",
      ]);
      await relay.waitLine(/listening on/);
      const http = `127.0.0.1:${ports.take()}`;
      const primary = start("primary", [
        "--source",
        `${guest.spec}&hold=n0`,
        "--to",
        relayUrl,
        "--interval",
        "100",
        "--ack",
        "all",
        "--http",
        http,
      ]);
      console.log(
        `primary → relay → 2 backups, whole-guest checkpoints every 100 ms, output held until committed (${guest.spec}&hold=n0)`,
      );
      console.log("  the first epoch carries the whole guest…");
      await primary.waitLine(/^epoch \d+ committed/, 60_000);
      for (let s = 1; s <= seconds; s++) {
        await sleep(1000);
        const st = await status(http);
        if (primary.exited) {
          throw new Error(`the primary exited:\n${primary.tail()}`);
        }
        console.log(
          `  ${s}s: committed epoch ${
            st?.committedEpoch ?? "-"
          }, the world has seen counter ${seen.at(-1) ?? "-"}, pause p50 ${
            st?.pauseMs?.p50.toFixed(1) ?? "-"
          } ms, held output +${
            st?.held?.addedLatencyMs.p50.toFixed(0) ?? "-"
          } ms p50 / +${st?.held?.addedLatencyMs.p99.toFixed(0) ?? "-"} ms p99`,
        );
      }

      console.log(
        "\nthe primary host dies: SIGKILL to the guest's QEMU and to the primary",
      );
      guest.process.kill("SIGKILL");
      primary.kill("SIGKILL");
      await primary.done;
      await guest.stop();
      const lastCommit = primary.commits().at(-1) ?? 0;
      const before = seen.length;
      console.log(
        `  last epoch reported committed: ${lastCommit}; last counter the world saw: ${
          seen.at(-1) ?? "none"
        }`,
      );
      for (const r of roles.slice(0, 3)) r.kill("SIGTERM");
      await Promise.all(roles.slice(0, 3).map((r) => r.done));

      console.log("\nresuming the guest on backup 1 from its store…");
      const res = await runToolProcess("resume", [
        "--store",
        stores[0],
        "--dir",
        `${dir}/resumed`,
        "--json",
      ]);
      if (res.code !== 0) throw new Error(`resume failed: ${res.stderr}`);
      const r = JSON.parse(res.stdout) as {
        epoch: number;
        pid: number;
        qmp: string;
        spec: string;
        times: Record<string, number>;
      };
      resumedPid = r.pid;
      console.log(
        `  resumed epoch ${r.epoch}: QEMU pid ${r.pid}; RAM copy ${
          r.times.ramCopyMs.toFixed(0)
        } ms, QEMU start ${r.times.startMs.toFixed(0)} ms, device state load ${
          r.times.loadMs.toFixed(0)
        } ms, total ${r.times.totalMs.toFixed(0)} ms`,
      );

      console.log(
        "protecting it in turn: backup 2 follows from the same checkpoint",
      );
      await start("backup", ["--listen", urls[1], "--store", stores[1]])
        .waitLine(/listening on/);
      const http2 = `127.0.0.1:${ports.take()}`;
      start("primary", [
        "--source",
        `${r.spec}&hold=n0`,
        "--from-store",
        stores[0],
        "--to",
        urls[1],
        "--interval",
        "100",
        "--http",
        http2,
      ]);
      let st: Status | null = null;
      for (let s = 1; s <= after; s++) {
        await sleep(1000);
        st = await status(http2);
        console.log(
          `  ${s}s: committed epoch ${
            st?.committedEpoch ?? "-"
          }, the world has seen counter ${
            seen.at(-1) ?? "-"
          }, backup 2 base syncs: ${st?.peers?.[0]?.baseSyncs ?? "-"}`,
        );
      }

      // Verdict.
      const resumedConsole = consoleOf(`${dir}/resumed/console.log`);
      const problems: string[] = [];
      for (let i = 1; i < seen.length; i++) {
        if (seen[i] <= seen[i - 1]) {
          problems.push(
            `the world saw counter ${seen[i]} after ${
              seen[i - 1]
            } (a repeat or a step back)`,
          );
        }
      }
      if (seen.length <= before) {
        problems.push("nothing from the resumed guest reached the world");
      }
      if (resumedConsole.length < 3) {
        problems.push("the resumed guest's console shows no counting");
      }
      if (!st || st.peers?.[0]?.baseSyncs !== 0) {
        problems.push(
          "backup 2 needed a base sync (or the new primary did not answer)",
        );
      }
      console.log(
        `\nthe world saw ${before} counters before the failover (last ${
          seen[before - 1]
        }) and ${seen.length - before} after it (first ${
          seen[before]
        }); the resumed guest's console went on from ${
          resumedConsole[0] ?? "-"
        } to ${resumedConsole.at(-1) ?? "-"}`,
      );
      if (problems.length) {
        throw new Error(`demo failed:\n  ${problems.join("\n  ")}`);
      }
      console.log(
        "no counter repeated or went back: the guest went on from its last committed checkpoint, and nothing it had sent after it ever left the dead host",
      );
    } finally {
      Deno.removeSignalListener("SIGINT", onInt);
      await cleanup();
    }
  });
}
