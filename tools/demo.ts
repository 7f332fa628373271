/**
 * `deno task demo`: the codec end to end on embedded defaults. A synthetic
 * multi-image workload is encoded epoch by epoch and applied to two
 * in-process receivers; every epoch prints a line and the end verifies that
 * both receivers hold exactly the primary's images.
 * @module
 */

import { formatBytes, intOption, parseArgs, runMain } from "../src/_cli.ts";
import { EpochDecoder } from "../src/decoder.ts";
import { EpochEncoder } from "../src/encoder.ts";
import { parseLevel } from "../src/level.ts";
import { bytesEqual } from "../src/replay.ts";
import { parseSyntheticSpec, SyntheticWorkload } from "../src/synthetic.ts";

const USAGE =
  `usage: deno task demo [--epochs N] [--level fast|max] [--synthetic SPEC]

Encodes a synthetic workload (default: 3 images of 16 MiB, 2% of pages touched
per epoch) for N epochs (default 30), applies every epoch to two in-process
receivers, prints one line per epoch and verifies the receivers at the end.
SPEC is key=value pairs: images=3,size=16M,seed=1,dirty=0.02`;

await runMain(USAGE, () => {
  const args = parseArgs(Deno.args, ["epochs", "level", "synthetic"], ["help"]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  const epochs = intOption(
    args.options.get("epochs")?.at(-1) ?? "30",
    "epochs",
    1,
  );
  const level = parseLevel(args.options.get("level")?.at(-1) ?? "fast");
  const spec = {
    images: 3,
    size: 16 << 20,
    ...parseSyntheticSpec(args.options.get("synthetic")?.at(-1) ?? ""),
  };
  const workload = new SyntheticWorkload(spec);
  const encoder = new EpochEncoder(workload.specs, { level });
  const receivers = [
    new EpochDecoder(workload.specs),
    new EpochDecoder(workload.specs),
  ];
  console.log(
    `patchwire demo: ${workload.specs.length} images x ${
      formatBytes(workload.specs[0].size)
    }, level ${level}, ${receivers.length} receivers, ${epochs} epochs (hasher ${encoder.hasher.kind}, zstd ${encoder.zstd.backend})`,
  );
  let wire = 0, dirty = 0;
  for (let e = 1; e <= epochs; e++) {
    if (e > 1) workload.step();
    const { frames, stats } = encoder.encode(workload.images);
    const applied = receivers.map((r) => r.applyEpoch(frames));
    const dirtyBytes = stats.dirtyPages * 4096;
    if (e > 1) {
      wire += stats.wireBytes;
      dirty += dirtyBytes;
    }
    console.log(
      `epoch ${String(e).padStart(3)}  dirty ${
        String(stats.dirtyPages).padStart(5)
      } pages  shared ${
        String(stats.sharedBlocks).padStart(4)
      } blocks  refs same/other/zero ${stats.refs.same}/${stats.refs.other}/${stats.refs.zero}  wire ${
        formatBytes(stats.wireBytes).padStart(10)
      }  ${
        (dirtyBytes / Math.max(1, stats.wireBytes)).toFixed(1).padStart(5)
      }x less than dirty pages  encode ${
        stats.totalMs.toFixed(1).padStart(6)
      } ms  apply ${
        (applied[0].decodeMs + applied[0].applyMs).toFixed(1).padStart(6)
      } ms${e === 1 ? "  (initial sync)" : ""}`,
    );
  }
  let ok = true;
  receivers.forEach((r, ri) =>
    workload.images.forEach((image, i) => {
      const same = bytesEqual(
        r.images[i].committed.subarray(0, image.length),
        image,
      );
      if (!same) {
        console.log(`receiver ${ri}: image ${workload.specs[i].id} DIFFERS`);
      }
      ok &&= same;
    })
  );
  console.log(
    `\nsummary: epochs 2-${epochs} sent ${formatBytes(wire)} for ${
      formatBytes(dirty)
    } of dirty pages (${
      (dirty / Math.max(1, wire)).toFixed(1)
    }x less); verification: ${
      ok ? `every receiver equals the primary at epoch ${epochs}` : "FAILED"
    }`,
  );
  encoder.close();
  receivers.forEach((r) => r.close());
  if (!ok) Deno.exit(1);
});
