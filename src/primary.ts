/**
 * The primary: captures its source once per epoch (on an interval or on
 * demand), encodes what changed, appends the frames to its retained log —
 * from which every downstream link sends at its own pace — and commits each
 * epoch once its ack policy is met.
 * @module
 */

import { PeerAuth } from "./peer_auth.ts";
import { EpochEncoder } from "./encoder.ts";
import { AutoLevel } from "./auto_level.ts";
import type { Level } from "./level.ts";
import type { Source } from "./source.ts";
import {
  type AckPolicy,
  checkAckPolicy,
  committedEpoch,
  formatAckPolicy,
} from "./ack_policy.ts";
import { AckLevel, type ImageDigestInfo } from "./protocol.ts";
import { imageDigestInfo } from "./_upstream.ts";
import { RetainedLog } from "./retained_log.ts";
import { type LinkOwner, PeerLink, type PeerLinkOptions } from "./peer_link.ts";
import { verifyPeers, type VerifyReport } from "./verify.ts";
import type { BaseSnapshot } from "./base_sync.ts";
import type { Zstd } from "./compress/zstd.ts";
import { SampleWindow } from "./_window.ts";
import { faultPoint } from "./_fault.ts";

/** Options of {@linkcode Primary}. */
export interface PrimaryOptions {
  /** Downstream peer URLs (backups or relays). */
  to: string[];
  /** Default: all peers, at applied. */
  ack?: AckPolicy;
  /**
   * Codec level, or `auto`: per epoch the level expected to commit soonest
   * from what recent epochs measured (see `auto_level.ts`). Default fast.
   */
  level?: Level | "auto";
  /** Checkpoint every this many ms; null: only on demand. Default 1000. */
  intervalMs?: number | null;
  /** Token and certificates: what peers must present, and what this role presents. Default: none. */
  auth?: PeerAuth;
  /** Bound of the retained log in bytes. Default 256 MiB. */
  logBytes?: number;
  /** Epochs encoded but not committed before capturing waits. Default 16. */
  maxInFlight?: number;
  link?: PeerLinkOptions;
  /** Start from this committed state instead of all-zero epoch 0 (a promoted backup). */
  seed?: { epoch: number; contents: Uint8Array[]; lengths?: number[] };
  /**
   * The cluster term this primary was elected in (HELLO.term; downstreams
   * that saw a higher one refuse it). Default 0: no cluster.
   */
  term?: number;
  /** Log lines. Default: stderr. */
  note?: (line: string) => void;
}

/** Committed checkpoints listed per epoch in /status (`recent`). */
const RECENT = 64;

/** Figures of one committed checkpoint. */
export interface CheckpointResult {
  epoch: number;
  dirtyPages: number;
  /** 4096 × dirty pages: what plain dirty-page replication sends. */
  dirtyBytes: number;
  wireBytes: number;
  /** Source pause (capture) time, ms. */
  pauseMs: number;
  encodeMs: number;
  /** The codec level the epoch was encoded at (with `auto`, chosen for it). */
  level: Level;
  /**
   * Due to capture start, ms: how long the checkpoint waited for the previous
   * one's capture and encode and for room in the in-flight window
   * (`maxInFlight`). Due is the interval tick that asked for it (a tick missed
   * while the previous checkpoint ran: the first one missed), or the moment
   * {@linkcode Primary.checkpoint} was called.
   */
  captureWaitMs: number;
  /**
   * Due to commit, ms: `captureWaitMs` plus capture, encode, sending and the
   * acks. The clock starts when the checkpoint was due, not when its capture
   * began, so that time spent queued behind a slow checkpoint or a full
   * in-flight window counts: that is how long the user's state went
   * unprotected past the moment it should have been.
   */
  commitMs: number;
}

interface InFlight {
  epoch: number;
  /** When the checkpoint was due (performance.now()). */
  due: number;
  /** When its frames were ready to send (performance.now()). */
  encoded: number;
  result: CheckpointResult;
  resolve: (r: CheckpointResult) => void;
  reject: (e: Error) => void;
  promise: Promise<CheckpointResult>;
}

/**
 * @example
 * ```ts
 * const source = await openSource("synthetic:images=2,size=8M");
 * const primary = new Primary(source, { to: ["tcp://127.0.0.1:7001"], intervalMs: 100 });
 * primary.onCommit((r) => console.log(`epoch ${r.epoch} committed`));
 * primary.start();
 * ```
 */
