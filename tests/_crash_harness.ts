/**
 * The crash harness: real topologies of role processes (a primary with a
 * seeded synthetic source, one relay, two or three backups, over TCP on
 * loopback), one of which is killed by SIGKILL at a chosen instant and
 * restarted with the same arguments and store; then the backups' stores are
 * checked against an independent model of every checkpoint.
 *
 * One trial:
 *
 * 1. Start the backups, the relay and the primary (`--interval 50`), the
 *    victim armed with `PATCHWIRE_FAULT` when the instant is a fault point.
 * 2. Kill the victim: a fault point kills it from inside (`src/_fault.ts`),
 *    or, for the instant `random`, the harness sends SIGKILL a random time
 *    after the first commit.
 * 3. Check what the crash left, before restarting:
 *    - a killed backup: a copy of its store directory is recovered the way
 *      `BackupStore.open` recovers it, and its `ID.img` files must be
 *      byte for byte the model's images of the epoch its `state.json`
 *      names; under `durable`, that epoch must be at least the last epoch
 *      the relay saw it ack as durable (an ack is a promise);
 *    - a killed relay or primary: the backups the ack policy names must hold
 *      the last epoch the primary reported committed.
 * 4. Restart the victim; measure its recovery (below); let replication run
 *    on, auditing commits; stop every process cleanly (SIGTERM).
 * 5. Check every backup's store at rest: its `ID.img` files equal the model's
 *    images of its `state.json` epoch (else: torn images), and enough backups
 *    for the policy hold the last committed epoch (else: lost epochs).
 *
 * **The model.** The synthetic source is deterministic: epoch `e ≥ 1` is the
 * seeded workload after `e - 1` steps, epoch 0 all zeros, whatever the
 * timing and even across a primary restart (which replays the same history).
 * The harness computes those images itself, so a backup's files are checked
 * against what the primary captured, not against digests the system reports.
 *
 * **The record of committed epochs** is the primary's stdout: one
 * `epoch N committed` line per commit, per primary process. A restarted
 * primary has no store: it starts a new history from epoch 0 and base-syncs
 * its peers to it. So the old process's commits are checked when it dies
 * (the backups, all alive, must hold them), the new one's from then on.
 * Backups may also hold an epoch newer than the last commit reported (acked,
 * but the primary died or stopped before it counted the acks): still a whole
 * checkpoint of the model, so not torn.
 *
 * **Commit audits.** While no role is down or recovering, every ~150 ms the
 * harness takes the last epoch C the primary has reported committed, then
 * asks every backup how far it is (`epoch` at `applied`, `storedEpoch` at
 * `durable`); the policy's number of backups (all: every one, `quorum:K`: K,
 * `any`: one) must hold C. Reports only grow, so a commit reported before
 * the question must be held at the answer. (`received` promises nothing
 * across a crash; it is checked only at rest.)
 *
 * **Lost epochs** of a trial: the most committed epochs any check found
 * missing (committed epoch minus the epoch the policy's backups held).
 *
 * **Recovery time**: from spawning the replacement process until the
 * restarted role is back in the replication: the primary has committed an
 * epoch captured after the restart began, and the restarted role holds it
 * (a backup applied it — and stored it under `durable`; a relay acked it
 * upstream at the policy's level; a restarted primary: its first commit).
 * It includes the process start-up and the peers' reconnect back-off.
 * @module
 */

import { BackupStore } from "../src/backup_store.ts";
import {
  parseSyntheticSpec,
  Rng,
  SyntheticWorkload,
} from "../src/synthetic.ts";
import { createBlockHasher } from "../src/hash/block_hash.ts";
import { ImageState } from "../src/image_state.ts";
import { bytesEqual } from "../src/replay.ts";
import { rolePermissions } from "../tools/_role_permissions.ts";
import { PortRange } from "../tools/_role_process.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** A role the harness kills. */
export type Role = "primary" | "relay" | "backup";

/** The roles, in table order. */
export const ROLES: readonly Role[] = ["primary", "relay", "backup"];

/** An instant to kill a role at: `random`, or a fault point of `src/_fault.ts`. */
export interface CrashInstant {
  role: Role;
  /** "random" (SIGKILL from outside) or the fault point's name. */
  instant: string;
  /** A fault point is armed for its Nth pass, N drawn from 1..maxCount. */
  maxCount: number;
  /** Reached only when backups fsync (`durable`). */
  durableOnly?: boolean;
}

/**
 * Every instant, in table order. Counts are chosen so the point is reached
 * within a second or two of replication at 50 ms epochs: a backup commits
 * its store about every 100 ms at `applied` (every epoch at `durable`), and
 * replaces it (base sync) once, at its first epoch.
 */
