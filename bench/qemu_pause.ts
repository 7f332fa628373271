/**
 * Guest pause per checkpoint with the `qemu:` source: a guest (tools/guest.ts)
 * whose /init keeps rewriting files in its RAM-backed root and sends a
 * datagram through its NIC every round, checkpointed by a primary every
 * `--interval` ms to a backup on loopback, in three ways: RAM only
 * (`state=off`), the whole guest (RAM and CPU/device state in one stop
 * window), and the whole guest with its network output held (`hold=n0`).
 * The pause (QMP `stop` sent → `cont` answered) is shown next to what copying
 * the same RAM costs in the same run: a `Uint8Array.set` between two heap
 * buffers, a copy from the RAM file's memory map, and chunked reads of the
 * file. Prints a Markdown table.
 *
 *     deno run -A bench/qemu_pause.ts [--mem 256] [--epochs 50] [--interval 100]
 *       [--accel tcg|kvm]
 *
 * -A: QEMU is a child process and the RAM file is mapped through FFI.
 * @module
 */

import { intOption, parseArgs, runMain } from "../src/_cli.ts";
import { startGuest } from "../tools/guest.ts";
import { Backup } from "../src/backup.ts";
import { openSource } from "../src/open_source.ts";
import { Primary } from "../src/primary.ts";
import { AckLevel } from "../src/protocol.ts";
import { mapFile } from "../src/_mmap.ts";
import { readFileInto } from "../src/_read_file.ts";
import { SampleWindow } from "../src/_window.ts";

const HELP = `qemu_pause — guest pause per checkpoint beside a RAM copy

  deno run -A bench/qemu_pause.ts [--mem MIB] [--epochs N] [--interval MS] [--accel tcg|kvm]
`;

/** Times `reps` calls after one untimed call (first touches of fresh buffers). */
function timeIt(reps: number, fn: () => void): SampleWindow {
  fn();
  const w = new SampleWindow(reps);
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    fn();
    w.add(performance.now() - t);
  }
  return w;
}

await runMain(HELP, async () => {
  const args = parseArgs(Deno.args, ["mem", "epochs", "interval", "accel"], []);
  const opt = (k: string, d: string) => args.options.get(k)?.at(-1) ?? d;
  const memMiB = intOption(opt("mem", "256"), "mem", 96);
  const epochs = intOption(opt("epochs", "50"), "epochs", 1);
  const interval = intOption(opt("interval", "100"), "interval", 0);
  const accel = opt("accel", "tcg") as "tcg" | "kvm";
  const dir = await Deno.makeTempDir({ prefix: "pw-qemu-bench-" });
  const udp = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port: 0,
  });
  const udpPort = (udp.addr as Deno.NetAddr).port;
  const drained = (async () => {
    for await (const _ of udp) { /* the guest's datagrams */ }
  })().catch(() => {});
  const guest = await startGuest({
    dir,
    memMiB,
    accel,
    net: { udpPort },
    // Memory churn (the default workload) and one datagram a round.
    workload: `
syslogd -R 10.0.2.2:${udpPort}
i=0
while true; do
  i=$((i+1))
  dd if=/dev/urandom of=/tmp/blob.$((i % 8)) bs=4096 count=$((16 + i % 48)) 2>/dev/null
  logger -t pw "count $i"
  usleep 20000
done`,
  });
  const rows: {
    mode: string;
    pauses: SampleWindow;
    dirty: SampleWindow;
    state: SampleWindow;
  }[] = [];
  try {
    const modes: [string, string][] = [
      ["RAM only (state=off)", "&state=off"],
      ["RAM and device state", ""],
      ["RAM, device state and hold=n0", "&hold=n0"],
    ];
    for (const [m, [mode, opt]] of modes.entries()) {
      const backup = await Backup.open({
        listen: "tcp://127.0.0.1:0",
        store: `${dir}/store${m}`,
        note: () => {},
      });
      const p = new Primary(await openSource(guest.spec + opt), {
        to: [backup.url],
        intervalMs: null,
        ack: { who: { kind: "all" }, level: AckLevel.applied },
        note: () => {},
      });
      p.start();
      const pauses = new SampleWindow(epochs);
      const dirty = new SampleWindow(epochs);
      const state = new SampleWindow(epochs);
      try {
        await p.checkpoint(); // the first epoch sends everything: not a steady state
        for (let i = 0; i < epochs; i++) {
          const t = performance.now();
          const r = await p.checkpoint();
          pauses.add(r.pauseMs);
          dirty.add(r.dirtyBytes / 1024);
          state.add((p.encoder.images[1]?.length ?? 0) / 1024);
          const wait = interval - (performance.now() - t);
          if (wait > 0) await new Promise((res) => setTimeout(res, wait));
        }
      } finally {
        await p.stop();
        await backup.close();
      }
      rows.push({ mode, pauses, dirty, state });
    }

    const size = memMiB << 20;
    const a = new Uint8Array(size).fill(1), b = new Uint8Array(size);
    const heap = timeIt(5, () => b.set(a));
    const map = mapFile(guest.mem, size, { readOnly: true });
    const mapped = map ? timeIt(5, () => b.set(map.bytes)) : null;
    map?.close();
    const reads = timeIt(5, () => readFileInto(guest.mem, b));
    const f = (x: number) => x.toFixed(2);
    console.log(
      `\n## Guest pause per checkpoint: ${memMiB} MiB guest (${accel}), ${epochs} epochs every ${interval} ms\n`,
    );
    console.log("| measure | p50 ms | p99 ms |");
    console.log("| --- | ---: | ---: |");
    for (const r of rows) {
      console.log(
        `| guest pause (QMP stop → cont answered): ${r.mode} | ${
          f(r.pauses.quantile(0.5))
        } | ${f(r.pauses.quantile(0.99))} |`,
      );
    }
    console.log(
      `| copy ${memMiB} MiB, heap → heap (Uint8Array.set) | ${
        f(heap.quantile(0.5))
      } | ${f(heap.quantile(0.99))} |`,
    );
    if (mapped) {
      console.log(
        `| copy the RAM file from its memory map | ${
          f(mapped.quantile(0.5))
        } | ${f(mapped.quantile(0.99))} |`,
      );
    }
    console.log(
      `| read the RAM file in 8 MiB chunks | ${f(reads.quantile(0.5))} | ${
        f(reads.quantile(0.99))
      } |`,
    );
    const [ramOnly, whole, held] = rows;
    console.log(
      `\ndirty per epoch: p50 ${f(whole.dirty.quantile(0.5))} KiB, p99 ${
        f(whole.dirty.quantile(0.99))
      } KiB; device state per epoch: p50 ${
        f(whole.state.quantile(0.5))
      } KiB; the device state adds ${
        f(whole.pauses.quantile(0.5) - ramOnly.pauses.quantile(0.5))
      } ms p50 (${
        f(whole.pauses.quantile(0.99) - ramOnly.pauses.quantile(0.99))
      } ms p99) to the RAM-only pause, hold ${
        f(held.pauses.quantile(0.5) - whole.pauses.quantile(0.5))
      } ms p50 more; RAM-only pause ÷ heap copy (p50): ${
        f(ramOnly.pauses.quantile(0.5) / heap.quantile(0.5))
      }, ÷ copy from the map: ${
        mapped ? f(ramOnly.pauses.quantile(0.5) / mapped.quantile(0.5)) : "-"
      }`,
    );
  } finally {
    await guest.stop();
    udp.close();
    await drained;
    await Deno.remove(dir, { recursive: true });
  }
});
