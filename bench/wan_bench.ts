/**
 * `deno task wan-bench`: the transports (tcp, tls, quic, ws) compared over
 * emulated WAN links (`tools/wan.ts`): a primary and a backup, each a real
 * process in its own network namespace, joined by one link per profile —
 * LAN (no impairment), 50 ms / 0%, 100 ms / 1% and 200 ms / 5% (RTT / loss
 * in each direction). A synthetic image (default 8 MiB, ~2% of pages
 * touched per epoch) is checkpointed every `--interval` ms (default 50:
 * 20/s offered), policy all/applied.
 *
 * Per transport and profile, over a window of `--seconds` after the initial
 * sync and a warm-up (loss is switched on after the initial sync, which
 * would otherwise take minutes at 5%): committed checkpoints per second,
 * commit latency p50/p99 (from the moment each checkpoint was due, its
 * interval tick, to its commit, from the primary's log), capture wait
 * p50/p99 (due to capture start: the wait for the previous checkpoint and
 * for room in the primary's in-flight window, from its /status), and
 * bytes per second on the wire (both directions of the primary's link
 * device: headers, acks, retransmissions and TLS/QUIC overhead included)
 * beside the payload the primary sent. Prints a Markdown table and writes
 * an SVG chart (default `bench/wan.svg`).
 *
 * Needs root, nftables and ethtool (see tools/wan.ts).
 *
 *     deno run -A --unstable-net bench/wan_bench.ts [--transports tcp,tls,quic,ws]
 *       [--profiles lan,50ms,100ms-1%,200ms-5%] [--seconds 10] [--interval 50]
 *       [--source images=1,size=8M,seed=1] [--svg bench/wan.svg] [--json]
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import {
  formatProfile,
  type LinkProfile,
  parseProfile,
  Wan,
  wanUnavailable,
} from "../tools/wan.ts";
import {
  Cluster,
  makeCredentials,
  type Scheme,
  waitUntil,
  wanAddresses,
} from "../tools/_wan_roles.ts";

const USAGE =
  `usage: deno task wan-bench [--transports tcp,tls,quic,ws] [--profiles lan,50ms,100ms-1%,200ms-5%]
         [--seconds N] [--interval MS] [--source SPEC] [--svg FILE] [--json]

Compares the transports over emulated WAN links (network namespaces; needs
root, nftables and ethtool): checkpoint rate, commit latency p50/p99 (from
when each checkpoint was due), capture wait p50/p99 (due to capture start)
and bytes per second on the wire, per transport and profile. Prints a
Markdown table and writes an SVG chart.

  --transports LIST  default tcp,tls,quic,ws
  --profiles LIST    names, comma-separated (lan, 50ms, 100ms-1%, 200ms-5%:
                     the default), or rtt=MS,jitter=MS,loss=PCT,rate=RATE
                     profiles separated by ";"
  --seconds N        measured window per run (default 10)
  --interval MS      checkpoint every MS ms (default 50)
  --source SPEC      synthetic source (default images=1,size=8M,seed=1)
  --svg FILE         chart (default bench/wan.svg)
  --json             also print the rows as JSON`;

const TRANSPORTS: Scheme[] = ["tcp", "tls", "quic", "ws"];
const DEFAULT_PROFILES = ["lan", "50ms", "100ms-1%", "200ms-5%"];
/** Committed epochs before the window: the initial sync and a warm-up. */
const WARMUP_EPOCHS = 40;
/** Time for the transports to adapt to the loss switched on before the window. */
const SETTLE_MS = 1500;