export const INSTANTS: readonly CrashInstant[] = [
  { role: "primary", instant: "random", maxCount: 0 },
  { role: "primary", instant: "send.mid-frame", maxCount: 60 },
  { role: "primary", instant: "primary.encoded", maxCount: 30 },
  { role: "primary", instant: "primary.committing", maxCount: 30 },
  { role: "relay", instant: "random", maxCount: 0 },
  { role: "relay", instant: "send.mid-frame", maxCount: 80 },
  { role: "relay", instant: "relay.forward", maxCount: 30 },
  { role: "backup", instant: "random", maxCount: 0 },
  { role: "backup", instant: "send.mid-frame", maxCount: 40 },
  { role: "backup", instant: "store.journal.unsealed", maxCount: 12 },
  { role: "backup", instant: "store.journal.written", maxCount: 12 },
  { role: "backup", instant: "store.apply.mid", maxCount: 12 },
  {
    role: "backup",
    instant: "store.images.fsync",
    maxCount: 12,
    durableOnly: true,
  },
  { role: "backup", instant: "store.rename.before", maxCount: 12 },
  { role: "backup", instant: "store.state.renamed", maxCount: 12 },
  { role: "backup", instant: "store.replace.staged", maxCount: 1 },
  { role: "backup", instant: "store.replace.switched", maxCount: 1 },
];

/** The relay's ack policies trials rotate through (the primary acks `all` at the same level). */
export const POLICIES: readonly { policy: string; backups: number }[] = [
  { policy: "all/applied", backups: 2 },
  { policy: "all/durable", backups: 2 },
  { policy: "quorum:2/durable", backups: 3 },
  { policy: "any/applied", backups: 2 },
  { policy: "all/received", backups: 2 },
];

/** What one trial does; a function of the seed and the trial's index alone. */
export interface TrialPlan {
  index: number;
  /** Seed of this trial's choices and of its synthetic source. */
  seed: number;
  role: Role;
  instant: string;
  /** Fault point pass that kills (0 for `random`). */
  count: number;
  /** `random`: ms after the first commit to send SIGKILL. */
  delayMs: number;
  /** ms the victim stays down before it is restarted. */
  downMs: number;
  /** The relay's policy, e.g. `quorum:2/durable`. */
  policy: string;
  backups: number;
  /** Which backup is the victim (role `backup`). */
  victim: number;
  /** The primary's source spec. */
  source: string;
}

/** What one trial found. */
export interface TrialRecord {
  plan: TrialPlan;
  /** False if a fault point was not reached in time (then SIGKILL came from outside). */
  reached: boolean;
  /** Images (over every backup and check) that equal no checkpoint of their epoch. */
  tornImages: number;
  /** The most committed epochs a check found missing from the backups the policy names. */
  lostEpochs: number;
  /** Restart to back in sync, ms; null if it never got there. */
  recoveryMs: number | null;
  /** Last epoch the (last) primary reported committed. */
  committed: number;
  /** Each backup's stored epoch at the end. */
  storedEpochs: number[];
  /** Epoch the killed backup's store recovered to (role `backup`; -1: empty). */
  recoveredEpoch: number | null;
  /** What recovering the killed backup's store did: `journal/replace` as `BackupStore.recovery` says. */
  storeRecovery: string | null;
  /** Epochs a killed backup acked as applied but had not stored (allowed below `durable`). */
  rolledBack: number;
  /** Everything that went wrong, each naming what was expected. Empty: a clean trial. */
  problems: string[];
  /** Wall time of the trial, ms. */
  ms: number;
  /** Last output lines of every process, when the trial had problems. */
  logs?: string;
}

/** One row of the table: a role and instant, over its trials. */
export interface SummaryRow {
  role: Role;
  instant: string;
  trials: number;
  tornImages: number;
  lostEpochs: number;
  /** Trials with problems other than torn images or lost epochs (a role that cannot restart, a stuck trial, an unreached fault point). */
  failures: number;
  recoveryP50: number | null;
  recoveryP99: number | null;
}

/** Options of {@linkcode runCrashTrials}. */
export interface CrashTrialOptions {
  /** Number of trials (indices 0..trials-1, or `first`..). */
  trials: number;
  /** Seed of every choice; the same seed gives the same plans. */
  seed: number;
  /** First trial index. Default 0 (a single trial reruns as `{ first: I, trials: 1 }`). */
  first?: number;
  /** Only kill these roles. Default: all three. */
  roles?: readonly Role[];
  /** Called after every trial. */
  onTrial?: (record: TrialRecord) => void;
}

/** The result of {@linkcode runCrashTrials}. */
export interface CrashTrialsResult {
  records: TrialRecord[];
  summary: SummaryRow[];
}

