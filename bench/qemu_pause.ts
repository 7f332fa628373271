/**
 * Guest pause per checkpoint with the `qemu:` source: a guest (tools/guest.ts)
 * whose /init keeps rewriting files in its RAM-backed root and sends a
 * datagram through its NIC every round, checkpointed by a primary every
 * `--interval` ms to a backup on loopback, in three ways: RAM only
 * (`state=off`), the whole guest (RAM and CPU/device state in one stop
 * window), and the whole guest with its network output held (`hold=n0`),
 * in `--passes` passes through the three in alternating order (A B C, C B A)
 * so that other load on the host weighs on each alike; each pass starts a
 * primary and a backup of its own, whose first (full) epoch is not counted.
 * The pause (QMP `stop` sent → `cont` answered) is shown next to what copying
 * the same RAM costs in the same run: a `Uint8Array.set` between two heap
 * buffers, a copy from the RAM file's memory map, and chunked reads of the
 * file. Per mode also the wire bytes per epoch (the device state's PATCH
 * frames apart from the RAM's, from the retained log), and after the three
 * modes a breakdown of the stop window on the same guest through QMP of our
 * own: `stop` → `cont` alone, with the device-state save alone, with the RAM
 * copy alone, with both at once (what the source does), and with both and
 * the `object-add` of a filter-buffer (what `hold=` adds, less the mirror's
 * timestamps fetched from its worker). Prints Markdown
 * tables and one JSON line.
 *
 *     deno run -A bench/qemu_pause.ts [--mem 256] [--epochs 50] [--interval 100]
 *       [--accel tcg|kvm] [--passes 2] [--parts 20]
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
import { decodeFrame, FrameType } from "../src/frame.ts";
import { createBlockHasher } from "../src/hash/block_hash.ts";
import { QmpClient } from "../src/qmp.ts";
import {
  DeviceStateChannel,
  ignoreSharedRam,
} from "../src/qemu_device_state.ts";

const HELP = `qemu_pause — guest pause per checkpoint beside a RAM copy

  deno run -A bench/qemu_pause.ts [--mem MIB] [--epochs N] [--interval MS] [--accel tcg|kvm]
    [--passes N] [--parts N]

  --epochs    measured checkpoints per mode (default 50), split over
  --passes    passes through the three modes, in alternating order (default 2)
  --parts     rounds of the stop window taken apart (default 20)
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** p50 and p99 of a window, for the JSON line. */
const q = (w: SampleWindow) => ({
  p50: w.quantile(0.5),
  p99: w.quantile(0.99),
});

/** One mode's figures. */
interface ModeRow {
  mode: string;
  pauses: SampleWindow;
  /** KiB per epoch: dirty pages, the device state's length, wire bytes (all, the state's frames, the RAM's). */
  dirty: SampleWindow;
  state: SampleWindow;
  wire: SampleWindow;
  stateWire: SampleWindow;
  ramWire: SampleWindow;
}

/** The stop window's parts, each timed from `stop` sent to `cont` answered. */
const STEPS = {
  stopCont: "stop → cont alone (QMP round trips)",
  save: "stop, save the device state (migrate → completed), cont",
  copy: "stop, copy the RAM from its memory map (into the arena), cont",
  both: "stop, save ∥ copy (as the source does), cont",
  hold:
    "stop, save ∥ copy, add a filter-buffer on n0 (the QMP part of hold=), cont",
} as const;
type Step = keyof typeof STEPS;

/**
 * A buffer like the capture's: the encoder's capture buffers live in its
 * block hasher's arena (wasm memory). Copying from the RAM file's mapping
 * into one is much faster than into a plain heap `Uint8Array` here, so the
 * stop window's parts copy into one of these.
 */
function arenaBuffer(size: number): Uint8Array {
  return createBlockHasher({ arenaBytes: size + (1 << 20) }).alloc(size) ??
    new Uint8Array(size);
}

/**
 * The stop window taken apart on the same guest, through a QMP session of
 * our own (the sources are closed by now): `reps` rounds, each running the
 * variants of {@linkcode STEPS} in turn `interval` ms apart. Also times,
 * inside the `both` variant, the copy alone and the save from `migrate` sent
 * to `completed`. `buf` is the copy's destination.
 */
