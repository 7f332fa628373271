/**
 * `deno task demo`: the whole system on loopback with embedded defaults. A
 * primary with a synthetic multi-image workload → one relay → three backups,
 * one over TCP, one over QUIC, one over WebSocket; 50 epochs with a line
 * each; then every backup's store is checked against the primary's last
 * committed checkpoint.
 * @module
 */

import { formatBytes, intOption, parseArgs, runMain } from "../src/_cli.ts";
import { parseLevelChoice } from "../src/level.ts";
import { bytesEqual } from "../src/replay.ts";
import { openSource } from "../src/open_source.ts";
import { Primary } from "../src/primary.ts";
import { Relay } from "../src/relay.ts";
import { Backup } from "../src/backup.ts";
import { AckLevel } from "../src/protocol.ts";
import { makeDevCerts } from "../src/_dev_certs.ts";

const USAGE =
  `usage: deno task demo [--epochs N] [--level fast|max|auto] [--synthetic SPEC] [--interval MS]

Starts on loopback, in one process with real sockets: a primary replicating a
synthetic workload (default: 3 images of 16 MiB, 2% of pages touched per
epoch) → a relay → three backups (tcp:, quic:, ws:), each with its own store
in a temporary directory. Commits N epochs (default 50; policy all/applied at
the primary and the relay), printing one line per epoch, then checks that every
backup's stored images equal the primary's last committed checkpoint.

  --synthetic SPEC  key=value pairs: images=3,size=16M,seed=1,dirty=0.02
  --interval MS     pause between checkpoints (default 0: back to back)`;

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, [
    "epochs",
    "level",
    "synthetic",
    "interval",
  ], ["help"]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  const epochs = intOption(
    args.options.get("epochs")?.at(-1) ?? "50",
    "epochs",
    1,
  );
  const interval = intOption(
    args.options.get("interval")?.at(-1) ?? "0",
    "interval",
  );
  const level = parseLevelChoice(args.options.get("level")?.at(-1) ?? "fast");
  const spec = args.options.get("synthetic")?.at(-1) ??
    "images=3,size=16M,seed=1,dirty=0.02";
  const quiet = () => {};
  const certs = await makeDevCerts();
  const tls = { cert: certs.cert, key: certs.key, caCerts: [certs.caCert] };
  const dir = await Deno.makeTempDir({ prefix: "patchwire-demo-" });
  const listens = [
    "tcp://127.0.0.1:0",
    "quic://127.0.0.1:0",
    "ws://127.0.0.1:0/patchwire",
  ];
  const backups: Backup[] = [];
  for (let i = 0; i < listens.length; i++) {
    backups.push(
      await Backup.open({
        listen: listens[i],
        store: `${dir}/backup${i + 1}`,
        transport: { tls },
        note: quiet,
      }),
    );
  }
  const policy = { who: { kind: "all" as const }, level: AckLevel.applied };
  const relay = await Relay.open({
    listen: "tcp://127.0.0.1:0",
    to: backups.map((b) => b.url),
    ack: policy,
    transport: { tls },
    link: { transport: { tls } },
    note: quiet,
  });
  const source = await openSource(`synthetic:${spec}`);
  const primary = new Primary(source, {
    to: [relay.url],
    ack: policy,
    level,
    intervalMs: null,
    link: { transport: { tls } },
    note: (l) => console.error(`  primary: ${l}`),
  });
  primary.start();
  console.log(
    `patchwire demo: ${source.images.length} images × ${
      formatBytes(source.images[0].size)
    } (${source.name}), level ${level}
  primary → relay ${relay.url} → backups ${backups.map((b) => b.url).join(", ")}
  ack policy all/applied at the primary and the relay; stores under ${dir}`,
  );
  let wire = 0, dirty = 0;
  const commits: number[] = [];
  const started = performance.now();
  for (let e = 1; e <= epochs; e++) {
    const r = await primary.checkpoint();
    if (e > 1) {
      wire += r.wireBytes;
      dirty += r.dirtyBytes;
      commits.push(r.commitMs);
    }
    const lags = relay.links.map((l) => primary.epoch - l.acks.epochs[1]);
    console.log(
      `epoch ${String(r.epoch).padStart(3)}  dirty ${
        formatBytes(r.dirtyBytes).padStart(9)
      }  wire ${formatBytes(r.wireBytes).padStart(9)}  ${
        (r.dirtyBytes / Math.max(1, r.wireBytes)).toFixed(1).padStart(6)
      }x less  commit ${
        r.commitMs.toFixed(1).padStart(6)
      } ms  lag tcp/quic/ws ${lags.join("/")}${
        e === 1 ? "  (initial sync)" : ""
      }`,
    );
    if (interval) await new Promise((res) => setTimeout(res, interval));
  }
  const seconds = (performance.now() - started) / 1000;

  // Every backup's store must equal the primary's last committed checkpoint.
  const committed = primary.committed;
  let ok = true;
  for (const [bi, b] of backups.entries()) {
    const name = ["tcp", "quic", "ws"][bi];
    // Under applied acks a backup writes its store in batches: write the rest now.
    b.flush();
    if (b.epoch !== committed || b.store.state?.epoch !== committed) {
      console.log(
        `backup ${name}: at epoch ${b.epoch} (stored ${b.store.state?.epoch}), expected ${committed}`,
      );
      ok = false;
      continue;
    }
    for (const image of primary.encoder.images) {
      const stored = await Deno.readFile(`${b.store.dir}/${image.id}.img`);
      const same = bytesEqual(stored, image.committed.subarray(0, image.size));
      if (!same) {
        console.log(`backup ${name}: ${image.id}.img DIFFERS`);
        ok = false;
      }
    }
  }
  commits.sort((a, b) => a - b);
  const q = (f: number) =>
    commits.length
      ? commits[Math.min(commits.length - 1, Math.ceil(f * commits.length) - 1)]
      : 0;
  console.log(
    `\nsummary: ${epochs} epochs in ${
      seconds.toFixed(1)
    } s; epochs 2-${epochs} sent ${formatBytes(wire)} for ${
      formatBytes(dirty)
    } of dirty pages (${
      (dirty / Math.max(1, wire)).toFixed(1)
    }x less); commit latency after the initial sync: p50 ${
      q(0.5).toFixed(1)
    } ms, p99 ${q(0.99).toFixed(1)} ms\nverification: ${
      ok
        ? `all 3 backups' stored images equal the primary's committed epoch ${committed}`
        : "FAILED"
    }`,
  );
  await primary.stop();
  await relay.close();
  for (const b of backups) await b.close();
  await Deno.remove(dir, { recursive: true });
  if (!ok) Deno.exit(1);
});