/** mulberry32 seeding: a well-mixed seed for trial `index`. */
function trialSeed(seed: number, index: number): number {
  let h = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^
    Math.imul(index, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x27d4eb2f);
  return (h ^ (h >>> 15)) >>> 0;
}

/**
 * The plan of trial `index`: instants in turn (so any 17 consecutive trials
 * cover every one), the rest drawn from the trial's seed.
 */
export function planTrial(
  seed: number,
  index: number,
  roles: readonly Role[] = ROLES,
): TrialPlan {
  const instants = INSTANTS.filter((i) => roles.includes(i.role));
  if (instants.length === 0) {
    throw new RangeError(
      `no crash instants for roles ${roles.join(", ")}; expected some of ${
        ROLES.join(", ")
      }`,
    );
  }
  const inst = instants[index % instants.length];
  const s = trialSeed(seed, index);
  const rng = new Rng(s);
  const policies = POLICIES.filter((p) =>
    !inst.durableOnly || p.policy.endsWith("/durable")
  );
  const { policy, backups } = policies[rng.int(policies.length)];
  return {
    index,
    seed: s,
    role: inst.role,
    instant: inst.instant,
    count: inst.maxCount > 0 ? 1 + rng.int(inst.maxCount) : 0,
    delayMs: rng.int(1500),
    downMs: rng.int(400),
    policy,
    backups,
    victim: rng.int(backups),
    source: `synthetic:images=2,size=4M,seed=${1 + (s % 100000)},dirty=0.02`,
  };
}

/** Runs trials one after another; every process and directory is gone when it returns. */
export async function runCrashTrials(
  options: CrashTrialOptions,
): Promise<CrashTrialsResult> {
  const records: TrialRecord[] = [];
  const first = options.first ?? 0;
  for (let i = first; i < first + options.trials; i++) {
    const record = await runTrial(planTrial(options.seed, i, options.roles));
    records.push(record);
    options.onTrial?.(record);
  }
  return { records, summary: summarize(records) };
}

/** Nearest-rank quantile of `values` (which it sorts); null if empty. */
function quantile(values: number[], q: number): number | null {
  if (values.length === 0) return null;
  values.sort((a, b) => a - b);
  return values[Math.min(values.length - 1, Math.ceil(q * values.length) - 1)];
}

/** Table rows per role and instant, in {@linkcode INSTANTS} order. */
export function summarize(records: TrialRecord[]): SummaryRow[] {
  const rows: SummaryRow[] = [];
  for (const inst of INSTANTS) {
    const rs = records.filter((r) =>
      r.plan.role === inst.role && r.plan.instant === inst.instant
    );
    if (rs.length === 0) continue;
    const rec = rs.map((r) => r.recoveryMs).filter((m): m is number =>
      m !== null
    );
    rows.push({
      role: inst.role,
      instant: inst.instant,
      trials: rs.length,
      tornImages: rs.reduce((n, r) => n + r.tornImages, 0),
      lostEpochs: rs.reduce((n, r) => n + r.lostEpochs, 0),
      failures: rs.filter((r) =>
        r.problems.length > 0 && r.tornImages === 0 && r.lostEpochs === 0
      ).length,
      recoveryP50: quantile([...rec], 0.5),
      recoveryP99: quantile([...rec], 0.99),
    });
  }
  return rows;
}

