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
import { parseLevelChoice } from "../src/level.ts";
import { type ReplayRow, replaySeries } from "../src/replay.ts";

const USAGE =
  `usage: deno task replay <seriesDir> [--json] [--limit N] [--level fast|max|auto] [--link-mbps R]

Replays an image series (meta.json + 0000.img, 0001.img, ...): sends image 0
against an all-zero start, then encodes every image k against k-1, decodes it
into a separate receiver and verifies that the receiver equals image k.
Prints one row per epoch and totals; the initial full sync is not in the totals.

  --level fast|max|auto
                    codec operating point (default fast); auto chooses each
                    epoch's as a primary would, over the modelled link
  --link-mbps R     the modelled link, Mbit/s (default 1000): each epoch is due
                    at its recorded interval, encoded after the previous one,
                    sent after the previous one is through; "commit ms" is
                    due → through (round trip and apply left out)
  --limit N         replay at most N epochs after image 0
  --json            also print the totals as one JSON object on the last line
  --help            this text`;

function pad(s: string | number, n: number): string {
  return String(s).padStart(n);
}

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, ["limit", "level", "link-mbps"], [
    "json",
    "help",
  ]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length !== 1) {
    throw new UsageError("expected exactly one series directory");
  }
  const level = parseLevelChoice(args.options.get("level")?.at(-1) ?? "fast");
  const linkText = args.options.get("link-mbps")?.at(-1) ?? "1000";
  const linkMbps = Number(linkText);
  if (!(linkMbps > 0) || !Number.isFinite(linkMbps)) {
    throw new UsageError(
      `--link-mbps must be a positive number of Mbit/s, got "${linkText}"`,
    );
  }
  const limit = args.options.has("limit")
    ? intOption(args.options.get("limit")!.at(-1)!, "limit", 1)
    : undefined;
  const json = args.options.has("json");
  console.log(
    `${pad("epoch", 5)} ${pad("dirty pg", 8)} ${pad("dirty blk", 9)} ${
      pad("shared", 7)
    } ${pad("ref s/o/z", 15)} ${pad("zero/copy/xor/blk/lit/lz", 26)} ${
      pad("wire B", 10)
    } ${pad("vs dirty", 8)} ${pad("enc ms", 7)} ${pad("dec ms", 7)} ${
      pad("level", 5)
    } ${pad("commit ms", 9)}`,
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
      } ${pad(r.encodeMs.toFixed(1), 7)} ${pad(r.decodeMs.toFixed(1), 7)} ${
        pad(r.level, 5)
      } ${pad(r.commitMs.toFixed(1), 9)}`,
    );
  };
  const result = await replaySeries(args.positional[0], {
    level,
    limit,
    linkMbps,
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
    } ms, commit ${
      (result.commitMs / Math.max(1, result.pairs)).toFixed(0)
    } ms/epoch at ${linkMbps} Mbit/s (fast ${result.levels.fast}, max ${result.levels.max}), verified: ${
      result.verified ? "yes" : "NO"
    }; initial sync ${formatBytes(result.initialWireBytes)}`,
  );
  if (json) {
    const { rows: _rows, ...totals } = result;
    console.log(JSON.stringify(totals));
  }
});
