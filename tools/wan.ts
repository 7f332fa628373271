/**
 * Emulated WAN topologies on one machine: each **region** is a Linux network
 * namespace, regions are joined by **links** (veth pairs), and a link can
 * have latency with jitter, packet loss, a bandwidth cap, and partitions that
 * come and go. For the WAN tests and `deno task wan-bench`, and for anyone
 * reproducing a WAN profile by hand (see `tools/wan_forwarder.ts`).
 *
 * How a link is made (this kernel has no netem qdisc):
 *
 * - **no delay**: a veth pair between the two regions;
 * - **delay and jitter**: a middle namespace runs `tools/wan_forwarder.ts`
 *   (UDP) and each region's end of the link is a VXLAN device (MTU 1450)
 *   tunnelled through it, so every packet of every protocol is delayed in
 *   each direction and TCP and QUIC run end to end over the full round
 *   trip. The forwarder's socket queues about 200 KiB (the kernel default,
 *   which cannot be raised inside a namespace): a burst beyond that is
 *   dropped, as by a router's queue ({@linkcode Wan.queueDrops} counts them);
 * - **loss**: nftables in the *receiving* region drops that share of what
 *   arrives on the link (`numgen random`), in each direction. Dropping on
 *   the sender's own output would not be a loss: the sender's stack sees a
 *   local send error (`EPERM`) and retries at once;
 * - **bandwidth**: a `tbf` qdisc on each end's link device;
 * - **partition**: nftables drops everything arriving on the link, both
 *   ends, until healed (connections time out as on a real cut, nothing is
 *   refused).
 *
 * Only the namespaces made here are addressed. Regions and middle namespaces
 * have no default route; the host reaches each region through a /30
 * control link (for HTTP control planes), whose route is checked to leave
 * through that link before anything is sent. Every run has a unique name
 * prefix, `pwan-PID-XXXX-`; `close()` removes everything (also on SIGINT or
 * SIGTERM, and on `Deno.exit`), and `removeStale()` (`tools/wan.ts down`)
 * removes what a killed run left.
 *
 * Needs root, iproute2, nftables and ethtool (the VXLAN underlay needs its
 * checksum offload off, or the forwarder would relay packets whose inner
 * checksum was never filled in): `apt-get install -y iproute2 nftables
 * ethtool`. {@linkcode wanUnavailable} says why a machine cannot.
 *
 * ```sh
 * deno run -A --unstable-net tools/wan.ts up --link primary-relay:rtt=100,jitter=5,loss=1 \
 *   --link relay-b1 --link relay-far:rtt=300
 * deno run -A tools/wan.ts list
 * deno run -A tools/wan.ts down [--all] [ID...]
 * ```
 *
 * @example
 * ```ts
 * await using wan = await Wan.create({
 *   links: [
 *     { a: "primary", b: "relay", rttMs: 100, lossPct: 1 },
 *     { a: "relay", b: "b1" },
 *     { a: "relay", b: "far", rttMs: 300 },
 *   ],
 * });
 * const relayAddr = wan.address("primary", "relay"); // "10.1.0.2"
 * const relay = wan.spawn("relay", Deno.execPath(), ["run", "-A", "tools/relay.ts", "..."]);
 * await wan.partition("relay"); // cut the relay off
 * await wan.heal("relay");
 * ```
 * @module
 */

import { parseArgs, runMain, UsageError } from "../src/_cli.ts";

/** What a link does to the traffic on it. All optional; none is a plain LAN. */
export interface LinkProfile {
  /** Round-trip time the link adds, ms (half in each direction). */
  rttMs?: number;
  /** Each one-way delay varies by up to ± this many ms (uniform; packets keep their order). */
  jitterMs?: number;
  /** Share of packets lost in each direction, percent (0.01 steps). */
  lossPct?: number;
  /** Bandwidth in each direction, kbit/s. */
  rateKbit?: number;
}

/** A link between regions `a` and `b`. */
export interface LinkSpec extends LinkProfile {
  a: string;
  b: string;
}

/** A topology: links, and regions (those named by links are implied). */
export interface WanSpec {
  regions?: string[];
  links: LinkSpec[];
}

/** Options of {@linkcode Wan.create}. */
export interface WanOptions {
  /** Progress lines (default: none). */
  note?: (line: string) => void;
  /** The deno binary the forwarders run with (default: this one). */
  deno?: string;
}

/** The WAN profiles the bench compares (RTT / loss), by name. */
export const WAN_PROFILES: Readonly<Record<string, LinkProfile>> = {
  lan: {},
  "50ms": { rttMs: 50 },
  "100ms-1%": { rttMs: 100, lossPct: 1 },
  "200ms-5%": { rttMs: 200, lossPct: 5 },
};

/** The UDP port the VXLAN tunnels use (in namespaces of their own). */
const VXLAN_PORT = 4789;
/** Region names: short, so that they fit in namespace names and logs. */
const REGION_NAME = /^[a-z][a-z0-9]{0,15}$/;
const PREFIX = "pwan-";
const NAMESPACE = /^pwan-(\d+)-([a-z0-9]{4})-([a-z0-9]+)$/;
const MAX_REGIONS = 63;
/** Link subnets are 10.K.x.0/24 for link K; control subnets come from 10.224–253.x. */
const MAX_LINKS = 200;
/** How long a process gets to exit after SIGTERM before SIGKILL. */
const STOP_GRACE_MS = 5_000;

/**
 * Parses a profile: a name from {@linkcode WAN_PROFILES}, or
 * `rtt=MS,jitter=MS,loss=PCT,rate=RATE` (any subset; RATE in kbit, or with
 * `kbit`, `mbit`, `gbit`).
 */
