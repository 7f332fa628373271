/**
 * What whole-guest checkpoints cost and what a failover takes, on a real
 * QEMU guest (tools/guest.ts, TCG) that counts and sends each count as a UDP
 * datagram through its NIC:
 *
 * - the latency held output adds (sent → released, measured per packet by
 *   the `hold=` source, see `src/qemu_output_hold.ts`) at 10 and 40
 *   checkpoints/s, with the commit latency and the rate achieved, to one
 *   backup over TCP on loopback (ack all/applied);
 * - the wire bytes of the device state per epoch (its PATCH frames) beside
 *   the RAM's, and the device state's own length;
 * - the time to resume the guest from a backup's store (`resumeGuest`), per
 *   phase: RAM copy, QEMU start, device state load and `cont`, total.
 *
 *     deno run -A --unstable-net bench/qemu_failover.ts [--mem 256] [--seconds 8] [--resumes 5]
 *
 * Prints Markdown tables and one JSON line.
 * @module
 */

import { intOption, parseArgs, runMain } from "../src/_cli.ts";
import { startGuest } from "../tools/guest.ts";
import { openSource } from "../src/open_source.ts";
import { Primary } from "../src/primary.ts";
import { Backup } from "../src/backup.ts";
import { AckLevel } from "../src/protocol.ts";
import { decodeFrame, FrameType } from "../src/frame.ts";
import { resumeGuest } from "../src/resume.ts";
import { SampleWindow } from "../src/_window.ts";
import type { OutputHold } from "../src/qemu_output_hold.ts";
import { processGone } from "../tools/_role_process.ts";

const HELP =
  `qemu_failover — held-output latency, device-state bytes, resume time

  deno run -A --unstable-net bench/qemu_failover.ts [--mem MIB] [--seconds N] [--resumes N]
`;