/** One transport under one profile. */
export interface WanRow {
  profile: string;
  transport: Scheme;
  /** Committed checkpoints per second. */
  rate: number;
  /** Commit latency, due → commit, ms. */
  p50: number;
  p99: number;
  /** Capture wait, due → capture start, ms (NaN: the primary did not report it). */
  waitP50: number;
  waitP99: number;
  /** Committed epochs in the window whose capture wait was not seen in /status. */
  waitsMissed: number;
  /** Bytes per second on the primary's link, both directions. */
  wire: number;
  /** Bytes per second of frames the primary sent. */
  payload: number;
  /** Datagrams the emulator's forwarder dropped in the window (a full queue). */
  queueDrops: number;
  /** Captures that waited for commits (the primary's 16 epochs in flight) in the window. */
  windowWaits: number;
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/** Bytes received and sent on the link device of the primary. */
async function linkBytes(wan: Wan): Promise<number> {
  const out = await wan.command("primary", "ip", [
    "-s",
    "-j",
    "link",
    "show",
    "dev",
    "wk1",
  ], { stdout: "piped", stderr: "piped" }).output();
  const [dev] = JSON.parse(new TextDecoder().decode(out.stdout));
  return dev.stats64.rx.bytes + dev.stats64.tx.bytes;
}

async function run(
  wan: Wan,
  dir: string,
  credentials: Awaited<ReturnType<typeof makeCredentials>>,
  transport: Scheme,
  name: string,
  profile: LinkProfile,
  options: { seconds: number; interval: number; source: string },
): Promise<WanRow> {
  const store = await Deno.makeTempDir({ dir, prefix: `${transport}-` });
  const c = new Cluster(wan, store, credentials, transport);
  try {
    c.backup("backup");
    const primary = c.primary("primary", "backup", options.source, [
      "--interval",
      String(options.interval),
    ]);
    await c.ready();
    await waitUntil("the initial sync and warm-up", async () => {
      const s = await c.status("primary");
      return s.committedEpoch >= WARMUP_EPOCHS ||
        `committed ${s.committedEpoch}`;
    }, 180_000);
    if (profile.lossPct) {
      await wan.setLink("primary", "backup", { lossPct: profile.lossPct });
      await new Promise((r) => setTimeout(r, SETTLE_MS));
    }
    const commitLine = /^epoch (\d+) committed: .* commit ([\d.]+) ms/;
    const from = primary.lines.length;
    // Capture waits per epoch, from the primary's /status (`recent`: its last
    // 64 committed epochs), polled often enough that none is missed.
    const waits = new Map<number, number>();
    const seen = (
      s: { recent?: { epoch: number; captureWaitMs: number }[] },
    ) => {
      for (const r of s.recent ?? []) waits.set(r.epoch, r.captureWaitMs);
    };
    const pollMs = Math.min(1000, 24 * options.interval);
    const a = await c.status("primary");
    const wire0 = await linkBytes(wan);
    const drops0 = await wan.queueDrops("primary", "backup");
    const t0 = performance.now();
    const end = t0 + options.seconds * 1000;
    for (let now = t0; now < end; now = performance.now()) {
      await new Promise((r) => setTimeout(r, Math.min(pollMs, end - now)));
      seen(await c.status("primary"));
    }
    const b = await c.status("primary");
    seen(b);
    const wire1 = await linkBytes(wan);
    const drops1 = await wan.queueDrops("primary", "backup");
    const secs = (performance.now() - t0) / 1000;
    const latencies = primary.lines.slice(from).flatMap((l) => {
      const m = commitLine.exec(l);
      return m && Number(m[1]) > a.committedEpoch &&
          Number(m[1]) <= b.committedEpoch
        ? [Number(m[2])]
        : [];
    }).sort((x, y) => x - y);
    const captureWaits: number[] = [];
    let waitsMissed = 0;
    for (let e = a.committedEpoch + 1; e <= b.committedEpoch; e++) {
      const w = waits.get(e);
      if (w === undefined) waitsMissed++;
      else captureWaits.push(w);
    }
    captureWaits.sort((x, y) => x - y);
    return {
      profile: name,
      transport,
      rate: (b.committedEpoch - a.committedEpoch) / secs,
      p50: quantile(latencies, 0.5),
      p99: quantile(latencies, 0.99),
      waitP50: quantile(captureWaits, 0.5),
      waitP99: quantile(captureWaits, 0.99),
      waitsMissed,
      wire: (wire1 - wire0) / secs,
      payload: (b.peers[0].bytesSent - a.peers[0].bytesSent) / secs,
      queueDrops: drops1 - drops0,
      windowWaits: primary.lines.slice(from).filter((l) =>
        /waits: \d+ epochs not committed/.test(l)
      ).length,
    };
  } catch (e) {
    (e as Error).message += `\n${c.logs()}`;
    throw e;
  } finally {
    await Promise.all([...c.roles.values()].map((p) => p.stop()));
    if (profile.lossPct) {
      await wan.setLink("primary", "backup", { lossPct: 0 });
    }
  }
}

// ---------------------------------------------------------------- output

const fmt = (n: number, digits = 1) =>
  Number.isFinite(n) ? n.toFixed(digits) : "-";

/** The rows as a Markdown table. */
export function markdownTable(rows: WanRow[]): string {
  const out = [
    "| profile (RTT / loss) | transport | checkpoints/s | commit p50 ms (from due) | commit p99 ms (from due) | capture wait p50 ms | capture wait p99 ms | wire KiB/s | payload KiB/s |",
    "|---|---|---|---|---|---|---|---|---|",
  ];
  for (const r of rows) {
    out.push(
      `| ${r.profile} | ${r.transport} | ${fmt(r.rate)} | ${fmt(r.p50)} | ${
        fmt(r.p99)
      } | ${fmt(r.waitP50)} | ${fmt(r.waitP99)} | ${fmt(r.wire / 1024)} | ${
        fmt(r.payload / 1024)
      } |`,
    );
  }
  return out.join("\n");
}

const COLORS: Record<string, string> = {
  tcp: "#1f77b4",
  tls: "#ff7f0e",
  quic: "#2ca02c",
  ws: "#9467bd",
};

function esc(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(
    />/g,
    "&gt;",
  );
}

/** Round axis ticks for [0, max]: 4–6 steps of 1, 2 or 5 × 10^k. */
function linearTicks(max: number): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / 5;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw)!;
  const ticks = [];
  for (let t = 0; t <= max + step * 0.999; t += step) ticks.push(t);
  return ticks;
}