async function stopWindowParts(
  qmpPath: string,
  mem: string,
  buf: Uint8Array,
  reps: number,
  interval: number,
): Promise<
  Record<Step, SampleWindow> & {
    copyInBoth: SampleWindow;
    saveInBoth: SampleWindow;
    stateBytes: number;
  }
> {
  const qmp = await QmpClient.connect(qmpPath);
  let channel: DeviceStateChannel | null = null;
  const map = mapFile(mem, buf.length, { readOnly: true });
  try {
    if (!map) throw new Error(`cannot map ${mem}`);
    await ignoreSharedRam(qmp);
    channel = await DeviceStateChannel.open();
    const ch = channel;
    buf.set(map.bytes); // first touch of the destination, untimed
    const state = new Uint8Array(16 << 20);
    const tooLarge = (n: number) => `device state of ${n} bytes`;
    const w = {
      stopCont: new SampleWindow(reps),
      save: new SampleWindow(reps),
      copy: new SampleWindow(reps),
      both: new SampleWindow(reps),
      hold: new SampleWindow(reps),
      copyInBoth: new SampleWindow(reps),
      saveInBoth: new SampleWindow(reps),
      stateBytes: 0,
    };
    let buffers = 0;
    const round = async (step: Step) => {
      const t = performance.now();
      await qmp.execute("stop");
      if (step === "both" || step === "hold") {
        const t1 = performance.now();
        const saving = ch.save(qmp, state, 5000, tooLarge);
        saving.catch(() => {});
        buf.set(map.bytes);
        const copied = performance.now() - t1;
        await saving;
        if (step === "both") {
          w.copyInBoth.add(copied);
          w.saveInBoth.add(performance.now() - t1);
        }
      }
      const buffer = `pw-bench-buffer-${++buffers}`;
      if (step === "hold") {
        await qmp.execute("object-add", {
          "qom-type": "filter-buffer",
          id: buffer,
          netdev: "n0",
          queue: "rx",
          interval: 4_294_967_295,
        });
      } else if (step === "save") {
        w.stateBytes = await ch.save(qmp, state, 5000, tooLarge);
      } else if (step === "copy") {
        buf.set(map.bytes);
      }
      await qmp.execute("cont");
      w[step].add(performance.now() - t);
      // Its commit: the buffer goes, releasing what it held.
      if (step === "hold") await qmp.execute("object-del", { id: buffer });
    };
    for (const step of Object.keys(STEPS) as Step[]) await round(step); // warm-up
    for (let i = 0; i < reps; i++) {
      for (const step of Object.keys(STEPS) as Step[]) {
        await sleep(interval);
        await round(step);
      }
    }
    return w;
  } finally {
    await qmp.execute("cont").catch(() => {});
    qmp.close();
    channel?.close();
    map?.close();
  }
}

