/**
 * Checkpoint rate and commit latency of a primary replicating to backups
 * over loopback, each backup and the relay a real `deno task` process, the
 * primary in this process running its own interval loop (`intervalMs`), as
 * `deno task primary --interval MS` does. Two sources:
 *
 * - **synthetic source with dirty-page hints**: a 256 MiB synthetic image
 *   with about 2 MiB dirty per epoch, whose dirty log hands the primary the
 *   pages it wrote (no real source here has one), checkpoints every 25 ms
 *   (40/s), per transport with 1, 3 and 8 backups behind a relay and with
 *   one backup directly behind the primary (what the relay adds), and the
 *   primary's upload per epoch (it must not grow with the backups);
 * - **a real source**: a 256 MiB QEMU guest (`tools/guest.ts`, TCG) through
 *   `qemu:` (RAM and device state in one stop window; no dirty log, so every
 *   capture copies the whole RAM and the encoder scans all of it), every
 *   200, 100 and 25 ms, over TCP, to 1 backup direct and 3 behind a relay.
 *
 * Latency clocks start when a checkpoint was due (its interval tick, see
 * `CheckpointResult` in src/primary.ts), so the wait for the previous
 * checkpoint and for room in the in-flight window is included; that wait is
 * also printed alone (capture wait: due → capture start).
 *
 * -A: Deno 2.9 treats /proc/PID/stat (the CPU figures) as privileged.
 *
 *     deno run -A --unstable-net bench/replication.ts [--size 256M] [--dirty 2M]
 *       [--epochs 200] [--interval 25] [--backups 1,3,8] [--transports tcp,quic,ws]
 *       [--qemu-mem 256] [--qemu-intervals 200,100,25|none] [--qemu-backups 1,3]
 *       [--qemu-epochs 100]
 * @module
 */

import { intOption, parseArgs, UsageError } from "../src/_cli.ts";
import { parseSize } from "../src/synthetic.ts";
import { type CheckpointResult, Primary } from "../src/primary.ts";
import { openSource } from "../src/open_source.ts";
import { AckLevel } from "../src/protocol.ts";
import { makeDevCerts } from "../src/_dev_certs.ts";
import { PeerAuth } from "../src/peer_auth.ts";
import { rolePermissions, type RoleTool } from "../tools/_role_permissions.ts";
import { SampleWindow } from "../src/_window.ts";
import { type Guest, startGuest } from "../tools/guest.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const args = parseArgs(Deno.args, [
  "size",
  "dirty",
  "epochs",
  "interval",
  "backups",
  "transports",
  "qemu-mem",
  "qemu-intervals",
  "qemu-backups",
  "qemu-epochs",
], []);
const opt = (k: string, d: string) => args.options.get(k)?.at(-1) ?? d;
const list = (k: string, d: string) =>
  opt(k, d) === "none"
    ? []
    : opt(k, d).split(",").map((n) => intOption(n, k, 1));
const size = parseSize(opt("size", "256M"), "size");
const dirtyBytes = parseSize(opt("dirty", "2M"), "dirty");
const epochs = intOption(opt("epochs", "200"), "epochs", 2);
const interval = intOption(opt("interval", "25"), "interval", 1);
const backupCounts = list("backups", "1,3,8");
const transports = opt("transports", "tcp,quic,ws").split(",");
for (const t of transports) {
  if (!["tcp", "quic", "ws"].includes(t)) {
    throw new UsageError(`--transports: unknown "${t}", expected tcp,quic,ws`);
  }
}
const qemuMiB = intOption(opt("qemu-mem", "256"), "qemu-mem", 96);
const qemuIntervals = list("qemu-intervals", "200,100,25");
const qemuBackups = list("qemu-backups", "1,3");
const qemuEpochs = intOption(opt("qemu-epochs", "100"), "qemu-epochs", 2);

const certs = await makeDevCerts();
const tmp = await Deno.makeTempDir({ prefix: "patchwire-bench-" });
await Deno.writeTextFile(`${tmp}/ca.pem`, certs.caCert);
await Deno.writeTextFile(`${tmp}/cert.pem`, certs.cert);
await Deno.writeTextFile(`${tmp}/key.pem`, certs.key);
const TLS_ARGS = [
  "--cert",
  `${tmp}/cert.pem`,
  "--key",
  `${tmp}/key.pem`,
  "--ca",
  `${tmp}/ca.pem`,
];
const tls = {
  cert: certs.cert,
  key: certs.key,
  caCerts: [certs.caCert],
};
const auth = await PeerAuth.create({
  cert: certs.cert,
  key: certs.key,
  ca: [certs.caCert],
});