export function parseProfile(text: string): LinkProfile {
  if (text === "") return {};
  if (Object.hasOwn(WAN_PROFILES, text)) return { ...WAN_PROFILES[text] };
  const profile: LinkProfile = {};
  for (const part of text.split(",")) {
    const [key, value] = part.split("=");
    const num = (v: string | undefined) => {
      const n = Number(v);
      if (v === undefined || v === "" || !(n >= 0)) {
        throw new RangeError(
          `link profile "${text}": ${key} must be a number >= 0, got "${v}"`,
        );
      }
      return n;
    };
    if (key === "rtt") profile.rttMs = num(value);
    else if (key === "jitter") profile.jitterMs = num(value);
    else if (key === "loss") profile.lossPct = num(value?.replace(/%$/, ""));
    else if (key === "rate") {
      const m = /^(\d+(?:\.\d+)?)(k|m|g)?(bit)?$/i.exec(value ?? "");
      if (!m) {
        throw new RangeError(
          `link profile "${text}": rate must be like 500, 500kbit, 20mbit or 1gbit, got "${value}"`,
        );
      }
      const scale = { k: 1, m: 1000, g: 1_000_000 }[
        (m[2] ?? "k").toLowerCase() as "k" | "m" | "g"
      ];
      profile.rateKbit = Number(m[1]) * scale;
    } else {
      throw new RangeError(
        `link profile "${text}": unknown "${key}", expected rtt, jitter, loss, rate or one of ${
          Object.keys(WAN_PROFILES).join(", ")
        }`,
      );
    }
  }
  if ((profile.lossPct ?? 0) > 100) {
    throw new RangeError(`link profile "${text}": loss is at most 100%`);
  }
  return profile;
}

/** Parses `A-B` or `A-B:PROFILE` (see {@linkcode parseProfile}). */
export function parseLinkSpec(text: string): LinkSpec {
  const colon = text.indexOf(":");
  const ends = colon < 0 ? text : text.slice(0, colon);
  const m = /^([a-z][a-z0-9]*)-([a-z][a-z0-9]*)$/.exec(ends);
  if (!m) {
    throw new RangeError(
      `bad link "${text}": expected REGION-REGION[:PROFILE], e.g. primary-relay:rtt=100,loss=1`,
    );
  }
  return {
    a: m[1],
    b: m[2],
    ...parseProfile(colon < 0 ? "" : text.slice(colon + 1)),
  };
}

/** A profile in words, e.g. `rtt 100 ms ±5, loss 1%, 20 Mbit/s`. */
export function formatProfile(p: LinkProfile): string {
  const parts: string[] = [];
  if (p.rttMs) {
    parts.push(`rtt ${p.rttMs} ms${p.jitterMs ? ` ±${p.jitterMs}` : ""}`);
  } else if (p.jitterMs) parts.push(`jitter ±${p.jitterMs} ms`);
  if (p.lossPct) parts.push(`loss ${p.lossPct}%`);
  if (p.rateKbit) {
    parts.push(
      p.rateKbit >= 1000
        ? `${p.rateKbit / 1000} Mbit/s`
        : `${p.rateKbit} kbit/s`,
    );
  }
  return parts.join(", ") || "no impairment";
}

interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command; throws naming it and its error output unless `allowFail`. */
async function sh(
  cmd: string,
  args: string[],
  options: { input?: string; allowFail?: boolean } = {},
): Promise<CommandResult> {
  let out: Deno.CommandOutput;
  try {
    const child = new Deno.Command(cmd, {
      args,
      stdin: options.input === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (options.input !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(options.input));
      await w.close();
    }
    out = await child.output();
  } catch (e) {
    if (options.allowFail) return { code: -1, stdout: "", stderr: String(e) };
    throw new Error(`cannot run ${cmd}: ${(e as Error).message}`);
  }
  const dec = new TextDecoder();
  const result = {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
  if (result.code !== 0 && !options.allowFail) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (exit ${result.code}): ${
        result.stderr.trim() || result.stdout.trim()
      }`,
    );
  }
  return result;
}

/** `sh` synchronously, never throwing (for the exit-time cleanup). */
function shSync(cmd: string, args: string[]): string {
  try {
    const out = new Deno.Command(cmd, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).outputSync();
    return new TextDecoder().decode(out.stdout);
  } catch {
    return "";
  }
}

/**
 * Why this machine cannot build WAN topologies (not root, a tool or kernel
 * feature missing), or null if it can. Makes and removes a probe namespace.
 */
export async function wanUnavailable(): Promise<string | null> {
  if (Deno.build.os !== "linux") return "network namespaces need Linux";
  const tools: [string, string[], string][] = [
    ["ip", ["-V"], "iproute2"],
    ["tc", ["-V"], "iproute2"],
    ["nft", ["--version"], "nftables"],
    ["ethtool", ["--version"], "ethtool"],
  ];
  for (const [tool, args, pkg] of tools) {
    const r = await sh(tool, args, { allowFail: true });
    if (r.code !== 0) {
      return `${tool} is missing or broken (apt-get install -y ${pkg}): ${
        r.stderr.trim().split("\n")[0]
      }`;
    }
  }
  const ns = `${PREFIX}${Deno.pid}-${randomTag()}-probe`;
  const add = await sh("ip", ["netns", "add", ns], { allowFail: true });
  if (add.code !== 0) {
    return `ip netns is unusable (needs root): ${add.stderr.trim()}`;
  }
  try {
    const vx = await sh("ip", [
      "-n",
      ns,
      "link",
      "add",
      "name",
      "probe",
      "type",
      "vxlan",
      "id",
      "1",
      "dstport",
      String(VXLAN_PORT),
    ], { allowFail: true });
    if (vx.code !== 0) {
      return `this kernel cannot make VXLAN devices: ${vx.stderr.trim()}`;
    }
    const nft = await sh("ip", [
      "netns",
      "exec",
      ns,
      "nft",
      "-f",
      "-",
    ], { input: nftScript([]), allowFail: true });
    if (nft.code !== 0) {
      return `nftables is unusable in a namespace: ${nft.stderr.trim()}`;
    }
    return null;
  } finally {
    await sh("ip", ["netns", "del", ns], { allowFail: true });
  }
}

function randomTag(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return [...bytes].map((b) => "abcdefghijklmnopqrstuvwxyz0123456789"[b % 36])
    .join("");
}

/** The nft script that makes table `inet pwan` hold exactly `rules` (prerouting). */
function nftScript(rules: string[]): string {
  // "add, then delete" removes the table whether it existed or not.
  const lines = ["table inet pwan", "delete table inet pwan"];
  if (rules.length) {
    lines.push(
      "table inet pwan {",
      "  chain pre {",
      "    type filter hook prerouting priority -300; policy accept;",
      ...rules.map((r) => `    ${r}`),
      "  }",
      "}",
    );
  }
  return lines.join("\n") + "\n";
}

function ipToInt(ip: string): number {
  return ip.split(".").reduce((n, p) => n * 256 + Number(p), 0);
}

/** IPv4 prefixes in use on this host (addresses and routes, every table). */
async function prefixesInUse(): Promise<[number, number][]> {
  const ranges: [number, number][] = [];
  const add = (cidr: string) => {
    const [ip, len = "32"] = cidr.split("/");
    const bits = Number(len);
    if (bits === 0) return; // the default route overlaps everything
    const size = 2 ** (32 - bits);
    const start = Math.floor(ipToInt(ip) / size) * size;
    ranges.push([start, start + size - 1]);
  };
  const addrs = await sh("ip", ["-4", "-o", "addr", "show"]);
  for (const m of addrs.stdout.matchAll(/inet (\d+\.\d+\.\d+\.\d+\/\d+)/g)) {
    add(m[1]);
  }
  const routes = await sh("ip", ["-4", "route", "show", "table", "all"]);
  for (const line of routes.stdout.split("\n")) {
    const tok = line.split(/\s+/).find((t) =>
      /^\d+\.\d+\.\d+\.\d+(\/\d+)?$/.test(t)
    );
    if (tok) add(tok);
  }
  return ranges;
}

/** Picks a /24 for the control links that nothing on this host uses. */
async function pickControlSubnet(): Promise<string> {
  const used = await prefixesInUse();
  for (let attempt = 0; attempt < 500; attempt++) {
    const [p, q] = crypto.getRandomValues(new Uint8Array(2));
    const base = `10.${224 + p % 30}.${q}`;
    const start = ipToInt(`${base}.0`), end = start + 255;
    if (!used.some(([s, e]) => s <= end && start <= e)) return base;
  }
  throw new Error(
    "no free /24 in 10.224.0.0-10.253.255.255 for the control links: this host uses all of them",
  );
}

/** A process running in a region, its output kept line by line. */
export class WanProcess {
  readonly child: Deno.ChildProcess;
  /** Every line it printed, stdout and stderr interleaved as read. */
  readonly lines: string[] = [];
  /** Its exit status. */
  readonly status: Promise<Deno.CommandStatus>;
  readonly #done: Promise<void>;
  #waiters: (() => void)[] = [];

  constructor(
    readonly region: string,
    readonly label: string,
    command: Deno.Command,
  ) {
    this.child = command.spawn();
    this.status = this.child.status;
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      let buf = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          this.#push(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      }
      if (buf) this.#push(buf);
    };
    this.#done = Promise.all([pump(this.child.stdout), pump(this.child.stderr)])
      .then(() => this.#wake(), () => this.#wake());
  }

  #push(line: string): void {
    this.lines.push(line);
    this.#wake();
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** The output so far, for error messages. */
  output(lastLines = 40): string {
    return this.lines.slice(-lastLines).join("\n");
  }

  /**
   * Waits for a line matching `re` (from the start of the output) and
   * returns its match; throws with the output if the process exits first or
   * `ms` pass.
   */
  async waitFor(re: RegExp, ms = 30_000): Promise<RegExpMatchArray> {
    const end = Date.now() + ms;
    let exited = false;
    this.status.then(() => exited = true, () => exited = true);
    let seen = 0;
    for (;;) {
      for (; seen < this.lines.length; seen++) {
        const m = this.lines[seen].match(re);
        if (m) return m;
      }
      if (exited && seen >= this.lines.length) {
        await this.#done;
        if (seen >= this.lines.length) {
          throw new Error(
            `${this.label} in region ${this.region} exited before printing ${re}; its output:\n${this.output()}`,
          );
        }
        continue;
      }
      if (Date.now() > end) {
        throw new Error(
          `${this.label} in region ${this.region} printed no ${re} within ${ms} ms; its output:\n${this.output()}`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((r) => this.#waiters.push(r)),
        new Promise<void>((r) => timer = setTimeout(r, 250)),
      ]);
      clearTimeout(timer);
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code once its output is read. */
  async stop(graceMs = STOP_GRACE_MS): Promise<number> {
    try {
      this.child.kill("SIGTERM");
    } catch {
      // Exited already.
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killed = await Promise.race([
      this.status.then(() => false),
      new Promise<boolean>((r) => timer = setTimeout(() => r(true), graceMs)),
    ]);
    clearTimeout(timer);
    if (killed) {
      try {
        this.child.kill("SIGKILL");
      } catch {
        // Exited in the meantime.
      }
    }
    const status = await this.status;
    await this.#done;
    return status.code;
  }
}

interface LinkState extends LinkSpec {
  /** 1-based: its subnets are 10.K.0-2.0/24 and its devices wkK. */
  k: number;
  partitioned: boolean;
  /** Whether a tbf qdisc was put on its devices. */
  shaped: boolean;
  /** The middle namespace, for links with a delay. */
  via: string | null;
  forwarder: WanProcess | null;
}

/** Open topologies, torn down on SIGINT, SIGTERM and exit. */
const openWans = new Set<Wan>();
let signalHandler: (() => void) | null = null;

function onExit(): void {
  for (const wan of openWans) wan.closeSync();
}

function track(wan: Wan): void {
  openWans.add(wan);
  if (signalHandler) return;
  signalHandler = () => {
    console.error("wan: interrupted, removing the namespaces");
    const all = [...openWans];
    Promise.all(all.map((w) => w.close())).finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", signalHandler);
  Deno.addSignalListener("SIGTERM", signalHandler);
  globalThis.addEventListener("unload", onExit);
}

function untrack(wan: Wan): void {
  openWans.delete(wan);
  if (openWans.size > 0 || !signalHandler) return;
  Deno.removeSignalListener("SIGINT", signalHandler);
  Deno.removeSignalListener("SIGTERM", signalHandler);
  globalThis.removeEventListener("unload", onExit);
  signalHandler = null;
}

/**
 * A topology of regions and links. Make one with {@linkcode Wan.create};
 * {@linkcode Wan.close} (or `await using`) removes it.
 */
export class Wan {
  /** `PID-XXXX`: what `tools/wan.ts down ID` takes. */
  readonly id: string;
  readonly regions: readonly string[];
  readonly #tag: string;
  readonly #links: LinkState[] = [];
  readonly #processes = new Set<WanProcess>();
  readonly #namespaces: string[] = [];
  readonly #note: (line: string) => void;
  readonly #deno: string;
  #control = "";
  #closed = false;

  private constructor(regions: string[], options: WanOptions) {
    this.#tag = randomTag();
    this.id = `${Deno.pid}-${this.#tag}`;
    this.regions = regions;
    this.#note = options.note ?? (() => {});
    this.#deno = options.deno ?? Deno.execPath();
  }

  /**
   * Builds the topology: a namespace per region, a control link from this
   * host to each, and the links with their impairments. Everything made is
   * removed again if a step fails.
   */
  static async create(spec: WanSpec, options: WanOptions = {}): Promise<Wan> {
    const regions = [...(spec.regions ?? [])];
    for (const l of spec.links) {
      for (const r of [l.a, l.b]) if (!regions.includes(r)) regions.push(r);
    }
    checkSpec(regions, spec.links);
    const wan = new Wan(regions, options);
    track(wan);
    try {
      await wan.#build(spec.links);
    } catch (e) {
      await wan.close();
      throw e;
    }
    return wan;
  }

  /** The namespace of a region (for `ip netns exec`). */
  namespace(region: string): string {
    this.#region(region);
    return `${PREFIX}${this.id}-${region}`;
  }

  /** The address a process in `from` uses to reach `to` (they must be linked). */
  address(from: string, to: string): string {
    const l = this.#link(from, to);
    return l.a === to ? `10.${l.k}.0.1` : `10.${l.k}.0.2`;
  }

  /** The address this host (outside every namespace) reaches `region` at, over its control link. */
  controlAddress(region: string): string {
    const i = this.#region(region);
    return `${this.#control}.${4 * i + 2}`;
  }

  /** The link between `a` and `b` as it is now (profile, partition). */
  link(a: string, b: string): LinkSpec & { partitioned: boolean } {
    const l = this.#link(a, b);
    return {
      a: l.a,
      b: l.b,
      rttMs: l.rttMs,
      jitterMs: l.jitterMs,
      lossPct: l.lossPct,
      rateKbit: l.rateKbit,
      partitioned: l.partitioned,
    };
  }

  /**
   * Datagrams the forwarder of the link between `a` and `b` could not take
   * in time (its socket buffer, the kernel default of about 200 KiB, was
   * full): the emulator's own drops, on top of the link's loss. 0 for a
   * link without a delay.
   */
  async queueDrops(a: string, b: string): Promise<number> {
    const l = this.#link(a, b);
    if (!l.via) return 0;
    const snmp = await sh("ip", [
      "netns",
      "exec",
      l.via,
      "cat",
      "/proc/net/snmp",
    ]);
    const [names, values] = snmp.stdout.split("\n").filter((line) =>
      line.startsWith("Udp:")
    ).map((line) => line.split(/\s+/));
    const i = names?.indexOf("RcvbufErrors") ?? -1;
    return i > 0 ? Number(values[i]) : 0;
  }

  /** `ip netns exec NAMESPACE cmd args…` as a command to run. */
  command(
    region: string,
    cmd: string,
    args: string[] = [],
    options: Omit<Deno.CommandOptions, "args"> = {},
  ): Deno.Command {
    return new Deno.Command("ip", {
      ...options,
      args: ["netns", "exec", this.namespace(region), cmd, ...args],
    });
  }

  /**
   * Starts `cmd args…` in `region` with its output captured line by line;
   * it is stopped by {@linkcode Wan.close} if still running.
   */
  spawn(
    region: string,
    cmd: string,
    args: string[] = [],
    options: { cwd?: string; env?: Record<string, string>; label?: string } =
      {},
  ): WanProcess {
    if (this.#closed) throw new Error(`wan ${this.id} is closed`);
    const p = new WanProcess(
      region,
      options.label ?? cmd.split("/").at(-1)!,
      this.command(region, cmd, args, {
        cwd: options.cwd,
        env: options.env,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }),
    );
    this.#processes.add(p);
    p.status.finally(() => this.#processes.delete(p));
    return p;
  }

  /**
   * Changes the values given of a link's profile (0 removes one): loss and
   * bandwidth at once; a new delay or jitter
   * restarts the link's forwarder (packets in flight are lost). A link made
   * without a delay cannot get one (it has no middle namespace).
   */
  async setLink(a: string, b: string, profile: LinkProfile): Promise<void> {
    const l = this.#link(a, b);
    // Only the values given change.
    profile = Object.fromEntries(
      Object.entries(profile).filter(([, v]) => v !== undefined),
    );
    const delayed = (p: LinkProfile) =>
      (p.rttMs ?? 0) > 0 || (p.jitterMs ?? 0) > 0;
    const next = { ...l, ...profile };
    if (!l.via && delayed(next)) {
      throw new Error(
        `link ${l.a}-${l.b} was made without a delay and cannot get one; give it a delay when creating the topology`,
      );
    }
    const restart = next.rttMs !== l.rttMs || next.jitterMs !== l.jitterMs;
    Object.assign(l, profile);
    if (restart) {
      await l.forwarder?.stop();
      l.forwarder = await this.#startForwarder(l);
    }
    await this.#applyTc(l);
    await this.#applyNft(l.a);
    await this.#applyNft(l.b);
    this.#note(`link ${l.a}-${l.b}: ${formatProfile(l)}`);
  }

  /**
   * Cuts the link between `a` and `b` — or, without `b`, every link of `a` —
   * dropping everything on it in both directions until {@linkcode Wan.heal}.
   */
  async partition(a: string, b?: string): Promise<void> {
    await this.#setPartition(a, b, true);
  }

  /** Ends a {@linkcode Wan.partition}. */
  async heal(a: string, b?: string): Promise<void> {
    await this.#setPartition(a, b, false);
  }

  /** A table of the regions, links and addresses. */
  describe(): string {
    const out = [
      `wan ${this.id} (remove with Ctrl-C here, or: deno run -A tools/wan.ts down ${this.id})`,
      "",
      "region     namespace                          control address",
    ];
    for (const r of this.regions) {
      out.push(
        `${r.padEnd(10)} ${this.namespace(r).padEnd(34)} ${
          this.controlAddress(r)
        }`,
      );
    }
    out.push(
      "",
      "link                 profile                          addresses",
    );
    for (const l of this.#links) {
      out.push(
        `${`${l.a}-${l.b}`.padEnd(20)} ${
          (formatProfile(l) + (l.partitioned ? " (partitioned)" : "")).padEnd(
            32,
          )
        } ${l.a} reaches ${l.b} at ${
          this.address(l.a, l.b)
        }, ${l.b} reaches ${l.a} at ${this.address(l.b, l.a)}`,
      );
    }
    out.push(
      "",
      `run inside a region: ip netns exec ${
        this.namespace(this.regions[0])
      } COMMAND`,
    );
    return out.join("\n");
  }

  /** Stops every process started in the regions and removes every namespace and device made. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all([...this.#processes].map((p) => p.stop()));
    for (const l of this.#links) await l.forwarder?.stop();
    await removeNamespaces(this.#namespaces, this.#tag);
    untrack(this);
    this.#note(`wan ${this.id} removed`);
  }

  /** {@linkcode Wan.close}, synchronously and best effort (exit-time cleanup). */
  closeSync(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#processes) {
      try {
        p.child.kill("SIGKILL");
      } catch {
        // Exited already.
      }
    }
    for (const ns of this.#namespaces) {
      for (const pid of shSync("ip", ["netns", "pids", ns]).split(/\s+/)) {
        if (pid) shSync("kill", ["-KILL", pid]);
      }
      shSync("ip", ["netns", "del", ns]);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #region(region: string): number {
    const i = this.regions.indexOf(region);
    if (i < 0) {
      throw new RangeError(
        `no region "${region}" in wan ${this.id}; its regions: ${
          this.regions.join(", ")
        }`,
      );
    }
    return i;
  }

  #link(a: string, b: string): LinkState {
    this.#region(a);
    this.#region(b);
    const l = this.#links.find((l) =>
      l.a === a && l.b === b || l.a === b && l.b === a
    );
    if (!l) {
      throw new RangeError(
        `regions ${a} and ${b} are not linked; links: ${
          this.#links.map((l) => `${l.a}-${l.b}`).join(", ")
        }`,
      );
    }
    return l;
  }

  async #ip(args: string[]): Promise<void> {
    await sh("ip", args);
  }

  async #build(links: LinkSpec[]): Promise<void> {
    this.#control = await pickControlSubnet();
    for (const r of this.regions) {
      const ns = this.namespace(r);
      await this.#ip(["netns", "add", ns]);
      this.#namespaces.push(ns);
      await this.#ip(["-n", ns, "link", "set", "dev", "lo", "up"]);
      // The control link: this host's end keeps a name tied to the run.
      const i = this.#region(r);
      const host = `pw${this.#tag}c${i}`;
      await this.#ip([
        "link",
        "add",
        "name",
        host,
        "type",
        "veth",
        "peer",
        "name",
        "ctl",
        "netns",
        ns,
      ]);
      await this.#ip([
        "addr",
        "add",
        `${this.#control}.${4 * i + 1}/30`,
        "dev",
        host,
      ]);
      await this.#ip(["link", "set", "dev", host, "up"]);
      await this.#ip([
        "-n",
        ns,
        "addr",
        "add",
        `${this.controlAddress(r)}/30`,
        "dev",
        "ctl",
      ]);
      await this.#ip(["-n", ns, "link", "set", "dev", "ctl", "up"]);
    }
    links.forEach((spec, i) => {
      this.#links.push({
        ...spec,
        k: i + 1,
        partitioned: false,
        shaped: false,
        via: null,
        forwarder: null,
      });
    });
    for (const l of this.#links) await this.#makeLink(l);
    const started = this.#links.filter((l) => l.via).map(async (l) => {
      l.forwarder = await this.#startForwarder(l);
    });
    await Promise.all(started);
    for (const l of this.#links) await this.#applyTc(l);
    for (const r of this.regions) await this.#applyNft(r);
    await this.#checkRoutes();
    this.#note(
      `wan ${this.id}: ${this.regions.length} regions, ${this.#links.length} links`,
    );
  }

  async #makeLink(l: LinkState): Promise<void> {
    const nsA = this.namespace(l.a), nsB = this.namespace(l.b);
    const dev = `wk${l.k}`;
    const delayed = (l.rttMs ?? 0) > 0 || (l.jitterMs ?? 0) > 0;
    if (!delayed) {
      await this.#ip([
        "link",
        "add",
        "name",
        dev,
        "netns",
        nsA,
        "type",
        "veth",
        "peer",
        "name",
        dev,
        "netns",
        nsB,
      ]);
    } else {
      // Underlay: A —okK— middle —okK— B, VXLAN over it, the forwarder in the middle.
      const via = `${PREFIX}${this.id}-link${l.k}`;
      await this.#ip(["netns", "add", via]);
      this.#namespaces.push(via);
      l.via = via;
      await this.#ip(["-n", via, "link", "set", "dev", "lo", "up"]);
      const under = `ok${l.k}`;
      for (
        const [ns, side, mine, theirs] of [
          [nsA, "va", `10.${l.k}.1.2`, `10.${l.k}.1.1`],
          [nsB, "vb", `10.${l.k}.2.2`, `10.${l.k}.2.1`],
        ]
      ) {
        await this.#ip([
          "link",
          "add",
          "name",
          under,
          "netns",
          ns,
          "type",
          "veth",
          "peer",
          "name",
          side,
          "netns",
          via,
        ]);
        await this.#ip(["-n", ns, "addr", "add", `${mine}/24`, "dev", under]);
        await this.#ip(["-n", via, "addr", "add", `${theirs}/24`, "dev", side]);
        await this.#ip(["-n", ns, "link", "set", "dev", under, "up"]);
        await this.#ip(["-n", via, "link", "set", "dev", side, "up"]);
        // The forwarder copies packets out of the kernel: their inner
        // checksums must be computed before they leave, not offloaded.
        await sh("ip", [
          "netns",
          "exec",
          ns,
          "ethtool",
          "-K",
          under,
          "tx",
          "off",
        ]);
        await this.#ip([
          "-n",
          ns,
          "link",
          "add",
          "name",
          dev,
          "type",
          "vxlan",
          "id",
          String(l.k),
          "local",
          mine,
          "remote",
          theirs,
          "dstport",
          String(VXLAN_PORT),
          // One source port: one forwarder session per direction.
          "srcport",
          String(VXLAN_PORT),
          String(VXLAN_PORT + 1),
          "nolearning",
          "dev",
          under,
        ]);
      }
    }
    await this.#ip(["-n", nsA, "addr", "add", `10.${l.k}.0.1/24`, "dev", dev]);
    await this.#ip(["-n", nsB, "addr", "add", `10.${l.k}.0.2/24`, "dev", dev]);
    await this.#ip(["-n", nsA, "link", "set", "dev", dev, "up"]);
    await this.#ip(["-n", nsB, "link", "set", "dev", dev, "up"]);
  }

  async #startForwarder(l: LinkState): Promise<WanProcess | null> {
    if (!l.via) return null;
    const k = l.k;
    const script = new URL("./wan_forwarder.ts", import.meta.url).pathname;
    const p = new WanProcess(
      `link${k}`,
      "forwarder",
      new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          l.via,
          this.#deno,
          "run",
          "--unstable-net",
          "--allow-net",
          script,
          "--proto",
          "udp",
          "--listen",
          `10.${k}.1.1:${VXLAN_PORT}`,
          "--to",
          `10.${k}.2.2:${VXLAN_PORT}`,
          "--listen",
          `10.${k}.2.1:${VXLAN_PORT}`,
          "--to",
          `10.${k}.1.2:${VXLAN_PORT}`,
          "--delay-ms",
          String((l.rttMs ?? 0) / 2),
          "--jitter-ms",
          String(l.jitterMs ?? 0),
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }),
    );
    // Both directions listening: the link is up.
    try {
      await p.waitFor(new RegExp(`forwarding udp 10\\.${k}\\.2\\.1:`), 60_000);
    } catch (e) {
      await p.stop();
      throw e;
    }
    return p;
  }

  async #applyTc(l: LinkState): Promise<void> {
    if (!l.rateKbit && !l.shaped) return;
    l.shaped = !!l.rateKbit;
    const dev = `wk${l.k}`;
    for (const r of [l.a, l.b]) {
      const ns = this.namespace(r);
      if (l.rateKbit) {
        // Bursts of 10 ms at the rate (at least a few frames); 100 ms of queue.
        const burst = Math.max(
          4 * 1514,
          Math.ceil(l.rateKbit * 1000 / 8 / 100),
        );
        await sh("ip", [
          "netns",
          "exec",
          ns,
          "tc",
          "qdisc",
          "replace",
          "dev",
          dev,
          "root",
          "tbf",
          "rate",
          `${l.rateKbit}kbit`,
          "burst",
          String(burst),
          "latency",
          "100ms",
        ]);
      } else {
        await sh("ip", [
          "netns",
          "exec",
          ns,
          "tc",
          "qdisc",
          "del",
          "dev",
          dev,
          "root",
        ], { allowFail: true });
      }
    }
  }

  /** Rewrites a region's drop rules: what arrives on each of its links is lost or cut. */
  async #applyNft(region: string): Promise<void> {
    const rules: string[] = [];
    for (const l of this.#links) {
      if (l.a !== region && l.b !== region) continue;
      const dev = `wk${l.k}`;
      if (l.partitioned) {
        rules.push(`iifname "${dev}" drop`);
      } else if ((l.lossPct ?? 0) > 0) {
        rules.push(
          `iifname "${dev}" numgen random mod 10000 < ${
            Math.round(l.lossPct! * 100)
          } drop`,
        );
      }
    }
    await sh("ip", [
      "netns",
      "exec",
      this.namespace(region),
      "nft",
      "-f",
      "-",
    ], { input: nftScript(rules) });
  }

  async #setPartition(
    a: string,
    b: string | undefined,
    cut: boolean,
  ): Promise<void> {
    const links = b === undefined
      ? this.#links.filter((l) => l.a === a || l.b === a)
      : [this.#link(a, b)];
    if (links.length === 0) {
      this.#region(a);
      throw new RangeError(`region ${a} has no links`);
    }
    const regions = new Set<string>();
    for (const l of links) {
      l.partitioned = cut;
      regions.add(l.a);
      regions.add(l.b);
    }
    for (const r of regions) await this.#applyNft(r);
    this.#note(
      `${cut ? "partitioned" : "healed"} ${
        links.map((l) => `${l.a}-${l.b}`).join(", ")
      }`,
    );
  }

  /** Refuses to go on unless every address handed out is routed over the links made here. */
  async #checkRoutes(): Promise<void> {
    const via = async (ns: string | null, addr: string, dev: string) => {
      const r = await sh("ip", [
        ...(ns ? ["-n", ns] : []),
        "-4",
        "-o",
        "route",
        "get",
        addr,
      ], { allowFail: true });
      if (!new RegExp(`\\bdev ${dev}\\b`).test(r.stdout)) {
        throw new Error(
          `refusing to use ${addr}: from ${
            ns ?? "the host"
          } it is not routed over ${dev} but: ${(r.stdout || r.stderr).trim()}`,
        );
      }
    };
    for (const r of this.regions) {
      await via(
        null,
        this.controlAddress(r),
        `pw${this.#tag}c${this.#region(r)}`,
      );
    }
    for (const l of this.#links) {
      await via(this.namespace(l.a), this.address(l.a, l.b), `wk${l.k}`);
      await via(this.namespace(l.b), this.address(l.b, l.a), `wk${l.k}`);
    }
  }
}