/** The summary as a Markdown table, with a total row. */
export function formatTable(rows: SummaryRow[]): string {
  const ms = (v: number | null) => v === null ? "–" : `${Math.round(v)} ms`;
  const lines = [
    "| role killed | instant | trials | torn images | lost epochs | failures | recovery p50 | recovery p99 |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.role} | ${r.instant} | ${r.trials} | ${r.tornImages} | ${r.lostEpochs} | ${r.failures} | ${
        ms(r.recoveryP50)
      } | ${ms(r.recoveryP99)} |`,
    );
  }
  const sum = (f: (r: SummaryRow) => number) =>
    rows.reduce((n, r) => n + f(r), 0);
  lines.push(
    `| **all** | | ${sum((r) => r.trials)} | ${sum((r) => r.tornImages)} | ${
      sum((r) => r.lostEpochs)
    } | ${sum((r) => r.failures)} | | |`,
  );
  return lines.join("\n");
}

// ---------------------------------------------------------------------------
// The model: what every epoch's images must be.

/** The synthetic source's images at any epoch, computed independently of the roles. */
class SourceModel {
  readonly #spec: string;
  readonly #hasher = createBlockHasher();
  #workload: SyntheticWorkload | null = null;
  /** Epoch the workload's images are (1 + steps taken). */
  #at = 0;
  #digests = new Map<number, { lo: number; hi: number }[]>();

  constructor(source: string) {
    this.#spec = source.slice(source.indexOf(":") + 1);
  }

  /** The images of `epoch` (valid until the next call). */
  imagesAt(epoch: number): Uint8Array[] {
    if (epoch === 0) {
      const w = this.#workload ?? this.#fresh();
      return w.images.map((i) => new Uint8Array(i.length));
    }
    if (this.#workload === null || epoch < this.#at) this.#fresh();
    while (this.#at < epoch) {
      this.#workload!.step();
      this.#at++;
    }
    return this.#workload!.images;
  }

  /** The image digests of `epoch`, as `state.json` must record them. */
  digestsAt(epoch: number): { lo: number; hi: number }[] {
    let d = this.#digests.get(epoch);
    if (!d) {
      d = this.imagesAt(epoch).map((img, i) =>
        new ImageState(`img${i}`, img.length, this.#hasher, { initial: img })
          .digestValue()
      );
      this.#digests.set(epoch, d);
    }
    return d;
  }

  #fresh(): SyntheticWorkload {
    this.#workload = new SyntheticWorkload(parseSyntheticSpec(this.#spec));
    this.#at = 1;
    return this.#workload;
  }
}

/** What a store directory holds, checked against the model. */
interface StoreCheck {
  /** Its state.json epoch; -1 for an empty store. */
  epoch: number;
  torn: number;
  problems: string[];
}

/**
 * Checks the files of a store at rest: state.json names an epoch and the
 * model's digests of it, and each `ID.img` is byte for byte that epoch's
 * image.
 */
function checkStoreFiles(
  dir: string,
  model: SourceModel,
  who: string,
): StoreCheck {
  let text: string;
  try {
    text = Deno.readTextFileSync(`${dir}/state.json`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      return { epoch: -1, torn: 0, problems: [] };
    }
    throw e;
  }
  const state = JSON.parse(text) as {
    epoch: number;
    images: { id: string; size: number; digestLo: number; digestHi: number }[];
  };
  const problems: string[] = [];
  let torn = 0;
  const epoch = state.epoch;
  const want = model.imagesAt(epoch).map((i) => i.slice());
  const digests = model.digestsAt(epoch);
  if (state.images.length !== want.length) {
    return {
      epoch,
      torn: want.length,
      problems: [
        `${who}: state.json lists ${state.images.length} images; expected ${want.length}`,
      ],
    };
  }
  state.images.forEach((im, i) => {
    const path = `${dir}/${im.id}.img`;
    let bytes: Uint8Array;
    try {
      bytes = Deno.readFileSync(path);
    } catch (e) {
      torn++;
      problems.push(`${who}: ${path} unreadable: ${(e as Error).message}`);
      return;
    }
    if (im.id !== `img${i}` || !bytesEqual(bytes, want[i])) {
      torn++;
      problems.push(
        `${who}: ${path} is not image img${i} of epoch ${epoch} (the epoch its state.json names)${
          nearestEpoch(model, i, bytes, epoch)
        }`,
      );
    } else if (
      (im.digestLo >>> 0) !== digests[i].lo ||
      (im.digestHi >>> 0) !== digests[i].hi
    ) {
      torn++;
      problems.push(
        `${who}: state.json records a digest for ${im.id} at epoch ${epoch} that is not the digest of its contents`,
      );
    }
  });
  return { epoch, torn, problems };
}

/** Which nearby epoch's image `bytes` is, if any: for the message about a torn image. */
function nearestEpoch(
  model: SourceModel,
  slot: number,
  bytes: Uint8Array,
  epoch: number,
): string {
  for (let e = Math.max(0, epoch - 20); e <= epoch + 20; e++) {
    if (e !== epoch && bytesEqual(bytes, model.imagesAt(e)[slot])) {
      return `; it is epoch ${e}'s`;
    }
  }
  return "; it is no epoch's within 20 of it (mixed or corrupt)";
}

// ---------------------------------------------------------------------------
// Processes.

const KEEP_LINES = 200;

/** One role process, its output read line by line. */
class RoleProcess {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  /** `epoch N committed` lines (a primary), and when each arrived. */
  readonly commits: number[] = [];
  readonly commitTimes: number[] = [];
  readonly spawnedAt = performance.now();
  exit: Deno.CommandStatus | null = null;
  readonly exited: Promise<Deno.CommandStatus>;
  #waiters: (() => void)[] = [];