/** A role as a subprocess; resolves its listening URL from its log. */
class Role {
  child: Deno.ChildProcess;
  url: Promise<string>;
  constructor(tool: string, argv: string[]) {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...rolePermissions(tool as RoleTool),
        `${ROOT}tools/${tool}.ts`,
        ...argv,
        ...TLS_ARGS,
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.child = child;
    this.url = (async () => {
      let text = "";
      const reader = child.stderr.pipeThrough(new TextDecoderStream())
        .getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`${tool} exited early:\n${text}`);
        text += value;
        const m = text.match(/listening on ([a-z]+:\/\/[^\s,]+)/);
        if (m) {
          // Keep draining so the child never blocks on a full pipe.
          (async () => {
            while (!(await reader.read()).done) { /* drain */ }
          })();
          return m[1];
        }
      }
    })();
  }
  /** CPU time (user + system) the process has used, ms (Linux /proc). */
  cpuMs(): number {
    try {
      const stat = Deno.readTextFileSync(`/proc/${this.child.pid}/stat`);
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return (Number(f[11]) + Number(f[12])) * 10; // clock ticks of 10 ms
    } catch {
      return NaN;
    }
  }

  async stop(): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch { /* gone */ }
    await this.child.status;
  }
}

function listenUrl(t: string): string {
  return t === "ws" ? "ws://127.0.0.1:0/patchwire" : `${t}://127.0.0.1:0`;
}

/** p50 and p99 of one figure over the measured epochs. */
interface Quantiles {
  p50: number;
  p99: number;
}

interface Row {
  source: "synthetic" | "qemu";
  transport: string;
  path: string;
  backups: number;
  /** Requested checkpoint interval, ms. */
  interval: number;
  /** Committed checkpoints per second over the measured epochs. */
  rate: number;
  /** Due → commit. */
  commit: Quantiles;
  /** Due → capture start. */
  captureWait: Quantiles;
  /** The source's pause per capture. */
  pause: Quantiles;
  /** Encode (scan, match, compress, frame) per epoch. */
  encode: Quantiles;
  /** Bytes the primary sent on all its links, per epoch. */
  uploadPerEpoch: number;
  /** Bytes of the encoded epoch (its frames), per epoch. */
  wirePerEpoch: number;
  /** 4096 × pages changed, per epoch. */
  dirtyPerEpoch: number;
  /** CPU ms per epoch of one backup process, and of the relay. */
  backupCpu: number;
  relayCpu: number;
}