function checkSpec(regions: string[], links: LinkSpec[]): void {
  if (regions.length === 0) throw new RangeError("a wan needs regions");
  if (regions.length > MAX_REGIONS) {
    throw new RangeError(
      `at most ${MAX_REGIONS} regions, got ${regions.length}`,
    );
  }
  if (links.length > MAX_LINKS) {
    throw new RangeError(`at most ${MAX_LINKS} links, got ${links.length}`);
  }
  for (const r of regions) {
    if (!REGION_NAME.test(r) || /^link\d+$/.test(r) || r === "probe") {
      throw new RangeError(
        `bad region name "${r}": expected a lowercase letter then up to 15 letters or digits (not linkN or probe)`,
      );
    }
  }
  const seen = new Set<string>();
  for (const l of links) {
    if (l.a === l.b) {
      throw new RangeError(`link ${l.a}-${l.b} joins a region to itself`);
    }
    const key = [l.a, l.b].sort().join("-");
    if (seen.has(key)) {
      throw new RangeError(`two links between ${l.a} and ${l.b}`);
    }
    seen.add(key);
    for (const [k, v] of Object.entries(l)) {
      if (k !== "a" && k !== "b" && v !== undefined && !(Number(v) >= 0)) {
        throw new RangeError(`link ${l.a}-${l.b}: ${k} must be >= 0, got ${v}`);
      }
    }
    if ((l.lossPct ?? 0) > 100) {
      throw new RangeError(`link ${l.a}-${l.b}: loss is at most 100%`);
    }
  }
}

