/**
 * Pause per checkpoint with the `proc:` source: a python3 child holding a
 * large buffer (default 256 MiB) and rewriting a few random pages of it all
 * the time, captured every `--interval` ms; the pause (SIGSTOP → SIGCONT)
 * with soft-dirty hints (`dirty=auto`, where the kernel has them) against a
 * full read of every page (`dirty=scan`), beside a heap-to-heap copy of the
 * same number of bytes in the same run. Prints a Markdown table.
 *
 *     deno run -A bench/proc_pause.ts [--mem 256] [--epochs 30] [--interval 100]
 *
 * -A: Deno treats /proc/PID as privileged.
 * @module
 */

import { intOption, parseArgs, runMain } from "../src/_cli.ts";
import { ProcSource, softDirtyWorks } from "../src/proc_source.ts";
import { SampleWindow } from "../src/_window.ts";

const HELP =
  `proc_pause — process pause per checkpoint, soft-dirty against a full scan

  deno run -A bench/proc_pause.ts [--mem MIB] [--epochs N] [--interval MS]
`;

/** Keeps MiB of memory and writes 64 random pages of it every millisecond or so. */
function workload(mib: number): string {
  return `
import os, random, sys, time
b = bytearray(os.urandom(${mib} << 20))
sys.stdout.write("ready\\n"); sys.stdout.flush()
n = len(b) // 4096
while True:
    for _ in range(64):
        p = random.randrange(n) * 4096
        b[p:p + 64] = os.urandom(64)
    time.sleep(0.001)
`;
}

async function startChild(mib: number): Promise<Deno.ChildProcess> {
  const child = new Deno.Command("python3", {
    args: ["-c", workload(mib)],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  for (let text = ""; !text.includes("ready");) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the workload exited before it was ready");
    text += value;
  }
  return child;
}

function ms(x: number): string {
  return x.toFixed(1);
}

await runMain(HELP, async () => {
  const args = parseArgs(Deno.args, ["mem", "epochs", "interval"], []);
  const opt = (k: string, d: string) => args.options.get(k)?.at(-1) ?? d;
  const mib = intOption(opt("mem", "256"), "mem", 1);
  const epochs = intOption(opt("epochs", "30"), "epochs", 2);
  const interval = intOption(opt("interval", "100"), "interval", 0);
  const child = await startChild(mib);
  const rows: string[] = [];
  let writable = 0;
  try {
    for (const mode of ["auto", "scan"] as const) {
      const source = await ProcSource.open(
        `proc:${child.pid}?dirty=${mode}`,
        () => {},
      );
      const into = source.images.map((i) => new Uint8Array(i.size).fill(1));
      const pauses = new SampleWindow(epochs);
      let hinted = 0;
      await source.capture(into); // the first capture reads everything
      for (let e = 0; e < epochs; e++) {
        await new Promise((r) => setTimeout(r, interval));
        const r = await source.capture(into);
        pauses.add(r.pauseMs);
        const hint = r.dirtyPages?.[0];
        if (hint) {
          for (const w of hint) {
            for (let x = w; x; x &= x - 1) hinted++;
          }
        }
      }
      await source.close();
      writable = Number(
        (await Deno.readTextFile(`/proc/${child.pid}/status`))
          .match(/VmRSS:\s+(\d+) kB/)?.[1] ?? 0,
      ) * 1024;
      rows.push(
        `| ${mode === "auto" ? "dirty=auto" : "dirty=scan (full)"} | ${
          source.softDirty ? "yes" : "no"
        } | ${ms(pauses.quantile(0.5))} | ${ms(pauses.quantile(0.99))} | ${
          source.softDirty ? (hinted / epochs).toFixed(0) : "all"
        } |`,
      );
    }
  } finally {
    child.kill("SIGKILL");
    await child.status;
  }
  // A heap-to-heap copy of what the process holds, for scale.
  const a = new Uint8Array(writable).fill(1), b = new Uint8Array(writable);
  b.set(a);
  const copy = new SampleWindow(10);
  for (let i = 0; i < 10; i++) {
    const t = performance.now();
    b.set(a);
    copy.add(performance.now() - t);
  }
  console.log(
    `## proc: pause per checkpoint, ${mib} MiB buffer, ${epochs} epochs every ${interval} ms\n`,
  );
  console.log(
    "| capture | soft-dirty used | pause p50 ms | pause p99 ms | pages read per epoch |",
  );
  console.log("| --- | --- | ---: | ---: | ---: |");
  for (const r of rows) console.log(r);
  console.log(
    `\nheap copy of the process's ${
      (writable / 2 ** 20).toFixed(0)
    } MiB resident: p50 ${
      ms(copy.quantile(0.5))
    } ms. Soft-dirty bits on this kernel: ${
      softDirtyWorks()
        ? "yes"
        : "no (CONFIG_MEM_SOFT_DIRTY not set): both rows read every page"
    }.`,
  );
});