/** Polls `done` every 5 ms; false if `ms` passed first. */
async function until(done: () => boolean, ms: number): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (!done()) {
    if (performance.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

async function run(
  source: Row["source"],
  spec: string,
  transport: string,
  backups: number,
  viaRelay: boolean,
  every: number,
  measured: number,
): Promise<Row> {
  const roles: Role[] = [];
  const name = `${source}-${transport}-${backups}-${viaRelay}-${every}`;
  try {
    for (let i = 0; i < backups; i++) {
      roles.push(
        new Role("backup", [
          "--listen",
          listenUrl(transport),
          "--store",
          `${tmp}/${name}-${i}`,
        ]),
      );
    }
    const backupUrls = await Promise.all(roles.map((r) => r.url));
    let to = backupUrls;
    if (viaRelay) {
      const relay = new Role("relay", [
        "--listen",
        listenUrl(transport),
        "--to",
        backupUrls.join(","),
        "--ack",
        "all",
      ]);
      roles.push(relay);
      to = [await relay.url];
    }
    const primary = new Primary(await openSource(spec), {
      to,
      ack: { who: { kind: "all" }, level: AckLevel.applied },
      // The primary's own loop: ticks every `every` ms, a late checkpoint
      // taken at once and due at the tick it missed (src/primary.ts).
      intervalMs: every,
      link: { transport: { tls } },
      // The relay and backups are given --ca, so they require a client
      // certificate from their upstream.
      auth,
      note: () => {},
    });
    const commitTimes = new Map<number, number>();
    let from = Infinity; // the last epoch before the measured ones
    const results: CheckpointResult[] = [];
    let measuredDone!: () => void;
    const finished = new Promise<void>((r) => measuredDone = r);
    primary.onCommit((r) => {
      commitTimes.set(r.epoch, performance.now());
      if (r.epoch > from && results.length < measured) {
        results.push(r);
        if (results.length === measured) measuredDone();
      }
    });
    try {
      primary.start();
      // Warm-up: the initial full epoch, then at least a second at the
      // offered rate until the backlog it left is committed (compiled code,
      // mapped stores, grown journals: the steady state a long-running
      // replica is in), then flush the page cache so the stores' initial
      // writeback does not land in the measured epochs.
      if (!await until(() => primary.committed >= 1, 180_000)) {
        throw new Error(`${name}: the initial epoch did not commit in 180 s`);
      }
      await new Promise((r) => setTimeout(r, 1000));
      await until(() => primary.epoch - primary.committed <= 2, 10_000);
      await new Deno.Command("sync").output().catch(() => {});
      const upload0 = primary.links.reduce((n, l) => n + l.bytesSent, 0);
      const cpu0 = roles.map((r) => r.cpuMs());
      // Measured: the next `measured` epochs captured from here on.
      from = primary.epoch;
      const timeout = 60_000 + measured * every * 20;
      const ok = await Promise.race([
        finished.then(() => true),
        new Promise<false>((r) => setTimeout(() => r(false), timeout)),
      ]);
      if (!ok) {
        throw new Error(
          `${name}: ${results.length} of ${measured} epochs committed in ${timeout} ms`,
        );
      }
      const upload = primary.links.reduce((n, l) => n + l.bytesSent, 0) -
        upload0;
      const cpu = roles.map((r, i) => (r.cpuMs() - cpu0[i]) / measured);
      const backupCpu = cpu.slice(0, backups).reduce((a, b) => a + b, 0) /
        backups;
      // Committed per second: `measured` commits between the commit of the
      // epoch before them and the commit of the last.
      const t0 = commitTimes.get(from) ?? NaN;
      const t1 = commitTimes.get(from + measured)!;
      const q = (f: (r: CheckpointResult) => number): Quantiles => {
        const w = new SampleWindow(measured);
        for (const r of results) w.add(f(r));
        return { p50: w.quantile(0.5), p99: w.quantile(0.99) };
      };
      if (Deno.env.get("BENCH_VERBOSE")) {
        const worst = [...results].sort((a, b) => b.commitMs - a.commitMs);
        console.error(
          `worst commits (ms from due, epoch, capture wait, pause+encode ms): ${
            worst.slice(0, 6).map((r) =>
              [r.commitMs, r.epoch, r.captureWaitMs, r.pauseMs + r.encodeMs]
                .map((x) => x.toFixed(0)).join("/")
            ).join(" ")
          }`,
        );
      }
      return {
        source,
        transport,
        path: viaRelay ? "relay" : "direct",
        backups,
        interval: every,
        rate: measured / ((t1 - t0) / 1000),
        commit: q((r) => r.commitMs),
        captureWait: q((r) => r.captureWaitMs),
        pause: q((r) => r.pauseMs),
        encode: q((r) => r.encodeMs),
        uploadPerEpoch: upload / measured,
        wirePerEpoch: results.reduce((n, r) => n + r.wireBytes, 0) / measured,
        dirtyPerEpoch: results.reduce((n, r) => n + r.dirtyBytes, 0) /
          measured,
        backupCpu,
        relayCpu: viaRelay ? cpu[backups] : NaN,
      };
    } finally {
      await primary.stop();
    }
  } finally {
    await Promise.all(roles.map((r) => r.stop()));
  }
}

const rows: Row[] = [];
const show = (r: Row) =>
  console.error(
    `${r.source} ${r.transport} ${r.path} ${r.backups} every ${r.interval} ms: ${
      r.rate.toFixed(1)
    }/s, commit p50/p99 ${r.commit.p50.toFixed(1)}/${
      r.commit.p99.toFixed(1)
    } ms, capture wait ${r.captureWait.p50.toFixed(1)}/${
      r.captureWait.p99.toFixed(1)
    } ms`,
  );
let guest: Guest | null = null;
try {
  // ~1.1 pages written per touch in the synthetic workload.
  const synthetic = `synthetic:images=1,size=${size},seed=5,dirty=${
    dirtyBytes / size / 1.1
  }`;
  for (const t of transports) {
    rows.push(await run("synthetic", synthetic, t, 1, false, interval, epochs));
    show(rows.at(-1)!);
    for (const n of backupCounts) {
      rows.push(
        await run("synthetic", synthetic, t, n, true, interval, epochs),
      );
      show(rows.at(-1)!);
    }
  }
  if (qemuIntervals.length && qemuBackups.length) {
    try {
      guest = await startGuest({ dir: `${tmp}/vm`, memMiB: qemuMiB });
    } catch (e) {
      throw new Error(
        `the qemu: rows need a guest (QEMU, a kernel in /boot, busybox-static, cpio; --qemu-intervals none skips them): ${
          (e as Error).message
        }`,
      );
    }
    for (const every of qemuIntervals) {
      for (const n of qemuBackups) {
        rows.push(
          await run("qemu", guest.spec, "tcp", n, n > 1, every, qemuEpochs),
        );
        show(rows.at(-1)!);
      }
    }
  }
} finally {
  await guest?.stop();
  await Deno.remove(tmp, { recursive: true });
}

const kib = (n: number) => (n / 1024).toFixed(1);
const ms = (n: number) => n.toFixed(1);
const pair = (q: Quantiles) => `${ms(q.p50)} / ${ms(q.p99)}`;
const cpu = (r: Row) =>
  `${r.backupCpu.toFixed(1)} | ${
    Number.isNaN(r.relayCpu) ? "-" : r.relayCpu.toFixed(1)
  }`;

const synth = rows.filter((r) => r.source === "synthetic");
if (synth.length) {
  console.log(
    `\n## Replication, synthetic source with dirty-page hints: ${
      opt("size", "256M")
    } image, ~${
      opt("dirty", "2M")
    } dirty/epoch, a checkpoint every ${interval} ms (${
      (1000 / interval).toFixed(0)
    }/s offered), ${epochs} epochs, policy all/applied\n`,
  );
  console.log(
    "| transport | path | backups | checkpoints/s | commit p50 ms (from due) | commit p99 ms (from due) | capture wait p50 / p99 ms | primary upload KiB/epoch | dirty KiB/epoch | CPU ms/epoch per backup | relay CPU ms/epoch |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|---|");
  for (const r of synth) {
    console.log(
      `| ${r.transport} | ${r.path} | ${r.backups} | ${r.rate.toFixed(1)} | ${
        ms(r.commit.p50)
      } | ${ms(r.commit.p99)} | ${pair(r.captureWait)} | ${
        kib(r.uploadPerEpoch)
      } | ${kib(r.dirtyPerEpoch)} | ${cpu(r)} |`,
    );
  }
  for (const t of transports) {
    const direct = synth.find((r) => r.transport === t && r.path === "direct");
    const relay1 = synth.find((r) =>
      r.transport === t && r.path === "relay" && r.backups === 1
    );
    if (direct && relay1) {
      console.log(
        `\n${t}: the relay adds ${
          (relay1.commit.p99 - direct.commit.p99).toFixed(1)
        } ms at p99 (${
          (relay1.commit.p50 - direct.commit.p50).toFixed(1)
        } ms at p50)`,
      );
    }
  }
}

const qemu = rows.filter((r) => r.source === "qemu");
if (qemu.length) {
  console.log(
    `\n## Replication, real source: ${qemuMiB} MiB qemu: guest (TCG; RAM and device state), full-scan capture (no dirty-page hints), over TCP on loopback, ${qemuEpochs} epochs per row, policy all/applied\n`,
  );
  console.log(
    "| interval ms (offered/s) | path | backups | checkpoints/s | commit p50 / p99 ms (from due) | capture wait p50 / p99 ms | pause p50 / p99 ms | encode p50 / p99 ms | epoch KiB (encoded) | primary upload KiB/epoch | changed KiB/epoch | CPU ms/epoch per backup | relay CPU ms/epoch |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const r of qemu) {
    console.log(
      `| ${r.interval} (${
        (1000 / r.interval).toFixed(0)
      }) | ${r.path} | ${r.backups} | ${r.rate.toFixed(1)} | ${
        pair(r.commit)
      } | ${pair(r.captureWait)} | ${pair(r.pause)} | ${pair(r.encode)} | ${
        kib(r.wirePerEpoch)
      } | ${kib(r.uploadPerEpoch)} | ${kib(r.dirtyPerEpoch)} | ${cpu(r)} |`,
    );
  }
}
console.log(`\n${JSON.stringify(rows)}`);
