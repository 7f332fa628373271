/**
 * Sharing across images: two QEMU guests booted from the same kernel and
 * initramfs (tools/guest.ts), captured together with the `qemu:` source for
 * `--epochs` epochs, then the same captures encoded twice — by one encoder
 * over both images (blocks shared within and across images: one primary
 * with two `--source`s) and by one encoder per image (no sharing across
 * them: two primaries) — and decoded and verified. Prints the bytes on the
 * wire for the first epoch (everything) and the later ones (what changed).
 *
 *     deno run -A bench/qemu_sharing.ts [--mem 128] [--epochs 6] [--interval 200]
 *       [--level fast|max]
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import { startGuest } from "../tools/guest.ts";
import { QemuSource } from "../src/qemu_source.ts";
import { MultiSource } from "../src/multi_source.ts";
import { EpochEncoder, type ImageSpec } from "../src/encoder.ts";
import { EpochDecoder } from "../src/decoder.ts";
import type { Level } from "../src/level.ts";

const HELP =
  `qemu_sharing — wire bytes for two guests with and without cross-image sharing

  deno run -A bench/qemu_sharing.ts [--mem MIB] [--epochs N] [--interval MS] [--level fast|max]
`;

/** Encodes the epochs with one encoder over `specs`; returns wire bytes per epoch after verifying a decode. */
function encodeAll(
  specs: ImageSpec[],
  epochs: Uint8Array[][],
  level: Level,
): number[] {
  const encoder = new EpochEncoder(specs, { level });
  const decoder = new EpochDecoder(specs);
  const wire: number[] = [];
  for (const images of epochs) {
    const { frames, stats } = encoder.encode(images);
    decoder.applyEpoch(frames);
    decoder.images.forEach((img, i) => {
      const got = img.committed.subarray(0, img.size);
      for (let k = 0; k < got.length; k += 4093) {
        if (got[k] !== images[i][k]) {
          throw new Error(`decoded image ${img.id} differs at byte ${k}`);
        }
      }
    });
    wire.push(stats.wireBytes);
  }
  return wire;
}

await runMain(HELP, async () => {
  const args = parseArgs(Deno.args, ["mem", "epochs", "interval", "level"], []);
  const opt = (k: string, d: string) => args.options.get(k)?.at(-1) ?? d;
  const memMiB = intOption(opt("mem", "128"), "mem", 96);
  const epochCount = intOption(opt("epochs", "6"), "epochs", 2);
  const interval = intOption(opt("interval", "200"), "interval", 0);
  const level = opt("level", "fast");
  if (level !== "fast" && level !== "max") {
    throw new UsageError(`--level ${level}: expected fast or max`);
  }
  const dir = await Deno.makeTempDir({ prefix: "pw-sharing-" });
  const guests = [];
  try {
    for (const name of ["vm0", "vm1"]) {
      guests.push(await startGuest({ dir: `${dir}/${name}`, memMiB }));
    }
    const source = new MultiSource(
      await Promise.all(
        // RAM only: sharing across images is about the guests' RAM (with the
        // device state each guest would add two small images of its own).
        guests.map((g, i) => QemuSource.open(`${g.spec}&id=vm${i}&state=off`)),
      ),
    );
    const epochs: Uint8Array[][] = [];
    for (let e = 0; e < epochCount; e++) {
      const into = source.images.map((s) => new Uint8Array(s.size));
      await source.capture(into);
      epochs.push(into);
      await new Promise((r) => setTimeout(r, interval));
    }
    await source.close();

    const shared = encodeAll(source.images, epochs, level);
    const apart = source.images.map((spec, i) =>
      encodeAll([spec], epochs.map((imgs) => [imgs[i]]), level)
    );
    const separate = shared.map((_, e) =>
      apart.reduce((n, perImage) => n + perImage[e], 0)
    );
    const kib = (n: number) => (n / 1024).toFixed(1);
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    console.log(
      `\n## Two ${memMiB} MiB guests from the same kernel, ${epochCount} epochs every ${interval} ms, level ${level}\n`,
    );
    console.log(
      "| epochs | one encoder, shared across images (KiB) | one encoder per image (KiB) | separate ÷ shared |",
    );
    console.log("| --- | ---: | ---: | ---: |");
    const row = (label: string, a: number, b: number) =>
      console.log(
        `| ${label} | ${kib(a)} | ${kib(b)} | ${(b / a).toFixed(2)} |`,
      );
    row("first (whole images)", shared[0], separate[0]);
    row(
      `later (${epochCount - 1}, what changed)`,
      sum(shared.slice(1)),
      sum(separate.slice(1)),
    );
    row("all", sum(shared), sum(separate));
  } finally {
    for (const g of guests) await g.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
