/**
 * `deno task backup --listen URL --store DIR [--http HOST:PORT]`
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import {
  ackPolicy,
  COMMON_HELP,
  COMMON_VALUED,
  controlApp,
  last,
  linkOptions,
  list,
  onSignal,
  peerAuth,
  serveControl,
  transportOptions,
} from "../src/_role_cli.ts";
import { Backup, type PromoteOptions } from "../src/backup.ts";
import { parseLevel } from "../src/level.ts";
import { parseAckLevel, parseAckWho } from "../src/ack_policy.ts";
import { AckLevel } from "../src/protocol.ts";

const USAGE =
  `usage: deno task backup --listen URL --store DIR [--http HOST:PORT] [options]

Accepts one upstream (a primary or a relay) on --listen, verifies and applies
every epoch atomically to DIR/ID.img (each file always equals one committed
checkpoint, across crashes), and acknowledges it. With --http, POST /promote
(JSON body: {"to": ["URL", ...], "ack": "all", "ackLevel": "applied",
"interval": 1000, "level": "fast"}) makes it a primary that replicates its
images from its last committed epoch; --promote does that at start.

  --promote          start as a primary from the store (needs --to)
  --to URL[,URL...]  peers for --promote
  --ack, --ack-level, --interval MS|manual, --level fast|max: as for the primary
${COMMON_HELP}`;

function promoteOptions(
  body: Record<string, unknown>,
  fallback: PromoteOptions,
): PromoteOptions {
  const known = ["to", "ack", "ackLevel", "interval", "level"];
  for (const key of Object.keys(body)) {
    if (!known.includes(key)) {
      throw new RangeError(
        `unknown promote option "${key}", expected ${known.join(", ")}`,
      );
    }
  }
  if (
    body.to !== undefined &&
    !(Array.isArray(body.to) && body.to.every((u) => typeof u === "string"))
  ) {
    throw new RangeError(`"to" must be an array of peer URLs`);
  }
  const to = (body.to as string[] | undefined) ?? fallback.to;
  const interval = body.interval;
  if (
    interval !== undefined && interval !== "manual" &&
    !(Number.isSafeInteger(interval) && (interval as number) >= 1)
  ) {
    throw new RangeError(
      `"interval" must be a whole number of ms >= 1 or "manual", got ${
        JSON.stringify(interval)
      }`,
    );
  }
  return {
    ...fallback,
    to,
    ack: {
      who: typeof body.ack === "string"
        ? parseAckWho(body.ack)
        : fallback.ack!.who,
      level: typeof body.ackLevel === "string"
        ? parseAckLevel(body.ackLevel)
        : fallback.ack!.level,
    },
    intervalMs: interval === "manual"
      ? null
      : typeof interval === "number"
      ? interval
      : fallback.intervalMs,
    level: typeof body.level === "string"
      ? parseLevel(body.level)
      : fallback.level,
  };
}

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, [
    "listen",
    "store",
    "to",
    "ack",
    "ack-level",
    "interval",
    "level",
    ...COMMON_VALUED,
  ], ["help", "promote"]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const listen = last(args, "listen");
  const store = last(args, "store");
  if (!listen) throw new UsageError("--listen is required");
  if (!store) throw new UsageError("--store is required");
  const transport = transportOptions(args);
  const auth = await peerAuth(args, transport);
  const link = linkOptions(args, transport);
  const intervalText = last(args, "interval") ?? "1000";
  const fallback: PromoteOptions = {
    to: list(args, "to"),
    ack: args.options.has("ack") || args.options.has("ack-level")
      ? ackPolicy(args)
      : { who: { kind: "all" }, level: AckLevel.applied },
    intervalMs: intervalText === "manual"
      ? null
      : intOption(intervalText, "interval", 1),
    level: parseLevel(last(args, "level") ?? "fast"),
    auth,
    link,
  };
  let backup: Backup | null = null;
  const target = () => {
    const b = backup!;
    return {
      status: () => b.status(),
      checkpoint: b.promoted ? () => b.promoted!.checkpoint() : undefined,
      promote: b.promoted
        ? undefined
        : async (body: Record<string, unknown>) => {
          const p = await b.promote(promoteOptions(body, fallback));
          return { promoted: true, epoch: p.epoch };
        },
    };
  };
  const { app, shared } = controlApp(args, target, listen);
  backup = await Backup.open({
    listen,
    store,
    auth,
    transport: { ...transport, app: shared ? app! : undefined },
  });
  const b = backup;
  const server = await serveControl(args, app);
  console.error(
    `backup: listening on ${b.url} (store ${b.store.dir} at epoch ${b.epoch})`,
  );
  if (args.options.has("promote")) {
    if (fallback.to.length === 0 && fallback.ack!.who.kind !== "none") {
      throw new UsageError("--promote needs --to (or --ack none)");
    }
    const p = await b.promote(fallback);
    p.onCommit((r) => console.log(`epoch ${r.epoch} committed`));
  }
  onSignal(async () => {
    await b.close();
    await server?.close();
  });
});