/** Kills what runs in the namespaces, deletes them and this run's host-side control devices. */
async function removeNamespaces(
  namespaces: string[],
  tag: string,
): Promise<void> {
  for (const ns of namespaces) {
    const pids = await sh("ip", ["netns", "pids", ns], { allowFail: true });
    for (const pid of pids.stdout.split(/\s+/).filter(Boolean)) {
      await sh("kill", ["-KILL", pid], { allowFail: true });
    }
    await sh("ip", ["netns", "del", ns], { allowFail: true });
  }
  // Deleting a namespace deletes its veth ends and so their peers; this
  // catches a control device whose namespace was never made.
  const links = await sh("ip", ["-o", "link", "show"], { allowFail: true });
  for (
    const m of links.stdout.matchAll(
      new RegExp(`^\\d+: (pw${tag}c\\d+)[@:]`, "gm"),
    )
  ) {
    await sh("ip", ["link", "del", m[1]], { allowFail: true });
  }
}

/** A run found on this host, by its namespaces. */
export interface WanRun {
  id: string;
  pid: number;
  /** Whether the process that made it still runs. */
  alive: boolean;
  namespaces: string[];
}

function pidAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // A zombie (killed, not yet reaped) is gone for our purpose.
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(")") + 2));
  } catch (e) {
    // Without permission to look, assume it runs: never remove a live run.
    return !(e instanceof Deno.errors.NotFound);
  }
}