await runMain(HELP, async () => {
  const args = parseArgs(Deno.args, [
    "mem",
    "epochs",
    "interval",
    "accel",
    "parts",
    "passes",
  ], []);
  const opt = (k: string, d: string) => args.options.get(k)?.at(-1) ?? d;
  const memMiB = intOption(opt("mem", "256"), "mem", 96);
  const epochs = intOption(opt("epochs", "50"), "epochs", 1);
  const interval = intOption(opt("interval", "100"), "interval", 0);
  const partsReps = intOption(opt("parts", "20"), "parts", 1);
  const passes = intOption(opt("passes", "2"), "passes", 1);
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
  let guest: Awaited<ReturnType<typeof startGuest>> | null = null;
  const rows: ModeRow[] = [];
  try {
    guest = await startGuest({
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
    const modes: [string, string][] = [
      ["RAM only (state=off)", "&state=off"],
      ["RAM and device state", ""],
      ["RAM, device state and hold=n0", "&hold=n0"],
    ];
    // The modes in passes, in turn and in alternating order (A B C, C B A,
    // ...), so that what else the host does at the time weighs on each alike.
    const perPass = Math.ceil(epochs / passes);
    const samples = perPass * passes;
    for (const [mode] of modes) {
      rows.push({
        mode,
        pauses: new SampleWindow(samples),
        dirty: new SampleWindow(samples),
        state: new SampleWindow(samples),
        wire: new SampleWindow(samples),
        stateWire: new SampleWindow(samples),
        ramWire: new SampleWindow(samples),
      });
    }
    for (let pass = 0; pass < passes; pass++) {
      const order = pass % 2 === 0 ? [0, 1, 2] : [2, 1, 0];
      for (const m of order) {
        const row = rows[m];
        const backup = await Backup.open({
          listen: "tcp://127.0.0.1:0",
          store: `${dir}/store-${pass}-${m}`,
          note: () => {},
        });
        let p: Primary | null = null;
        try {
          p = new Primary(await openSource(guest.spec + modes[m][1]), {
            to: [backup.url],
            intervalMs: null,
            ack: { who: { kind: "all" }, level: AckLevel.applied },
            note: () => {},
          });
          p.start();
          await p.checkpoint(); // the first epoch sends everything: not a steady state
          for (let i = 0; i < perPass; i++) {
            const t = performance.now();
            const r = await p.checkpoint();
            row.pauses.add(r.pauseMs);
            row.dirty.add(r.dirtyBytes / 1024);
            row.state.add((p.encoder.images[1]?.length ?? 0) / 1024);
            row.wire.add(r.wireBytes / 1024);
            // Which image each PATCH frame is for (outside the stop window).
            let state = 0, ram = 0;
            for (const bytes of p.retained.get(r.epoch)?.frames ?? []) {
              const fr = decodeFrame(bytes);
              if (fr.type !== FrameType.PATCH) continue;
              if (fr.imageId.endsWith(".state")) state += bytes.length;
              else if (!fr.imageId.endsWith(".machine")) ram += bytes.length;
            }
            row.stateWire.add(state / 1024);
            row.ramWire.add(ram / 1024);
            const wait = interval - (performance.now() - t);
            if (wait > 0) await sleep(wait);
          }
        } finally {
          await p?.stop();
          await backup.close();
          await Deno.remove(`${dir}/store-${pass}-${m}`, { recursive: true })
            .catch(() => {});
        }
      }
    }

    const size = memMiB << 20;
    const arena = arenaBuffer(size);
    const parts = await stopWindowParts(
      guest.qmp,
      guest.mem,
      arena,
      partsReps,
      interval,
    );

    const a = new Uint8Array(size).fill(1), b = new Uint8Array(size);
    const heap = timeIt(5, () => b.set(a));
    const map = mapFile(guest.mem, size, { readOnly: true });
    const mapped = map ? timeIt(5, () => b.set(map.bytes)) : null;
    const mappedArena = map ? timeIt(5, () => arena.set(map.bytes)) : null;
    map?.close();
    const reads = timeIt(5, () => readFileInto(guest!.mem, b));
    const f = (x: number) => x.toFixed(2);
    console.log(
      `\n## Guest pause per checkpoint: ${memMiB} MiB guest (${accel}), ${
        rows[0].pauses.count
      } epochs per mode every ${interval} ms, in ${passes} alternating passes\n`,
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
        `| copy the RAM file from its memory map (guest running) | ${
          f(mapped.quantile(0.5))
        } | ${f(mapped.quantile(0.99))} |`,
      );
    }
    if (mappedArena) {
      console.log(
        `| copy the RAM file from its memory map into the hasher's arena, as the capture does (guest running) | ${
          f(mappedArena.quantile(0.5))
        } | ${f(mappedArena.quantile(0.99))} |`,
      );
    }
    console.log(
      `| read the RAM file in 8 MiB chunks | ${f(reads.quantile(0.5))} | ${
        f(reads.quantile(0.99))
      } |`,
    );
    const [ramOnly, whole, held] = rows;
    const addsP50 = whole.pauses.quantile(0.5) - ramOnly.pauses.quantile(0.5);
    const addsP99 = whole.pauses.quantile(0.99) -
      ramOnly.pauses.quantile(0.99);
    const holdP50 = held.pauses.quantile(0.5) - whole.pauses.quantile(0.5);
    console.log(
      `\ndirty per epoch: p50 ${f(whole.dirty.quantile(0.5))} KiB, p99 ${
        f(whole.dirty.quantile(0.99))
      } KiB; device state per epoch: p50 ${
        f(whole.state.quantile(0.5))
      } KiB; RAM-only pause ÷ heap copy (p50): ${
        f(ramOnly.pauses.quantile(0.5) / heap.quantile(0.5))
      }, ÷ copy from the map: ${
        mapped ? f(ramOnly.pauses.quantile(0.5) / mapped.quantile(0.5)) : "-"
      }, ÷ copy from the map into the arena: ${
        mappedArena
          ? f(ramOnly.pauses.quantile(0.5) / mappedArena.quantile(0.5))
          : "-"
      }`,
    );
    console.log(
      `\n**device state adds ${f(addsP50)} ms p50 (${
        f(addsP99)
      } ms p99) over RAM only** (target ≤ 5 ms p50: ${
        addsP50 <= 5 ? "met" : "NOT met"
      }); hold=n0 adds ${f(holdP50)} ms p50 more`,
    );

    console.log(`\n### Wire bytes per epoch (same runs)\n`);
    console.log(
      "| mode | all frames KiB p50 / p99 | device state's frames KiB p50 / p99 | RAM's frames KiB p50 / p99 | device state length KiB p50 |",
    );
    console.log("| --- | ---: | ---: | ---: | ---: |");
    for (const r of rows) {
      console.log(
        `| ${r.mode} | ${f(r.wire.quantile(0.5))} / ${
          f(r.wire.quantile(0.99))
        } | ${f(r.stateWire.quantile(0.5))} / ${
          f(r.stateWire.quantile(0.99))
        } | ${f(r.ramWire.quantile(0.5))} / ${f(r.ramWire.quantile(0.99))} | ${
          f(r.state.quantile(0.5))
        } |`,
      );
    }

    console.log(
      `\n### The stop window taken apart: ${partsReps} rounds, QMP of our own, guest stopped for each\n`,
    );
    console.log("| stop window | p50 ms | p99 ms |");
    console.log("| --- | ---: | ---: |");
    for (const [k, name] of Object.entries(STEPS)) {
      const w = parts[k as Step];
      console.log(
        `| ${name} | ${f(w.quantile(0.5))} | ${f(w.quantile(0.99))} |`,
      );
    }
    console.log(
      `| inside save ∥ copy: the copy | ${
        f(parts.copyInBoth.quantile(0.5))
      } | ${f(parts.copyInBoth.quantile(0.99))} |`,
    );
    console.log(
      `| inside save ∥ copy: migrate sent → completed | ${
        f(parts.saveInBoth.quantile(0.5))
      } | ${f(parts.saveInBoth.quantile(0.99))} |`,
    );
    console.log(
      `\ndevice state saved: ${
        f(parts.stateBytes / 1024)
      } KiB; save ∥ copy − copy alone (p50): ${
        f(parts.both.quantile(0.5) - parts.copy.quantile(0.5))
      } ms; the filter-buffer's object-add (p50): ${
        f(parts.hold.quantile(0.5) - parts.both.quantile(0.5))
      } ms`,
    );

    const modeKey = ["ramOnly", "deviceState", "deviceStateHold"];
    console.log(
      `\n${
        JSON.stringify({
          bench: "qemu_pause",
          memMiB,
          accel,
          epochs: rows[0].pauses.count,
          passes,
          intervalMs: interval,
          pauseMs: Object.fromEntries(
            rows.map((r, i) => [modeKey[i], q(r.pauses)]),
          ),
          deviceStateAddsMs: { p50: addsP50, p99: addsP99 },
          holdAddsMsP50: holdP50,
          copyMs: {
            heap: q(heap),
            map: mapped ? q(mapped) : null,
            mapToArena: mappedArena ? q(mappedArena) : null,
            reads: q(reads),
          },
          wireKiBPerEpoch: Object.fromEntries(rows.map((r, i) => [
            modeKey[i],
            {
              all: q(r.wire),
              deviceState: q(r.stateWire),
              ram: q(r.ramWire),
            },
          ])),
          deviceStateKiB: q(whole.state),
          dirtyKiBPerEpoch: q(whole.dirty),
          stopWindowMs: {
            ...Object.fromEntries(
              Object.keys(STEPS).map((k) => [k, q(parts[k as Step])]),
            ),
            copyInBoth: q(parts.copyInBoth),
            saveInBoth: q(parts.saveInBoth),
          },
        })
      }`,
    );
  } finally {
    await guest?.stop();
    udp.close();
    await drained;
    await Deno.remove(dir, { recursive: true });
  }
});