  constructor(
    readonly name: string,
    readonly role: Role,
    readonly args: string[],
    fault: string | null,
  ) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...rolePermissions(role),
        `${ROOT}tools/${role}.ts`,
        ...args,
      ],
      cwd: ROOT,
      env: { PATCHWIRE_FAULT: fault ?? "" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const readers = Promise.all([
      this.#read(this.child.stdout, true),
      this.#read(this.child.stderr, false),
    ]);
    this.exited = this.child.status.then(async (s) => {
      await readers;
      this.exit = s;
      this.#wake();
      return s;
    });
  }

  get alive(): boolean {
    return this.exit === null;
  }

  /** The last commit reported, or 0. */
  get lastCommit(): number {
    return this.commits.at(-1) ?? 0;
  }

  async #read(stream: ReadableStream<Uint8Array>, stdout: boolean) {
    let buf = "";
    const take = (line: string) => {
      this.lines.push(line);
      if (this.lines.length > 2 * KEEP_LINES) {
        this.lines.splice(0, this.lines.length - KEEP_LINES);
      }
      const m = stdout ? /^epoch (\d+) committed/.exec(line) : null;
      if (m) {
        this.commits.push(Number(m[1]));
        this.commitTimes.push(performance.now());
      }
    };
    try {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          take(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
        this.#wake();
      }
    } catch {
      // The pipe broke with the process: what was read is kept.
    }
    if (buf) take(buf);
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Resolves at the next output or exit, or after `ms`. */
  changed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.#waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** The first match of `re` in the output, waiting up to `ms`; null if it exited or timed out first. */
  async waitFor(re: RegExp, ms: number): Promise<RegExpMatchArray | null> {
    const end = performance.now() + ms;
    let from = 0;
    for (;;) {
      for (; from < this.lines.length; from++) {
        const m = this.lines[from].match(re);
        if (m) return m;
      }
      if (!this.alive || performance.now() > end) return null;
      from = Math.min(from, this.lines.length);
      await this.changed(Math.max(1, end - performance.now()));
      // Lines may have been trimmed: search the kept ones again.
      if (from > this.lines.length) from = 0;
    }
  }

  kill(signal: Deno.Signal): void {
    try {
      this.child.kill(signal);
    } catch {
      // Already gone.
    }
  }

  /** Sends `signal` and waits up to `ms` for the exit; SIGKILL after that. True if it exited in time. */
  async stop(signal: Deno.Signal, ms: number): Promise<boolean> {
    if (!this.alive) return true;
    this.kill(signal);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const inTime = await Promise.race([
      this.exited.then(() => true),
      new Promise<false>((r) => timer = setTimeout(() => r(false), ms)),
    ]);
    clearTimeout(timer);
    if (!inTime) {
      this.kill("SIGKILL");
      await this.exited;
    }
    return inTime;
  }

  tail(n = 25): string {
    return this.lines.slice(-n).map((l) => `  ${this.name}| ${l}`).join("\n");
  }
}

/**
 * Loopback ports for the roles, below the kernel's ephemeral range
 * (`ip_local_port_range`, 32768+ by default: a port the kernel picks for us
 * and we release could go to another process's outgoing connection before
 * the role binds it), handed out in order by one allocator for every trial
 * of this process: the ports of a trial, and of concurrent trials, are
 * distinct by construction (two random draws once gave the relay and the
 * primary's control plane the same port).
 */
const ports = new PortRange();

function freePort(): number {
  return ports.take();
}

type Status = Record<string, unknown>;

/** GET /status of a role; null if it does not answer. */
async function status(http: string): Promise<Status | null> {
  try {
    const res = await fetch(`http://${http}/status`, {
      signal: AbortSignal.timeout(2000),
    });
    if (!res.ok) {
      await res.body?.cancel();
      return null;
    }
    return await res.json() as Status;
  } catch {
    return null;
  }
}

function num(v: unknown): number {
  return typeof v === "number" ? v : -1;
}