/** The runs whose namespaces exist on this host. */
export async function listRuns(): Promise<WanRun[]> {
  const out = await sh("ip", ["netns", "list"]);
  const runs = new Map<string, WanRun>();
  for (const line of out.stdout.split("\n")) {
    const name = line.split(" ")[0];
    const m = NAMESPACE.exec(name);
    if (!m) continue;
    const id = `${m[1]}-${m[2]}`;
    let run = runs.get(id);
    if (!run) {
      run = {
        id,
        pid: Number(m[1]),
        alive: pidAlive(Number(m[1])),
        namespaces: [],
      };
      runs.set(id, run);
    }
    run.namespaces.push(name);
  }
  return [...runs.values()];
}

/**
 * Removes runs left behind: by default those whose process is gone; with
 * `ids`, those runs; with `all`, every run (live ones too). Returns the ids
 * removed.
 */
export async function removeStale(
  options: { all?: boolean; ids?: string[] } = {},
): Promise<string[]> {
  const removed: string[] = [];
  for (const run of await listRuns()) {
    const chosen = options.all ||
      (options.ids?.length ? options.ids.includes(run.id) : !run.alive);
    if (!chosen) continue;
    await removeNamespaces(run.namespaces, run.id.split("-")[1]);
    removed.push(run.id);
  }
  return removed;
}

