/**
 * Guest pause per checkpoint with the `qemu:` source: a guest (tools/guest.ts)
 * whose /init keeps rewriting files in its RAM-backed root, checkpointed by a
 * primary every `--interval` ms; the pause (QMP `stop` sent → `cont`
 * answered) next to what copying the same RAM costs in the same run: a
 * `Uint8Array.set` between two heap buffers, a copy from the RAM file's
 * memory map, and chunked reads of the file. Prints a Markdown table.
 *
 *     deno run -A bench/qemu_pause.ts [--mem 256] [--epochs 50] [--interval 100]
 *       [--accel tcg|kvm]
 *
 * -A: QEMU is a child process and the RAM file is mapped through FFI.
 * @module
 */

import { intOption, parseArgs, runMain } from "../src/_cli.ts";
import { startGuest } from "../tools/guest.ts";
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
  const guest = await startGuest({ dir, memMiB, accel });
  try {
    const source = await openSource(guest.spec);
    const p = new Primary(source, {
      to: [],
      intervalMs: null,
      ack: { who: { kind: "none" }, level: AckLevel.applied },
      note: () => {},
    });
    p.start();
    const pauses = new SampleWindow(epochs);
    const dirty = new SampleWindow(epochs);
    await p.checkpoint(); // the first epoch sends everything: not a steady state
    for (let i = 0; i < epochs; i++) {
      const t = performance.now();
      const r = await p.checkpoint();
      pauses.add(r.pauseMs);
      dirty.add(r.dirtyBytes / 1024);
      const wait = interval - (performance.now() - t);
      if (wait > 0) await new Promise((res) => setTimeout(res, wait));
    }
    await p.stop();

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
    console.log(
      `| guest pause (QMP stop → cont answered) | ${
        f(pauses.quantile(0.5))
      } | ${f(pauses.quantile(0.99))} |`,
    );
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
    console.log(
      `\ndirty per epoch: p50 ${f(dirty.quantile(0.5))} KiB, p99 ${
        f(dirty.quantile(0.99))
      } KiB; pause ÷ heap copy (p50): ${
        f(pauses.quantile(0.5) / heap.quantile(0.5))
      }`,
    );
  } finally {
    await guest.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