export class Primary implements LinkOwner {
  readonly role = "primary";
  readonly retained: RetainedLog;
  readonly encoder: EpochEncoder;
  /** With `--level auto`: the chooser of each epoch's level; else null. */
  readonly auto: AutoLevel | null;
  readonly zstd: Zstd;
  readonly auth: PeerAuth;
  readonly blockSize: number;
  readonly durable: boolean;
  readonly ackLevel: AckLevel;
  readonly policy: AckPolicy;
  readonly links: PeerLink[];
  readonly pauses = new SampleWindow();
  /** Due → commit, ms (see {@linkcode CheckpointResult.commitMs}). */
  readonly commitLatencies = new SampleWindow();
  /** Due → capture start, ms (see {@linkcode CheckpointResult.captureWaitMs}). */
  readonly captureWaits = new SampleWindow();
  committed = 0;
  bytesBefore = 0;
  bytesAfter = 0;
  #inFlight: InFlight[] = [];
  #listeners: ((r: CheckpointResult) => void)[] = [];
  #busy: Promise<unknown> = Promise.resolve();
  #releasing: Promise<void> = Promise.resolve();
  #timer: Promise<void> | null = null;
  #stopped = false;
  #commitWaiters: (() => void)[] = [];
  #term: number;
  #fenced: string | null = null;
  /** The cluster it leads, for /status (set by whoever took the leader lease). */
  cluster: { cluster: string; name: string } | null = null;
  /** The last RECENT committed checkpoints' figures, oldest first, for /status. */
  #recent: { epoch: number; captureWaitMs: number; commitMs: number }[] = [];
  #note: (line: string) => void;