function tickLabel(t: number): string {
  if (t >= 1e6) return `${t / 1e6}M`;
  if (t >= 1e3) return `${t / 1e3}k`;
  return String(Number(t.toPrecision(3)));
}

interface Panel {
  title: string;
  axis: string;
  log: boolean;
  value: (r: WanRow) => number;
  /** A whisker above the bar (p99 over p50). */
  whisker?: (r: WanRow) => number;
}

/**
 * An SVG chart: one panel per figure (checkpoint rate, commit latency with
 * p50 bars and p99 whiskers on a log scale, wire throughput), grouped bars
 * per profile, one colour per transport.
 */
export function svgChart(rows: WanRow[], subtitle: string): string {
  const profiles = [...new Set(rows.map((r) => r.profile))];
  const transports = [...new Set(rows.map((r) => r.transport))];
  const panels: Panel[] = [
    {
      title: "Checkpoint rate",
      axis: "committed checkpoints / s",
      log: false,
      value: (r) => r.rate,
    },
    {
      title: "Commit latency from due (bar p50, whisker p99)",
      axis: "ms, log scale",
      log: true,
      value: (r) => r.p50,
      whisker: (r) => r.p99,
    },
    {
      title: "Bytes on the wire",
      axis: "KiB / s, both directions",
      log: false,
      value: (r) => r.wire / 1024,
    },
  ];
  // Three panels of width pw, each with room for its axis labels on the left.
  const pw = 340, ph = 290, top = 110, left0 = 75, stride = pw + 85;
  const W = left0 + 2 * stride + pw + 25, H = 470;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${
      W / 2
    }" y="30" text-anchor="middle" font-size="20" font-weight="bold">patchwire transports over emulated WAN links</text>`,
    `<text x="${
      W / 2
    }" y="52" text-anchor="middle" font-size="13" fill="#444">${
      esc(subtitle)
    }</text>`,
  ];
  // Legend.
  const legendW = transports.length * 90;
  transports.forEach((t, i) => {
    const x = W / 2 - legendW / 2 + i * 90;
    out.push(
      `<rect x="${x}" y="66" width="14" height="14" fill="${
        COLORS[t] ?? "#777"
      }"/>`,
      `<text x="${x + 20}" y="78" font-size="13">${esc(t)}</text>`,
    );
  });
  panels.forEach((panel, pi) => {
    const x0 = left0 + pi * stride;
    const values = rows.flatMap((r) =>
      [panel.value(r), panel.whisker?.(r) ?? NaN].filter(Number.isFinite)
    );
    const max = Math.max(...values, panel.log ? 10 : 1e-9);
    let ticks: number[];
    let y: (v: number) => number;
    if (panel.log) {
      const lo = Math.min(...values.filter((v) => v > 0), 1);
      const d0 = Math.floor(Math.log10(lo)), d1 = Math.ceil(Math.log10(max));
      ticks = [];
      for (let d = d0; d <= d1; d++) ticks.push(10 ** d);
      y = (v) =>
        top + ph -
        ph * (Math.log10(Math.max(v, 10 ** d0)) - d0) / Math.max(1, d1 - d0);
    } else {
      ticks = linearTicks(max);
      const tmax = ticks[ticks.length - 1];
      y = (v) => top + ph - ph * v / tmax;
    }
    out.push(
      `<text x="${x0 + pw / 2}" y="${
        top - 14
      }" text-anchor="middle" font-size="15" font-weight="bold">${
        esc(panel.title)
      }</text>`,
    );
    for (const t of ticks) {
      const ty = y(t);
      out.push(
        `<line x1="${x0}" x2="${
          x0 + pw
        }" y1="${ty}" y2="${ty}" stroke="#e3e3e3"/>`,
        `<text x="${x0 - 6}" y="${
          ty + 4
        }" text-anchor="end" font-size="11" fill="#333">${tickLabel(t)}</text>`,
      );
    }
    out.push(
      `<line x1="${x0}" x2="${x0}" y1="${top}" y2="${
        top + ph
      }" stroke="#333"/>`,
      `<line x1="${x0}" x2="${x0 + pw}" y1="${top + ph}" y2="${
        top + ph
      }" stroke="#333"/>`,
      `<text transform="translate(${x0 - 48} ${
        top + ph / 2
      }) rotate(-90)" text-anchor="middle" font-size="12" fill="#333">${
        esc(panel.axis)
      }</text>`,
    );
    const groupW = pw / profiles.length;
    const barW = Math.min(22, (groupW - 16) / transports.length);
    profiles.forEach((profile, gi) => {
      const gx = x0 + gi * groupW + (groupW - barW * transports.length) / 2;
      out.push(
        `<text x="${x0 + gi * groupW + groupW / 2}" y="${
          top + ph + 18
        }" text-anchor="middle" font-size="12">${esc(profile)}</text>`,
      );
      transports.forEach((t, ti) => {
        const r = rows.find((r) => r.profile === profile && r.transport === t);
        if (!r) return;
        const v = panel.value(r);
        const bx = gx + ti * barW;
        if (Number.isFinite(v)) {
          const by = y(v);
          out.push(
            `<rect x="${bx + 1}" y="${by}" width="${barW - 2}" height="${
              Math.max(0, top + ph - by)
            }" fill="${COLORS[t] ?? "#777"}"><title>${esc(t)} ${
              esc(profile)
            }: ${fmt(v)}</title></rect>`,
          );
        }
        const w = panel.whisker?.(r);
        if (w !== undefined && Number.isFinite(w) && Number.isFinite(v)) {
          const cx = bx + barW / 2, wy = y(w);
          out.push(
            `<line x1="${cx}" x2="${cx}" y1="${
              y(v)
            }" y2="${wy}" stroke="#222" stroke-width="1.5"/>`,
            `<line x1="${cx - barW / 3}" x2="${
              cx + barW / 3
            }" y1="${wy}" y2="${wy}" stroke="#222" stroke-width="1.5"/>`,
          );
        }
      });
    });
    out.push(
      `<text x="${x0 + pw / 2}" y="${
        top + ph + 40
      }" text-anchor="middle" font-size="12" fill="#333">profile (RTT / loss each way)</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** A profile's name for the table and chart: "LAN", "100 ms / 1%". */
function profileLabel(name: string, p: LinkProfile): string {
  if (!p.rttMs && !p.lossPct && !p.rateKbit && !p.jitterMs) return "LAN";
  if (!p.jitterMs && !p.rateKbit) {
    return `${p.rttMs ?? 0} ms / ${p.lossPct ?? 0}%`;
  }
  return name.includes("=") ? formatProfile(p) : name;
}

if (import.meta.main) {
  await runMain(USAGE, async () => {
    const args = parseArgs(Deno.args, [
      "transports",
      "profiles",
      "seconds",
      "interval",
      "source",
      "svg",
    ], ["json", "help"]);
    if (args.options.has("help")) {
      console.log(USAGE);
      return;
    }
    const opt = (k: string) => args.options.get(k)?.at(-1);
    const transports = (opt("transports") ?? TRANSPORTS.join(",")).split(",")
      .map((t) => {
        if (!TRANSPORTS.includes(t as Scheme)) {
          throw new UsageError(
            `unknown transport "${t}", expected ${TRANSPORTS.join(", ")}`,
          );
        }
        return t as Scheme;
      });
    const profiles = (opt("profiles")?.split(";") ??
      DEFAULT_PROFILES).flatMap((p) => p.includes("=") ? [p] : p.split(","))
      .map((name) => {
        try {
          return { name, profile: parseProfile(name) };
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
      });
    const seconds = intOption(opt("seconds") ?? "10", "seconds", 1);
    const interval = intOption(opt("interval") ?? "50", "interval", 1);
    const source = opt("source") ?? "images=1,size=8M,seed=1";
    const svgPath = opt("svg") ??
      new URL("./wan.svg", import.meta.url).pathname;
    const reason = await wanUnavailable();
    if (reason) throw new Error(`cannot build WAN links here: ${reason}`);

    const dir = await Deno.makeTempDir({ prefix: "patchwire-wan-bench-" });
    const rows: WanRow[] = [];
    try {
      for (const { name, profile } of profiles) {
        // The link starts without loss: the initial sync is not what is measured.
        const { lossPct: _, ...delayOnly } = profile;
        const links = [{ a: "primary", b: "backup", ...delayOnly }];
        const wan = await Wan.create({ links });
        try {
          const credentials = await makeCredentials(
            await Deno.makeTempDir({ dir }),
            wanAddresses(wan, links),
          );
          for (const transport of transports) {
            const row = await run(
              wan,
              dir,
              credentials,
              transport,
              profileLabel(name, profile),
              profile,
              { seconds, interval, source },
            );
            rows.push(row);
            console.error(
              `${row.profile} ${transport}: ${fmt(row.rate)}/s, p50 ${
                fmt(row.p50)
              } ms, p99 ${fmt(row.p99)} ms (from due), capture wait p50 ${
                fmt(row.waitP50)
              } ms, p99 ${fmt(row.waitP99)} ms, wire ${
                fmt(row.wire / 1024)
              } KiB/s${
                row.queueDrops ? `, ${row.queueDrops} emulator queue drops` : ""
              }${
                row.windowWaits
                  ? `, ${row.windowWaits} captures waited for commits`
                  : ""
              }${
                row.waitsMissed
                  ? `, ${row.waitsMissed} epochs' capture waits not seen in /status`
                  : ""
              }`,
            );
          }
        } finally {
          await wan.close();
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    const subtitle =
      `primary → backup, synthetic ${source}, a checkpoint every ${interval} ms (${
        fmt(1000 / interval, 0)
      }/s offered), policy all/applied, ${seconds} s measured per run`;
    console.log(`\n## Transports over emulated WAN links\n\n${subtitle}\n`);
    console.log(markdownTable(rows));
    if (args.options.has("json")) console.log(JSON.stringify(rows));
    await Deno.writeTextFile(svgPath, svgChart(rows, subtitle));
    console.log(`\nchart: ${svgPath}`);
  });
}
