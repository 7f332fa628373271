/**
 * Checkpoint rate and commit latency per transport, with 1, 3 and 8 backups
 * behind a relay, each backup and the relay a real `deno task` process:
 * a 256 MiB synthetic image with about 2 MiB dirty per epoch, checkpoints
 * every 25 ms (40/s), policy all/applied. Also: the same with the backup
 * directly behind the primary (what the relay adds) and the primary's upload
 * per epoch (it must not grow with the backups).
 *
 * -A: Deno 2.9 treats /proc/PID/stat (the CPU figures) as privileged.
 *
 *     deno run -A --unstable-net bench/replication.ts [--size 256M] [--dirty 2M]
 *       [--epochs 200] [--interval 25] [--backups 1,3,8] [--transports tcp,quic,ws]
 * @module
 */

import { parseArgs } from "../src/_cli.ts";
import { parseSize } from "../src/synthetic.ts";
import { Primary } from "../src/primary.ts";
import { openSource } from "../src/open_source.ts";
import { AckLevel } from "../src/protocol.ts";
import { makeDevCerts } from "../src/_dev_certs.ts";
import { PeerAuth } from "../src/peer_auth.ts";
import { rolePermissions, type RoleTool } from "../tools/_role_permissions.ts";
import { SampleWindow } from "../src/_window.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const args = parseArgs(Deno.args, [
  "size",
  "dirty",
  "epochs",
  "interval",
  "backups",
  "transports",
], []);
const opt = (k: string, d: string) => args.options.get(k)?.at(-1) ?? d;
const size = parseSize(opt("size", "256M"), "size");
const dirtyBytes = parseSize(opt("dirty", "2M"), "dirty");
const epochs = Number(opt("epochs", "200"));
const interval = Number(opt("interval", "25"));
const backupCounts = opt("backups", "1,3,8").split(",").map(Number);
const transports = opt("transports", "tcp,quic,ws").split(",");
/** Epochs at the offered rate before the measured run. */
const WARMUP_EPOCHS = Math.ceil(1000 / interval);

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

interface Row {
  transport: string;
  path: string;
  backups: number;
  rate: number;
  p50: number;
  p99: number;
  uploadPerEpoch: number;
  dirtyPerEpoch: number;
  /** CPU ms per epoch of one backup process, and of the relay. */
  backupCpu: number;
  relayCpu: number;
}

async function run(
  transport: string,
  backups: number,
  viaRelay: boolean,
): Promise<Row> {
  const roles: Role[] = [];
  try {
    for (let i = 0; i < backups; i++) {
      roles.push(
        new Role("backup", [
          "--listen",
          listenUrl(transport),
          "--store",
          `${tmp}/${transport}-${backups}-${viaRelay}-${i}`,
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
    const fraction = dirtyBytes / size;
    // ~1.1 pages written per touch in the synthetic workload.
    const source = await openSource(
      `synthetic:images=1,size=${size},seed=5,dirty=${fraction / 1.1}`,
    );
    const primary = new Primary(source, {
      to,
      ack: { who: { kind: "all" }, level: AckLevel.applied },
      intervalMs: null,
      link: { transport: { tls } },
      // The relay and backups are given --ca, so they require a client
      // certificate from their upstream.
      auth,
      note: () => {},
    });
    primary.start();
    // Warm-up: the initial full sync and a second of epochs at the offered
    // rate (compiled code, mapped stores, grown journals: the steady state a
    // long-running replica is in), then flush the page cache so the stores'
    // initial writeback does not land in the run.
    for (let i = 0; i < WARMUP_EPOCHS; i++) {
      const t = performance.now();
      await primary.checkpoint();
      const wait = interval - (performance.now() - t);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    await new Deno.Command("sync").output().catch(() => {});
    const lat = new SampleWindow(epochs);
    const worst: [number, number, number][] = [];
    const upload0 = primary.links.reduce((n, l) => n + l.bytesSent, 0);
    const cpu0 = roles.map((r) => r.cpuMs());
    let dirty = 0;
    const pending: Promise<void>[] = [];
    const t0 = performance.now();
    for (let e = 0; e < epochs; e++) {
      const due = t0 + e * interval;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      pending.push(
        primary.checkpoint().then((r) => {
          lat.add(r.commitMs);
          worst.push([r.commitMs, r.epoch, r.encodeMs + r.pauseMs]);
          dirty += r.dirtyBytes;
        }),
      );
    }
    await Promise.all(pending);
    if (Deno.env.get("BENCH_VERBOSE")) {
      worst.sort((a, b) => b[0] - a[0]);
      console.error(
        `worst commits (ms, epoch, capture+encode ms): ${
          worst.slice(0, 6).map((w) => w.map((x) => x.toFixed(0)).join("/"))
            .join(" ")
        }`,
      );
    }
    const seconds = (performance.now() - t0) / 1000;
    const upload = primary.links.reduce((n, l) => n + l.bytesSent, 0) -
      upload0;
    const cpu = roles.map((r, i) => (r.cpuMs() - cpu0[i]) / epochs);
    const backupCpu = cpu.slice(0, backups).reduce((a, b) => a + b, 0) /
      backups;
    const relayCpu = viaRelay ? cpu[backups] : NaN;
    await primary.stop();
    return {
      transport,
      path: viaRelay ? "relay" : "direct",
      backups,
      rate: epochs / seconds,
      p50: lat.quantile(0.5),
      p99: lat.quantile(0.99),
      uploadPerEpoch: upload / epochs,
      dirtyPerEpoch: dirty / epochs,
      backupCpu,
      relayCpu,
    };
  } finally {
    await Promise.all(roles.map((r) => r.stop()));
  }
}

const rows: Row[] = [];
for (const t of transports) {
  rows.push(await run(t, 1, false));
  console.error(JSON.stringify(rows.at(-1)));
  for (const n of backupCounts) {
    rows.push(await run(t, n, true));
    console.error(JSON.stringify(rows.at(-1)));
  }
}
await Deno.remove(tmp, { recursive: true });

const kib = (n: number) => (n / 1024).toFixed(1);
console.log(
  `\n## Replication: ${opt("size", "256M")} image, ~${
    opt("dirty", "2M")
  } dirty/epoch, a checkpoint every ${interval} ms (${
    (1000 / interval).toFixed(0)
  }/s offered), ${epochs} epochs, policy all/applied\n`,
);
console.log(
  "| transport | path | backups | checkpoints/s | commit p50 ms | commit p99 ms | primary upload KiB/epoch | dirty KiB/epoch | CPU ms/epoch per backup | relay CPU ms/epoch |",
);
console.log("|---|---|---|---|---|---|---|---|---|---|");
for (const r of rows) {
  console.log(
    `| ${r.transport} | ${r.path} | ${r.backups} | ${r.rate.toFixed(1)} | ${
      r.p50.toFixed(1)
    } | ${r.p99.toFixed(1)} | ${kib(r.uploadPerEpoch)} | ${
      kib(r.dirtyPerEpoch)
    } | ${r.backupCpu.toFixed(1)} | ${
      Number.isNaN(r.relayCpu) ? "-" : r.relayCpu.toFixed(1)
    } |`,
  );
}
for (const t of transports) {
  const direct = rows.find((r) => r.transport === t && r.path === "direct");
  const relay1 = rows.find((r) =>
    r.transport === t && r.path === "relay" && r.backups === 1
  );
  if (direct && relay1) {
    console.log(
      `\n${t}: the relay adds ${
        (relay1.p99 - direct.p99).toFixed(1)
      } ms at p99 (${(relay1.p50 - direct.p50).toFixed(1)} ms at p50)`,
    );
  }
}