const USAGE =
  `usage: deno run -A --unstable-net tools/wan.ts up --link A-B[:PROFILE] [--link ...] [--region R ...] [--json]
       deno run -A tools/wan.ts list
       deno run -A tools/wan.ts down [--all] [ID ...]

up     builds the topology (a network namespace per region, links between
       them), prints the namespaces and the addresses each region reaches
       the others at, then runs until Ctrl-C or SIGTERM and removes it all.
       Commands on standard input: "partition A [B]", "heal A [B]",
       "set A-B PROFILE" (changes the values given; 0 removes one), "show",
       "quit".
list   the runs on this host (ID, owner PID, alive or stale).
down   removes stale runs (their process is gone); with IDs those runs,
       with --all every run.

PROFILE: ${
    Object.keys(WAN_PROFILES).join(", ")
  }, or rtt=MS,jitter=MS,loss=PCT,rate=RATE
         (RATE: 500kbit, 20mbit, 1gbit); none: no impairment.
Needs root, iproute2, nftables and ethtool.`;

async function up(argv: string[]): Promise<void> {
  const args = parseArgs(argv, ["link", "region"], ["json"]);
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  let links: LinkSpec[];
  try {
    links = (args.options.get("link") ?? []).map(parseLinkSpec);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const regions = args.options.get("region") ?? [];
  if (links.length === 0 && regions.length === 0) {
    throw new UsageError("give at least one --link or --region");
  }
  const reason = await wanUnavailable();
  if (reason) throw new Error(reason);
  const wan = await Wan.create({ regions, links }, {
    note: (l) => console.error(l),
  });
  if (args.options.has("json")) {
    console.log(JSON.stringify({
      id: wan.id,
      regions: Object.fromEntries(wan.regions.map((r) => [r, {
        namespace: wan.namespace(r),
        control: wan.controlAddress(r),
      }])),
      links: links.map((l) => ({
        ...wan.link(l.a, l.b),
        [`${l.a}->${l.b}`]: wan.address(l.a, l.b),
        [`${l.b}->${l.a}`]: wan.address(l.b, l.a),
      })),
    }));
  } else {
    console.log(wan.describe());
  }
  // Commands from stdin until it ends; then wait for a signal.
  const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream());
  let buf = "";
  for await (const chunk of lines) {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const words = buf.slice(0, nl).trim().split(/\s+/).filter(Boolean);
      buf = buf.slice(nl + 1);
      if (words.length === 0) continue;
      try {
        if (words[0] === "quit") {
          await wan.close();
          return;
        } else if (words[0] === "partition" || words[0] === "heal") {
          await wan[words[0]](words[1], words[2]);
        } else if (words[0] === "set" && words.length === 3) {
          const { a, b, ...profile } = parseLinkSpec(
            `${words[1]}:${words[2]}`,
          );
          await wan.setLink(a, b, profile);
        } else if (words[0] === "show") {
          console.log(wan.describe());
        } else {
          console.error(
            `unknown command "${
              words.join(" ")
            }": partition A [B], heal A [B], set A-B PROFILE, show, quit`,
          );
        }
      } catch (e) {
        console.error(`error: ${(e as Error).message}`);
      }
    }
  }
  // Standard input ended: run until the signal handler removes the wan and exits.
  setInterval(() => {}, 1 << 30);
}

if (import.meta.main) {
  await runMain(USAGE, async () => {
    const [command, ...rest] = Deno.args;
    if (command === "up") {
      await up(rest);
    } else if (command === "list") {
      for (const run of await listRuns()) {
        console.log(
          `${run.id}  pid ${run.pid} ${run.alive ? "alive" : "stale"}  ${
            run.namespaces.join(" ")
          }`,
        );
      }
    } else if (command === "down") {
      const args = parseArgs(rest, [], ["all"]);
      const removed = await removeStale({
        all: args.options.has("all"),
        ids: args.positional,
      });
      console.log(
        removed.length ? `removed ${removed.join(", ")}` : "nothing to remove",
      );
    } else if (command === "--help" || command === "help") {
      console.log(USAGE);
    } else {
      throw new UsageError(
        command ? `unknown command "${command}"` : "no command given",
      );
    }
  });
}