  constructor(readonly source: Source, readonly options: PrimaryOptions) {
    this.#term = options.term ?? 0;
    this.policy = options.ack ?? {
      who: { kind: "all" },
      level: AckLevel.applied,
    };
    checkAckPolicy(this.policy, options.to.length);
    if (source.held && this.policy.who.kind === "none") {
      throw new RangeError(
        `--ack none with ${source.held.what} held: no epoch would ever commit, so nothing held would ever be released; give --ack all, quorum:K or any`,
      );
    }
    if (options.to.length === 0 && this.policy.who.kind !== "none") {
      throw new RangeError(
        `no downstream peers: --to is needed unless --ack none`,
      );
    }
    const level = options.level ?? "fast";
    // auto: the encoder indexes every block (as max does), for both levels.
    this.encoder = new EpochEncoder(source.images, {
      level: level === "auto" ? "max" : level,
    });
    this.auto = level === "auto" ? new AutoLevel() : null;
    this.zstd = this.encoder.zstd;
    this.auth = options.auth ?? PeerAuth.none();
    this.blockSize = this.encoder.hasher.blockSize;
    this.durable = this.policy.level === AckLevel.durable;
    this.ackLevel = this.policy.level;
    this.#note = options.note ?? ((l) => console.error(l));
    if (options.seed) {
      this.encoder.seed(
        options.seed.epoch,
        options.seed.contents,
        options.seed.lengths,
      );
    }
    this.committed = this.encoder.epoch;
    this.retained = new RetainedLog(options.logBytes ?? 256 << 20);
    this.retained.restart(this.encoder.epoch, this.#digests());
    this.links = options.to.map((url) => new PeerLink(url, this, options.link));
  }

  #started = false;

  /**
   * Starts sending to one more peer (a follower that asked for this
   * primary's epochs); false if it is a peer already. It is brought up to
   * date like any peer: catch-up, rejoin by block hashes or base sync. The
   * ack policy counts it from then on.
   */
  addPeer(url: string): boolean {
    if (this.links.some((l) => l.url === url)) return false;
    const link = new PeerLink(url, this, this.options.link);
    this.links.push(link);
    if (this.#started && !this.#stopped) link.start();
    return true;
  }

  /**
   * Stops sending to a peer added with {@linkcode Primary.addPeer} that is
   * gone; the ack policy no longer counts it. False if it is not a peer.
   */
  async removePeer(url: string): Promise<boolean> {
    const i = this.links.findIndex((l) => l.url === url);
    if (i < 0) return false;
    const [link] = this.links.splice(i, 1);
    await link.stop();
    // Commits that waited for it may be due now.
    this.onAck(link);
    return true;
  }

  /** Starts the links and, with an interval, the epoch loop. */
  start(): void {
    this.#started = true;
    for (const l of this.links) l.start();
    const interval = this.options.intervalMs === undefined
      ? 1000
      : this.options.intervalMs;
    if (interval !== null) this.#timer ??= this.#loop(interval);
  }

  /** Registers a callback for every committed epoch, in order. */
  onCommit(listener: (r: CheckpointResult) => void): void {
    this.#listeners.push(listener);
  }

  /** The newest epoch encoded. */
  get epoch(): number {
    return this.encoder.epoch;
  }

  /**
   * Takes one checkpoint now; resolves with its figures once it is committed.
   * Checkpoints never overlap: a call while one is being taken waits for it
   * (and that wait counts in its commit latency: it is due at the call).
   */
  checkpoint(): Promise<CheckpointResult> {
    return this.#takeNext(performance.now()).then((f) => f.promise);
  }

  #takeNext(due: number): Promise<InFlight> {
    const taken = this.#busy.then(() => this.#take(due));
    this.#busy = taken.catch(() => {});
    return taken;
  }

  async #take(due: number): Promise<InFlight> {
    if (this.#stopped) throw new Error("the primary is stopped");
    const maxInFlight = this.options.maxInFlight ?? 16;
    let warned = false;
    while (this.encoder.epoch - this.committed >= maxInFlight) {
      if (!warned) {
        this.#note(
          `epoch ${this.encoder.epoch} waits: ${maxInFlight} epochs not committed (policy ${
            formatAckPolicy(this.policy)
          })`,
        );
        warned = true;
      }
      await new Promise<void>((r) => this.#commitWaiters.push(r));
      if (this.#stopped) throw new Error("the primary is stopped");
    }
    const t0 = performance.now();
    const captureWaitMs = t0 - due;
    this.captureWaits.add(captureWaitMs);
    const { pauseMs, dirtyPages, lengths } = await this.source.capture(
      this.encoder.captureBuffers,
      this.encoder.epoch + 1,
    );
    if (this.auto) this.encoder.setLevel(this.auto.next());
    const level = this.encoder.level;
    const { epoch, frames, stats } = this.encoder.encode(
      this.encoder.captureBuffers,
      dirtyPages,
      lengths,
    );
    faultPoint("primary.encoded");
    const bytes = frames.reduce((n, f) => n + f.length, 0);
    this.auto?.encoded(level, stats.dirtyPages * 4096, stats.totalMs, bytes);
    this.retained.append({ epoch, frames, bytes, images: this.#digests() });
    this.pauses.add(pauseMs);
    this.bytesBefore += stats.dirtyPages * 4096;
    this.bytesAfter += bytes;
    let resolve!: (r: CheckpointResult) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<CheckpointResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const entry: InFlight = {
      epoch,
      due,
      encoded: performance.now(),
      resolve,
      reject,
      promise,
      result: {
        epoch,
        dirtyPages: stats.dirtyPages,
        dirtyBytes: stats.dirtyPages * 4096,
        wireBytes: bytes,
        pauseMs,
        encodeMs: stats.totalMs,
        level,
        captureWaitMs,
        commitMs: 0,
      },
    };
    this.#inFlight.push(entry);
    this.#advance();
    return entry;
  }

  async #loop(interval: number): Promise<void> {
    let next = performance.now();
    let due = next;
    while (!this.#stopped) {
      try {
        // Wait for the capture and encode, not the commit: the next capture starts on time.
        const f = await this.#takeNext(due);
        f.promise.catch(() => {});
      } catch (e) {
        if (this.#stopped) break;
        this.#note(`checkpoint failed: ${(e as Error).message}`);
      }
      next += interval;
      // Due at its tick, however late it is taken: a late checkpoint is taken
      // at once (standing for every tick missed meanwhile, due at the first)
      // and the ticks after it count from then.
      due = next;
      const wait = next - performance.now();
      if (wait < 0) next = performance.now();
      await new Promise((r) => setTimeout(r, Math.max(0, wait)));
    }
  }

  onAck(_link: PeerLink): void {
    this.#advance();
  }

  /** The cluster term of its stream (0: no cluster). */
  get term(): number {
    return this.#term;
  }

  /** Why this primary is fenced (it may no longer commit), or null. */
  get fenced(): string | null {
    return this.#fenced;
  }

  /**
   * Stops committing at once (its lease is gone, see `cluster.ts`): no epoch
   * is reported committed and no held output released from now on, however
   * many acks arrive, until {@linkcode Primary.unfence}. Capture and sending
   * go on; the downstreams decide, by term, whether to take what it sends.
   */
  fence(reason: string): void {
    if (this.#fenced) return;
    this.#fenced = reason;
    this.#note(`fenced: ${reason}: committing nothing from now on`);
  }

  /** Commits again (its term turned out still current). */
  unfence(): void {
    if (!this.#fenced) return;
    this.#fenced = null;
    this.#note(`term ${this.#term} still current: committing again`);
    this.#advance();
  }

  #advance(): void {
    if (this.#fenced) return;
    const level = this.policy.level;
    const acked = this.links.map((l) => l.acks.epochs[level]);
    const c = Math.min(
      this.encoder.epoch,
      committedEpoch(this.policy.who, acked, this.encoder.epoch),
    );
    if (c <= this.committed) return;
    this.committed = c;
    faultPoint("primary.committing");
    const held = this.source.held;
    if (held) {
      // Output commit: what the source held for epochs up to c goes out now, in order.
      this.#releasing = this.#releasing.then(() => held.committed(c)).catch(
        (e) =>
          this.#note(
            `releasing ${held.what} of epoch ${c} failed: ${
              (e as Error).message
            }`,
          ),
      );
    }
    const now = performance.now();
    while (this.#inFlight.length && this.#inFlight[0].epoch <= c) {
      const f = this.#inFlight.shift()!;
      f.result.commitMs = now - f.due;
      this.auto?.committed(f.result.wireBytes, f.encoded, now);
      this.commitLatencies.add(f.result.commitMs);
      this.#recent.push({
        epoch: f.epoch,
        captureWaitMs: f.result.captureWaitMs,
        commitMs: f.result.commitMs,
      });
      if (this.#recent.length > RECENT) this.#recent.shift();
      for (const l of this.#listeners) l(f.result);
      f.resolve(f.result);
    }
    const w = this.#commitWaiters;
    this.#commitWaiters = [];
    for (const r of w) r();
  }

  #digests(): ImageDigestInfo[] {
    return this.encoder.images.map(imageDigestInfo);
  }

  images(): { id: string; size: number }[] {
    return this.source.images.map((s) => ({ id: s.id, size: s.size }));
  }

  blockHashes(): { epoch: number; hashes: Uint32Array[] } {
    return {
      epoch: this.encoder.epoch,
      hashes: this.encoder.images.map((i) => i.hashes),
    };
  }

  snapshot(): BaseSnapshot {
    return {
      epoch: this.encoder.epoch,
      images: this.#digests(),
      contents: this.encoder.images.map((i) => i.committed.slice(0, i.size)),
    };
  }

  note(line: string): void {
    this.#note(line);
  }

  /** Figures for /status. */
  status(): Record<string, unknown> {
    return {
      role: this.role,
      term: this.#term,
      fenced: this.#fenced !== null,
      ...(this.cluster
        ? { cluster: { ...this.cluster, leader: this.cluster.name } }
        : {}),
      ...(this.#fenced ? { fencedBecause: this.#fenced } : {}),
      source: this.source.name,
      level: this.auto ? "auto" : this.encoder.level,
      ...(this.auto ? { auto: this.auto.estimates } : {}),
      policy: formatAckPolicy(this.policy),
      epoch: this.encoder.epoch,
      committedEpoch: this.committed,
      images: this.#digests(),
      bytesBeforeEncoding: this.bytesBefore,
      bytesAfterEncoding: this.bytesAfter,
      pauseMs: {
        p50: this.pauses.quantile(0.5),
        p99: this.pauses.quantile(0.99),
      },
      // Both from the moment each checkpoint was due (its interval tick),
      // so queueing behind a slow capture or a full in-flight window shows
      // here instead of being hidden before the clock starts.
      commitMs: {
        p50: this.commitLatencies.quantile(0.5),
        p99: this.commitLatencies.quantile(0.99),
      },
      captureWaitMs: {
        p50: this.captureWaits.quantile(0.5),
        p99: this.captureWaits.quantile(0.99),
      },
      // Per epoch, for a window of one's own (the quantiles above are over
      // the last 1024 epochs): a benchmark polls these.
      recent: this.#recent.map((r) => ({
        epoch: r.epoch,
        captureWaitMs: Math.round(r.captureWaitMs * 100) / 100,
        commitMs: Math.round(r.commitMs * 100) / 100,
      })),
      log: {
        first: this.retained.first,
        last: this.retained.last,
        bytes: this.retained.bytes,
      },
      peers: this.links.map((l) => l.status()),
      ...(this.source.held ? { held: this.source.held.status() } : {}),
    };
  }

  /** Online verify of every peer; `repair` rejoins the ones that differ (`verify.ts`). */
  async verify(options: { repair: boolean }): Promise<VerifyReport> {
    const report = await verifyPeers(this.links, options);
    for (const p of report.peers) {
      this.#note(
        "error" in p
          ? `verify: peer ${p.url}: ${p.error}`
          : `verify: peer ${p.url} at epoch ${p.epoch}: ${p.outOfSyncBytes} bytes out of sync in ${p.differing.length} ranges (${
            p.gbPerSecond.toFixed(2)
          } GB/s)${
            p.repaired
              ? `; repaired, now ${p.repaired.outOfSyncBytes} bytes out of sync`
              : ""
          }`,
      );
    }
    return report;
  }

  /** Stops the loop and the links; in-flight checkpoints stay uncommitted. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const r of this.#commitWaiters) r();
    this.#commitWaiters = [];
    await this.#timer;
    for (const f of this.#inFlight.splice(0)) {
      f.reject(
        new Error(`epoch ${f.epoch} not committed: the primary stopped`),
      );
    }
    await Promise.all(this.links.map((l) => l.stop()));
    await this.source.close();
    this.encoder.close();
  }
}