/** How many backups the relay's policy needs to hold an epoch. */
function needed(policy: string, backups: number): number {
  const who = policy.split("/")[0];
  if (who === "all") return backups;
  if (who === "any") return 1;
  const m = /^quorum:(\d+)$/.exec(who);
  if (m) return Number(m[1]);
  return 0;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function copyDir(from: string, to: string): void {
  Deno.mkdirSync(to, { recursive: true });
  for (const e of Deno.readDirSync(from)) {
    if (e.isFile) Deno.copyFileSync(`${from}/${e.name}`, `${to}/${e.name}`);
  }
}

// ---------------------------------------------------------------------------
// One trial.

/** Deadlines: generous, they only turn a hang into a reported problem. */
const START_MS = 30_000;
const FAULT_MS = 15_000;
const RECOVERY_MS = 30_000;
const STOP_MS = 15_000;
/** Replication after recovery, before the clean stop. */
const RUN_ON_MS = 600;
const AUDIT_EVERY_MS = 150;
const INTERVAL_MS = 50;

/** Runs one trial of `plan`; never throws for what it finds, only reports it. */
export async function runTrial(plan: TrialPlan): Promise<TrialRecord> {
  const t0 = performance.now();
  const dir = await Deno.makeTempDir({ prefix: "patchwire-crash-" });
  const [who, levelName] = plan.policy.split("/");
  const durable = levelName === "durable";
  const model = new SourceModel(plan.source);
  const record: TrialRecord = {
    plan,
    reached: true,
    tornImages: 0,
    lostEpochs: 0,
    recoveryMs: null,
    committed: 0,
    storedEpochs: [],
    recoveredEpoch: null,
    storeRecovery: null,
    rolledBack: 0,
    problems: [],
    ms: 0,
  };
  const procs: RoleProcess[] = [];
  const lost = (missing: number, why: string) => {
    record.lostEpochs = Math.max(record.lostEpochs, missing);
    record.problems.push(why);
  };

  const backupUrls = Array.from(
    { length: plan.backups },
    () => `tcp://127.0.0.1:${freePort()}`,
  );
  const backupHttp = backupUrls.map(() => `127.0.0.1:${freePort()}`);
  const relayUrl = `tcp://127.0.0.1:${freePort()}`;
  const relayHttp = `127.0.0.1:${freePort()}`;
  const primaryHttp = `127.0.0.1:${freePort()}`;
  const stores = backupUrls.map((_, i) => `${dir}/backup${i}`);
  const args: Record<string, string[]> = {
    primary: [
      "--source",
      plan.source,
      "--to",
      relayUrl,
      "--interval",
      String(INTERVAL_MS),
      "--ack",
      "all",
      "--ack-level",
      levelName,
      "--http",
      primaryHttp,
    ],
    relay: [
      "--listen",
      relayUrl,
      "--to",
      backupUrls.join(","),
      "--ack",
      who,
      "--ack-level",
      levelName,
      "--http",
      relayHttp,
    ],
  };
  backupUrls.forEach((url, i) => {
    args[`backup${i}`] = [
      "--listen",
      url,
      "--store",
      stores[i],
      "--http",
      backupHttp[i],
    ];
  });
  const victimName = plan.role === "backup"
    ? `backup${plan.victim}`
    : plan.role;
  const fault = plan.instant === "random"
    ? null
    : `${plan.instant}:${plan.count}`;
  const current: Record<string, RoleProcess> = {};
  const spawn = (name: string, armed: string | null) => {
    const role: Role = name.startsWith("backup") ? "backup" : name as Role;
    const p = new RoleProcess(name, role, args[name], armed);
    procs.push(p);
    current[name] = p;
    return p;
  };

  // Audits run whenever no role is down or recovering: `on`, and no pause
  // began (`pauses` moved) while one was asking.
  const audits = { on: false, pauses: 0, done: false, loop: Promise.resolve() };
  const pauseAudits = () => {
    audits.on = false;
    audits.pauses++;
  };
  const audit = async () => {
    const pauses = audits.pauses;
    const c = current.primary.lastCommit;
    if (c === 0 || levelName === "received") return;
    const sts = await Promise.all(backupHttp.map((h) => status(h)));
    if (!audits.on || audits.pauses !== pauses) return;
    if (sts.some((s) => s === null)) return;
    const held = sts.map((s) => num(durable ? s!.storedEpoch : s!.epoch));
    const need = needed(plan.policy, plan.backups);
    const have = [...held].sort((a, b) => b - a)[need - 1];
    if (have < c) {
      lost(
        c - have,
        `audit: the primary reported epoch ${c} committed (${plan.policy}), but the backups held ${
          durable ? "stored" : "applied"
        } epochs ${held.join(", ")}; expected ${need} of them at ${c} or later`,
      );
    }
  };
  const auditLoop = async () => {
    while (!audits.done) {
      if (audits.on) await audit();
      await sleep(AUDIT_EVERY_MS);
    }
  };

  try {
    for (let i = 0; i < plan.backups; i++) {
      spawn(`backup${i}`, victimName === `backup${i}` ? fault : null);
    }
    spawn("relay", victimName === "relay" ? fault : null);
    spawn("primary", victimName === "primary" ? fault : null);
    const victim = current[victimName];

    // Until the first commit (or the victim's fault, which may come first).
    const firstCommit = await Promise.race([
      current.primary.waitFor(/^epoch \d+ committed/, START_MS),
      victim.exited.then(() => null),
    ]);
    if (!firstCommit && victim.alive) {
      throw new Error(
        `no commit within ${START_MS} ms of starting; expected replication to run. The primary's last lines:\n${
          current.primary.tail(12)
        }`,
      );
    }
    audits.on = victim.alive;
    audits.loop = auditLoop();

    // The kill.
    if (fault === null) {
      await Promise.race([sleep(plan.delayMs), victim.exited]);
      victim.kill("SIGKILL");
    } else {
      const inTime = await Promise.race([
        victim.exited.then(() => true),
        sleep(FAULT_MS).then(() => false),
      ]);
      if (!inTime) {
        record.reached = false;
        record.problems.push(
          `fault point ${fault} was not reached within ${FAULT_MS} ms; expected the ${victimName} to pass it ${plan.count} times (killed from outside instead)`,
        );
        victim.kill("SIGKILL");
      }
    }
    const death = await victim.exited;
    pauseAudits();
    if (death.signal !== "SIGKILL") {
      record.problems.push(
        `the ${victimName} exited with code ${death.code} (signal ${death.signal}) before its kill; expected it to run until SIGKILL. Its last lines:\n${
          victim.tail(12)
        }`,
      );
    }

    // What the crash left, before the restart.
    await checkAfterCrash(plan, record, current, {
      victimName,
      relayHttp,
      backupHttp,
      backupUrls,
      stores,
      dir,
      model,
      durable,
      levelName,
      lost,
    });

    // The restart.
    await sleep(plan.downMs);
    const before = plan.role === "primary" ? null : await status(primaryHttp);
    const target = before === null ? 1 : num(before.epoch) + 1;
    const restarted = spawn(victimName, null);
    if (plan.role === "backup") {
      const m = await restarted.waitFor(/store .* at epoch (\d+)\)/, START_MS);
      if (!m) {
        throw new Error(
          `the restarted ${victimName} did not start; expected "backup: listening on … (store … at epoch N)"`,
        );
      }
      // An empty store (-1) starts a backup at epoch 0.
      const copied = record.recoveredEpoch;
      if (copied !== null && Number(m[1]) !== Math.max(0, copied)) {
        record.problems.push(
          `the restarted ${victimName} recovered its store to epoch ${
            m[1]
          }, a copy of the same files to ${record.recoveredEpoch}; expected recovery to be deterministic`,
        );
      }
    }
    record.recoveryMs = await waitRecovered(
      plan,
      restarted,
      target,
      { primaryHttp, relayHttp, backupHttp, levelName, durable },
    );
    if (record.recoveryMs === null) {
      throw new Error(
        `the restarted ${victimName} did not get back in sync within ${RECOVERY_MS} ms; expected the primary to commit epoch ${target} with it`,
      );
    }

    // Run on, auditing, then stop cleanly.
    audits.on = true;
    await sleep(RUN_ON_MS);
    pauseAudits();
    await stopAll(record, current, plan.backups);
    record.committed = current.primary.lastCommit;

    // At rest: every store is one checkpoint; the policy's backups hold the last commit.
    const ends = stores.map((s, i) => checkStoreFiles(s, model, `backup${i}`));
    record.storedEpochs = ends.map((e) => e.epoch);
    for (const e of ends) {
      record.tornImages += e.torn;
      record.problems.push(...e.problems);
    }
    const need = needed(plan.policy, plan.backups);
    const have = [...record.storedEpochs].sort((a, b) => b - a)[need - 1];
    if (need > 0 && have < record.committed) {
      lost(
        record.committed - have,
        `at rest: the primary's last commit was epoch ${record.committed} (${plan.policy}), the stores hold epochs ${
          record.storedEpochs.join(", ")
        }; expected ${need} of them at ${record.committed} or later`,
      );
    }
  } catch (e) {
    record.problems.push((e as Error).message);
  } finally {
    pauseAudits();
    audits.done = true;
    await audits.loop;
    for (const p of procs) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    if (record.problems.length > 0) {
      record.logs = procs.map((p) => p.tail()).join("\n");
    }
    await Deno.remove(dir, { recursive: true });
    record.ms = performance.now() - t0;
  }
  return record;
}