/** Waits (at most 5 s) until process `pid` is gone. */
async function gone(pid: number): Promise<void> {
  for (let i = 0; i < 500 && !(await processGone(pid)); i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
}

await runMain(HELP, async () => {
  const args = parseArgs(Deno.args, ["mem", "seconds", "resumes"], []);
  const opt = (k: string, d: string) => args.options.get(k)?.at(-1) ?? d;
  const memMiB = intOption(opt("mem", "256"), "mem", 96);
  const seconds = intOption(opt("seconds", "8"), "seconds", 1);
  const resumes = intOption(opt("resumes", "5"), "resumes", 1);
  const dir = await Deno.makeTempDir({ prefix: "pw-qemu-failover-" });
  const udp = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port: 0,
  });
  let datagrams = 0;
  const drained = (async () => {
    for await (const _ of udp) datagrams++;
  })().catch(() => {});
  const guest = await startGuest({
    dir: `${dir}/vm`,
    memMiB,
    net: { udpPort: (udp.addr as Deno.NetAddr).port },
  });
  const f = (x: number) => x.toFixed(1);
  const result: Record<string, unknown> = { memMiB };
  try {
    // Held output at two checkpoint rates.
    const rates: Record<string, unknown>[] = [];
    let store = "";
    for (const perSecond of [10, 40]) {
      store = `${dir}/store-${perSecond}`;
      const backup = await Backup.open({
        listen: "tcp://127.0.0.1:0",
        store,
        note: () => {},
      });
      const p = new Primary(await openSource(`${guest.spec}&hold=n0`), {
        to: [backup.url],
        intervalMs: 1000 / perSecond,
        ack: { who: { kind: "all" }, level: AckLevel.applied },
        note: () => {},
      });
      const stateWire = new SampleWindow(4096);
      const ramWire = new SampleWindow(4096);
      const stateLength = new SampleWindow(4096);
      p.onCommit(() => stateLength.add(p.encoder.images[1].length / 1024));
      p.start();
      // Settle: the first epochs carry the whole RAM; measure once commits keep up.
      const settle = performance.now() + 30_000;
      while (
        (p.committed < 5 || p.committed < p.epoch - 1) &&
        performance.now() < settle
      ) {
        await new Promise((r) => setTimeout(r, 20));
      }
      const warm = p.committed;
      const held = p.source.held!;
      const before = held.status().releasedPackets as number;
      const sent = datagrams;
      const t0 = performance.now();
      (held as OutputHold).latencies.clear();
      p.pauses.clear();
      p.commitLatencies.clear();
      p.captureWaits.clear();
      stateLength.clear();
      await new Promise((r) => setTimeout(r, seconds * 1000));
      const elapsed = (performance.now() - t0) / 1000;
      // Wire bytes per epoch, from the frames in the retained log (after the
      // measured window: decoding them is not free).
      for (let e = warm + 1; e <= p.committed; e++) {
        const logged = p.retained.get(e);
        if (!logged) continue;
        let state = 0, ram = 0;
        for (const bytes of logged.frames) {
          const fr = decodeFrame(bytes);
          if (fr.type !== FrameType.PATCH) continue;
          if (fr.imageId.endsWith(".state")) state += bytes.length;
          else if (!fr.imageId.endsWith(".machine")) ram += bytes.length;
        }
        stateWire.add(state / 1024);
        ramWire.add(ram / 1024);
      }
      const s = p.status() as {
        committedEpoch: number;
        commitMs: { p50: number; p99: number };
        pauseMs: { p50: number; p99: number };
        held: {
          addedLatencyMs: { p50: number; p99: number };
          releasedPackets: number;
        };
      };
      const row = {
        perSecond,
        checkpointsPerSecond: (s.committedEpoch - warm) / elapsed,
        commitP50: s.commitMs.p50,
        commitP99: s.commitMs.p99,
        pauseP50: s.pauseMs.p50,
        addedP50: s.held.addedLatencyMs.p50,
        addedP99: s.held.addedLatencyMs.p99,
        packets: s.held.releasedPackets - before,
        received: datagrams - sent,
        stateWireP50: stateWire.quantile(0.5),
        stateWireP99: stateWire.quantile(0.99),
        ramWireP50: ramWire.quantile(0.5),
        stateLengthP50: stateLength.quantile(0.5),
      };
      rates.push(row);
      await p.stop();
      await backup.close();
    }
    result.held = rates;

    console.log(
      `\n## Held output and device state: ${memMiB} MiB guest (TCG), ${seconds} s per rate, one backup over TCP (all/applied)\n`,
    );
    console.log(
      "| checkpoints/s offered | achieved | commit p50 / p99 ms | pause p50 ms | added packet latency p50 / p99 ms | packets released | device state KiB (p50) | its wire KiB/epoch p50 / p99 | RAM wire KiB/epoch p50 |",
    );
    console.log(
      "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const r of rates as Record<string, number>[]) {
      console.log(
        `| ${r.perSecond} | ${f(r.checkpointsPerSecond)} | ${
          f(r.commitP50)
        } / ${f(r.commitP99)} | ${f(r.pauseP50)} | ${f(r.addedP50)} / ${
          f(r.addedP99)
        } | ${r.packets} | ${f(r.stateLengthP50)} | ${f(r.stateWireP50)} / ${
          f(r.stateWireP99)
        } | ${f(r.ramWireP50)} |`,
      );
    }

    // Resume from the last store, several times.
    await guest.stop();
    const phases = {
      ramCopyMs: new SampleWindow(resumes),
      startMs: new SampleWindow(resumes),
      loadMs: new SampleWindow(resumes),
      totalMs: new SampleWindow(resumes),
    };
    for (let i = 0; i < resumes; i++) {
      const r = await resumeGuest({ store, dir: `${dir}/resumed-${i}` });
      for (const k of Object.keys(phases) as (keyof typeof phases)[]) {
        phases[k].add(r.times[k]);
      }
      Deno.kill(r.pid, "SIGKILL");
      await gone(r.pid);
      await Deno.remove(`${dir}/resumed-${i}`, { recursive: true });
    }
    console.log(
      `\n## Resume of a ${memMiB} MiB guest from a backup store (${resumes} runs)\n`,
    );
    console.log("| phase | p50 ms | max ms |");
    console.log("| --- | ---: | ---: |");
    const names = {
      ramCopyMs: "copy the RAM out of the store",
      startMs: "start QEMU (-incoming defer) until QMP answers",
      loadMs: "load the device state and cont",
      totalMs: "total",
    };
    for (const [k, w] of Object.entries(phases)) {
      console.log(
        `| ${names[k as keyof typeof names]} | ${f(w.quantile(0.5))} | ${
          f(w.quantile(1))
        } |`,
      );
    }
    result.resume = Object.fromEntries(
      Object.entries(phases).map((
        [k, w],
      ) => [k, { p50: w.quantile(0.5), max: w.quantile(1) }]),
    );
    console.log(`\n${JSON.stringify(result)}`);
  } finally {
    await guest.stop();
    udp.close();
    await drained;
    await Deno.remove(dir, { recursive: true });
  }
});
