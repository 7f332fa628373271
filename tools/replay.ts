/**
 * `deno task replay <seriesDir> [--json] [--limit N] [--level fast|max]`
 * @module
 */

import {
  formatBytes,
  intOption,
  parseArgs,
  runMain,
  UsageError,
} from "../src/_cli.ts";
import { parseLevel } from "../src/level.ts";
import { type ReplayRow, replaySeries } from "../src/replay.ts";

const USAGE =
  `usage: deno task replay <seriesDir> [--json] [--limit N] [--level fast|max]

Replays an image series (meta.json + 0000.img, 0001.img, ...): sends image 0
against an all-zero start, then encodes every image k against k-1, decodes it
into a separate receiver and verifies that the receiver equals image k.
Prints one row per epoch and totals; the initial full sync is not in the totals.

  --level fast|max  codec operating point (default fast)
  --limit N         replay at most N epochs after image 0
  --json            also print the totals as one JSON object on the last line
  --help            this text`;

function pad(s: string | number, n: number): string {
  return String(s).padStart(n);
}

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, ["limit", "level"], ["json", "help"]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length !== 1) {
    throw new UsageError("expected exactly one series directory");
  }
  const level = parseLevel(args.options.get("level")?.at(-1) ?? "fast");
  const limit = args.options.has("limit")
    ? intOption(args.options.get("limit")!.at(-1)!, "limit", 1)
    : undefined;
  const json = args.options.has("json");
  console.log(
    `${pad("epoch", 5)} ${pad("dirty pg", 8)} ${pad("dirty blk", 9)} ${
      pad("shared", 7)
    } ${pad("ref s/o/z", 15)} ${pad("zero/copy/xor/blk/lit/lz", 26)} ${
      pad("wire B", 10)
    } ${pad("vs dirty", 8)} ${pad("enc ms", 7)} ${pad("dec ms", 7)}`,
  );
  const row = (r: ReplayRow) => {
    const o = r.ops;
    console.log(
      `${pad(r.epoch, 5)} ${pad(r.dirtyPages, 8)} ${pad(r.dirtyBlocks, 9)} ${
        pad(r.sharedBlocks, 7)
      } ${pad(`${r.refs.same}/${r.refs.other}/${r.refs.zero}`, 15)} ${
        pad(`${o.zero}/${o.copy}/${o.xor}/${o.blocks}/${o.literal}/${o.lz}`, 26)
      } ${pad(r.wireBytes, 10)} ${
        pad(
          r.wireBytes ? (r.dirtyPageBytes / r.wireBytes).toFixed(1) + "x" : "-",
          8,
        )
      } ${pad(r.encodeMs.toFixed(1), 7)} ${pad(r.decodeMs.toFixed(1), 7)}`,
    );
  };
  const result = await replaySeries(args.positional[0], {
    level,
    limit,
    onEpoch: row,
  });
  console.log(
    `total: ${result.pairs} epochs of ${
      formatBytes(result.imageBytes)
    } (${result.level}), dirty pages ${
      formatBytes(result.dirtyPageBytes)
    }, wire ${formatBytes(result.wireBytes)} (${
      (result.dirtyPageBytes / Math.max(1, result.wireBytes)).toFixed(1)
    }x less), encode ${result.encodeMs.toFixed(0)} ms, decode+apply ${
      result.decodeMs.toFixed(0)
    } ms, verified: ${result.verified ? "yes" : "NO"}; initial sync ${
      formatBytes(result.initialWireBytes)
    }`,
  );
  if (json) {
    const { rows: _rows, ...totals } = result;
    console.log(JSON.stringify(totals));
  }
});