interface CrashContext {
  victimName: string;
  relayHttp: string;
  backupHttp: string[];
  backupUrls: string[];
  stores: string[];
  dir: string;
  model: SourceModel;
  durable: boolean;
  levelName: string;
  lost: (missing: number, why: string) => void;
}

/** The checks of step 3 (see the module doc). */
async function checkAfterCrash(
  plan: TrialPlan,
  record: TrialRecord,
  current: Record<string, RoleProcess>,
  x: CrashContext,
): Promise<void> {
  if (plan.role === "backup") {
    // What the relay saw it ack: sent before it died, so promised.
    const relay = await status(x.relayHttp);
    const peers = (relay?.peers ?? []) as {
      url: string;
      acked: { applied: number; durable: number };
    }[];
    const acked = peers.find((p) => p.url === x.backupUrls[plan.victim])
      ?.acked;
    const copy = `${x.dir}/crashed-copy`;
    copyDir(x.stores[plan.victim], copy);
    let recovered: StoreCheck;
    try {
      const store = BackupStore.open(copy);
      record.storeRecovery =
        `${store.recovery.journal}/${store.recovery.replace}`;
      store.close();
      recovered = checkStoreFiles(copy, x.model, `${x.victimName} (recovered)`);
    } catch (e) {
      record.problems.push(
        `${x.victimName}: its store cannot be recovered after the crash: ${
          (e as Error).message
        }`,
      );
      return;
    } finally {
      Deno.removeSync(copy, { recursive: true });
    }
    record.recoveredEpoch = recovered.epoch;
    record.tornImages += recovered.torn;
    record.problems.push(...recovered.problems);
    // An empty store is a replica at epoch 0 (all zero), as the backup reports it.
    const held = Math.max(0, recovered.epoch);
    if (acked) {
      record.rolledBack = Math.max(0, acked.applied - held);
      if (x.durable && acked.durable > held) {
        x.lost(
          acked.durable - held,
          `${x.victimName} acked epoch ${acked.durable} as durable, but its store recovered to epoch ${held}; expected durable acks to survive a crash`,
        );
      }
    }
    return;
  }
  // A relay or the primary died: the backups, all alive, hold every commit.
  const c = current.primary.lastCommit;
  if (c === 0 || x.levelName === "received") return;
  const sts = await Promise.all(x.backupHttp.map((h) => status(h)));
  const held = sts.map((s) =>
    s ? num(x.durable ? s.storedEpoch : s.epoch) : -1
  );
  const need = needed(plan.policy, plan.backups);
  const have = [...held].sort((a, b) => b - a)[need - 1];
  if (have < c) {
    x.lost(
      c - have,
      `after the ${x.victimName} died: its primary had reported epoch ${c} committed (${plan.policy}), the backups held ${
        x.durable ? "stored" : "applied"
      } epochs ${held.join(", ")}; expected ${need} at ${c} or later`,
    );
  }
}

/** Polls until the restarted role is back in sync (see the module doc); its ms, or null on timeout. */
async function waitRecovered(
  plan: TrialPlan,
  restarted: RoleProcess,
  target: number,
  x: {
    primaryHttp: string;
    relayHttp: string;
    backupHttp: string[];
    levelName: string;
    durable: boolean;
  },
): Promise<number | null> {
  const end = restarted.spawnedAt + RECOVERY_MS;
  if (plan.role === "primary") {
    const m = await restarted.waitFor(/^epoch \d+ committed/, RECOVERY_MS);
    return m ? restarted.commitTimes[0] - restarted.spawnedAt : null;
  }
  const level = ["received", "applied", "durable"].indexOf(x.levelName);
  while (performance.now() < end && restarted.alive) {
    const p = await status(x.primaryHttp);
    if (p && num(p.committedEpoch) >= target) {
      let ok = false;
      if (plan.role === "backup") {
        const s = await status(x.backupHttp[plan.victim]);
        ok = !!s && num(s.epoch) >= target &&
          (!x.durable || num(s.storedEpoch) >= target);
      } else {
        const s = await status(x.relayHttp);
        const up = s?.ackedUpstream as Record<string, number> | undefined;
        ok = !!up &&
          num(up[["received", "applied", "durable"][level]]) >= target;
      }
      if (ok) return performance.now() - restarted.spawnedAt;
    }
    await sleep(25);
  }
  return null;
}

/** SIGTERM the primary, then the relay, then the backups; each must exit 0. */
async function stopAll(
  record: TrialRecord,
  current: Record<string, RoleProcess>,
  backups: number,
): Promise<void> {
  const stages = [
    ["primary"],
    ["relay"],
    Array.from({ length: backups }, (_, i) => `backup${i}`),
  ];
  for (const names of stages) {
    await Promise.all(names.map(async (n) => {
      const p = current[n];
      if (!p.alive) {
        record.problems.push(
          `the ${n} had exited (code ${
            p.exit!.code
          }) before the stop; expected it to run until SIGTERM. Its last lines:\n${
            p.tail(12)
          }`,
        );
        return;
      }
      const inTime = await p.stop("SIGTERM", STOP_MS);
      if (!inTime) {
        record.problems.push(
          `the ${n} did not exit within ${STOP_MS} ms of SIGTERM`,
        );
      } else if (p.exit!.code !== 0) {
        record.problems.push(
          `the ${n} exited with code ${p.exit!.code} on SIGTERM; expected 0`,
        );
      }
    }));
  }
}
