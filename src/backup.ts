/**
 * The backup: receives epochs from its upstream, verifies and applies each
 * one atomically to its store (`DIR/ID.img` always equals one committed
 * checkpoint), acks, and can be promoted to a primary that carries on from
 * its last committed epoch.
 * @module
 */

import { PeerAuth } from "./peer_auth.ts";
import { listen } from "../transports/mod.ts";
import type { TransportOptions } from "./transport.ts";
import { EpochDecoder } from "./decoder.ts";
import { BackupStore, type StoredState } from "./backup_store.ts";
import { AckLevel, type Hello, type ImageDigestInfo } from "./protocol.ts";
import {
  digestsOf,
  type ReplicaHooks,
  replicates,
  UpstreamServer,
} from "./_upstream.ts";
import { Primary, type PrimaryOptions } from "./primary.ts";
import { FileSource } from "./file_source.ts";
import { MultiSource } from "./multi_source.ts";
import { QemuSource } from "./qemu_source.ts";
import { createCodecZstd } from "./compress/zstd.ts";
import { type ResumedGuest, resumeGuest } from "./resume.ts";
import type { Source } from "./source.ts";
import { formatDigest } from "./digest.ts";
import { defaultImageLimits, type ImageLimits } from "./image_limits.ts";
import type { ClusterView } from "./cluster.ts";

/** Options of {@linkcode Backup.open}. */
export interface BackupOptions {
  /** URL to accept the upstream on. */
  listen: string;
  /** Store directory. */
  store: string;
  /** Token and certificates: what peers must present, and what this role presents. Default: none. */
  auth?: PeerAuth;
  /** What an upstream's HELLO may name. Default: this host's memory, per image and in all. */
  imageLimits?: ImageLimits;
  transport?: TransportOptions;
  /**
   * Unless the upstream asks for durable acks, epochs applied in memory reach
   * the store in batches: at most this many ms later (default 100), or
   * every 16 epochs. The store always holds one committed checkpoint; after
   * a crash the backup resumes from it and catches up from the upstream.
   */
  flushMs?: number;
  note?: (line: string) => void;
}

/** Epochs applied in memory before the store is written, at most. */
const MAX_PENDING_EPOCHS = 16;

/** A store that failed is tried again at most this often (ms), however often upstreams reconnect. */
const STORE_RETRY_MS = 1000;

/** What promotion needs: the primary's options (its source is the store's images). */
export interface PromoteOptions extends Omit<PrimaryOptions, "seed"> {
  /**
   * Resume the store's QEMU guest on this host first (see `resume.ts`), and
   * replicate that guest (a `qemu:` source on the resumed QEMU) instead of
   * the store's files: the other backups that hold the same checkpoint
   * continue from it incrementally.
   */
  resume?: PromoteResume;
}

/** The resume of {@linkcode PromoteOptions}: `resumeGuest`'s options, and what to hold. */
export interface PromoteResume {
  command?: string[];
  dir?: string;
  qmp?: string;
  mem?: string;
  image?: string;
  /** `hold=` of the new primary's source: netdevs whose output it holds. */
  hold?: string;
}

/**
 * A backup acks an epoch only while its store can take it. If a write fails
 * and the store can neither be reopened nor written after reopening (a full
 * disk, a dead device), the backup stops acking: the epoch it is sent next,
 * and every upstream connection after it, is refused with an error saying
 * why ("store DIR cannot be written: …; this backup no longer acks"), so its
 * upstream's ack policy stops counting it; its status (`storeHealthy`,
 * `storeError`), hence `/healthz` (503, with the reason) and `/metrics`
 * (`patchwire_store_healthy 0`), say so. It keeps its replica in memory and
 * tries the store again when an upstream connects (at most once a second):
 * once the store reopens and takes the replica's epoch, it is healthy and
 * acks again. (With `applied` acks, the epochs acked before a batch failed
 * were, as that level says, applied in memory only: they reach the store
 * once it recovers, or are lost with the process.)
 *
 * @example
 * ```ts
 * const backup = await Backup.open({ listen: "tcp://0.0.0.0:7001", store: "/var/lib/patchwire" });
 * // …later, when the primary is gone:
 * const primary = await backup.promote({ to: ["tcp://other-backup:7001"], intervalMs: 100 });
 * ```
 */
export class Backup implements ReplicaHooks {
  readonly role = "backup";
  readonly receivedAck = true;
  readonly auth: PeerAuth;
  readonly imageLimits: ImageLimits;
  /** The cluster it follows, for /status (see `cluster.ts` followCluster). */
  cluster: ClusterView | null = null;
  decoder: EpochDecoder | null = null;
  upstream: UpstreamServer;
  appliedEpochs = 0;
  promoted: Primary | null = null;
  /** The guest `promote` resumed, if it resumed one. */
  resumed: ResumedGuest | null = null;
  #note: (line: string) => void;

  #store: BackupStore;
  /** A new lineage's replica, until an epoch or a base sync of it verified. */
  #candidate: EpochDecoder | null = null;
  /** Set when a store write failed and the store was reopened (recovered). */
  #storeReopened = false;
  /** Why the store cannot be written, and since when; while set, nothing is acked. */
  #storeFailure: { error: string; since: string } | null = null;
  /** Times the store failed (entered that state). */
  #storeFailures = 0;
  /**
   * Images whose stored bytes did not match the digest their state
   * recorded when the store was opened (changed behind this backup's back
   * while it was stopped): reported as they are, so the upstream rejoins
   * them by block hashes. Until then the backup is unhealthy and cannot be
   * promoted.
   */
  #damaged: string[] = [];
  /** A failed store is not tried again before this (performance.now()). */
  #storeRetryAt = 0;
  /** Per image, the pages applied in memory and not yet in the store. */
  #pending: Uint32Array[] | null = null;
  #pendingEpochs = 0;
  #flushTimer: ReturnType<typeof setTimeout> | null = null;
  #flushSoon = false;
  readonly #flushMs: number;

  private constructor(
    store: BackupStore,
    readonly url: string,
    upstream: (b: Backup) => UpstreamServer,
    options: BackupOptions,
  ) {
    this.#store = store;
    this.#flushMs = options.flushMs ?? 100;
    this.auth = options.auth ?? PeerAuth.none();
    this.imageLimits = options.imageLimits ?? defaultImageLimits();
    this.#note = options.note ?? ((l) => console.error(l));
    const state = store.state;
    if (state) {
      this.decoder = this.#load(state);
    }
    this.upstream = upstream(this);
    this.upstream.term = readTerm(store.dir);
  }

  /** Opens the store (recovering it after a crash) and starts listening. */
  static async open(options: BackupOptions): Promise<Backup> {
    // Decoding needs libzstd: say so now, not at the first epoch.
    createCodecZstd().close();
    const store = BackupStore.open(options.store);
    let backup: Backup | null = null;
    try {
      const listener = await listen(options.listen, options.transport);
      backup = new Backup(
        store,
        listener.url,
        (b) => new UpstreamServer(listener, b),
        options,
      );
    } catch (e) {
      store.close();
      throw e;
    }
    backup.upstream.start();
    return backup;
  }

  /** The store: `DIR/ID.img` at the last committed epoch. */
  get store(): BackupStore {
    return this.#store;
  }

  /** The last committed epoch (0 for an empty store). */
  /** Images found damaged when the store was opened, not yet repaired by a rejoin or base sync. */
  get damaged(): readonly string[] {
    return this.#damaged;
  }

  get epoch(): number {
    return this.decoder?.epoch ?? 0;
  }

  note(line: string): void {
    this.#note(line);
  }

  #load(state: StoredState): EpochDecoder {
    const decoder = new EpochDecoder(state.images);
    const contents = state.images.map((img, s) => {
      const bytes = new Uint8Array(img.size);
      this.store.readImage(s, bytes);
      return bytes;
    });
    decoder.load(
      state.epoch,
      contents,
      state.images.map((i) => i.length ?? i.size),
    );
    decoder.images.forEach((image, s) => {
      const d = image.digestValue();
      const want = state.images[s];
      if (d.lo !== want.digestLo || d.hi !== want.digestHi) {
        this.#damaged.push(image.id);
        this.#note(
          `store ${this.store.dir}: image "${image.id}" has digest ${
            formatDigest(d)
          }, its state says ${
            formatDigest({
              size: want.size,
              lo: want.digestLo,
              hi: want.digestHi,
            })
          } for epoch ${state.epoch}: it changed while this backup was stopped. It is offered as it is, so its upstream rejoins it by block hashes; until then this backup is unhealthy and cannot be promoted`,
        );
      }
    });
    this.#attach(decoder);
    return decoder;
  }

  #attach(decoder: EpochDecoder): void {
    decoder.onStaged = (epoch, ranges, digests) => {
      // Nothing is applied, so nothing acked, that the store cannot take.
      if (this.#storeFailure) throw new Error(this.#storeFailure.error);
      const images = decoder.images.map((i, s) => ({
        id: i.id,
        size: i.size,
        ...(digests[s].length !== undefined
          ? { length: digests[s].length }
          : {}),
        digestLo: digests[s].lo,
        digestHi: digests[s].hi,
      }));
      try {
        if (decoder === this.#candidate) {
          // A new lineage's first verified epoch: it is the replica now.
          this.decoder = decoder;
          this.#candidate = null;
        }
        if (!this.#storeHolds(decoder)) {
          // A new replica: the store first takes the epoch it starts from.
          this.store.replaceAll(
            { epoch: decoder.epoch, images: digestsOf(decoder) },
            decoder.images.map((i) => i.committed.subarray(0, i.size)),
            this.upstream.durable,
          );
          this.#pending = null;
          this.#pendingEpochs = 0;
        }
        if (this.upstream.durable) {
          // Protocol C: this epoch is on disk before it is acked.
          this.#flush(decoder);
          this.store.commitEpoch({ epoch, images }, ranges, true);
        } else {
          this.#markPending(decoder, ranges);
        }
      } catch (e) {
        // Reopened, the store is at one committed epoch: `rejected` reloads
        // the replica from it.
        if (this.#reopenStore(e as Error)) this.#storeReopened = true;
        throw e;
      }
    };
  }

  #markPending(
    decoder: EpochDecoder,
    ranges: { slot: number; offset: number; bytes: Uint8Array }[],
  ): void {
    // Block granularity: a batch writes the union of the blocks its epochs
    // changed (whole pages would write several times more).
    const unit = decoder.hasher.blockSize;
    this.#pending ??= decoder.images.map((i) =>
      new Uint32Array(Math.ceil(i.blocks / 32))
    );
    for (const r of ranges) {
      const bits = this.#pending[r.slot];
      const last = Math.floor((r.offset + r.bytes.length - 1) / unit);
      for (let b = Math.floor(r.offset / unit); b <= last; b++) {
        bits[b >>> 5] |= 1 << (b & 31);
      }
    }
    this.#pendingEpochs++;
  }

  /** Writes the blocks applied in memory since the last write to the store, as the replica's current epoch. */
  #flush(decoder: EpochDecoder | null = this.decoder): void {
    if (this.#flushTimer !== null) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    this.#flushSoon = false;
    const pending = this.#pending;
    const pendingEpochs = this.#pendingEpochs;
    this.#pending = null;
    this.#pendingEpochs = 0;
    if (!pending || !decoder) return;
    const stored = this.store.state?.epoch ?? -1;
    if (decoder.epoch <= stored) return;
    const unit = decoder.hasher.blockSize;
    const ranges: { slot: number; offset: number; bytes: Uint8Array }[] = [];
    pending.forEach((bits, slot) => {
      const image = decoder.images[slot];
      let b = 0;
      while (b < image.blocks) {
        if (((bits[b >>> 5] >>> (b & 31)) & 1) === 0) {
          b = bits[b >>> 5] === 0 ? (b | 31) + 1 : b + 1;
          continue;
        }
        let end = b + 1;
        while (end < image.blocks && ((bits[end >>> 5] >>> (end & 31)) & 1)) {
          end++;
        }
        const offset = b * unit;
        ranges.push({
          slot,
          offset,
          bytes: image.committed.subarray(
            offset,
            Math.min(end * unit, image.size),
          ),
        });
        b = end;
      }
    });
    try {
      this.store.commitEpoch(
        { epoch: decoder.epoch, images: digestsOf(decoder) },
        ranges,
        false,
      );
    } catch (e) {
      // Not stored: still pending, for the write once the store recovers.
      this.#pending = pending;
      this.#pendingEpochs = pendingEpochs;
      throw e;
    }
  }

  /** Flushes now, or soon: in batches of up to 16 epochs or `flushMs`. */
  #scheduleFlush(): void {
    const run = () => {
      try {
        this.#flush();
      } catch (e) {
        this.#noteWriteFailure(e as Error);
        this.#recoverStore();
      }
    };
    if (this.#pendingEpochs >= MAX_PENDING_EPOCHS) {
      // Soon, not now: the epoch's ack goes out first. Armed once, so epochs
      // arriving back to back cannot keep pushing it away.
      if (this.#flushSoon) return;
      if (this.#flushTimer !== null) clearTimeout(this.#flushTimer);
      this.#flushSoon = true;
      this.#flushTimer = setTimeout(run, 0);
    } else if (this.#pending && this.#flushTimer === null) {
      this.#flushTimer = setTimeout(run, this.#flushMs);
    }
  }

  #noteWriteFailure(cause: Error): void {
    this.#note(
      `store write failed (${cause.message}): reopening ${this.store.dir}`,
    );
  }

  /**
   * A failed write of an epoch (durable acks, or a new replica's first write)
   * leaves the store refusing writes until reopened; reopening recovers it to
   * one committed epoch (the old one, or the new one if its journal was
   * whole), and {@linkcode rejected} then reloads the replica from it, so the
   * upstream resumes from what is really stored. False if the store could
   * not be reopened (the backup has failed: `storeError` in its status).
   */
  #reopenStore(cause: Error): boolean {
    this.#noteWriteFailure(cause);
    return this.#openStore();
  }

  /**
   * Closes the store and opens it again (recovering it), then checks that it
   * takes a write (state.json, fsynced): one that opens but cannot be
   * written, such as on a full disk, would fail every write the same way.
   * On failure the backup has failed (`storeError` in its status).
   */
  #openStore(): boolean {
    try {
      this.#store.close();
      this.#store = BackupStore.open(this.#store.dir);
      if (this.#store.state) this.#store.sync();
      return true;
    } catch (e) {
      this.#failStore(e as Error);
      return false;
    }
  }

  /**
   * After a batch failed, or while the store has failed: reopens it and
   * writes it up to the replica's epoch (nothing if the reopen redid that
   * epoch's journal; the pending blocks if it is still at their base; else
   * every image). True once the store holds the replica: the backup is
   * healthy and acks again.
   */
  #recoverStore(): boolean {
    if (!this.#openStore()) return false;
    try {
      this.#storeReplica();
    } catch (e) {
      this.#failStore(e as Error);
      return false;
    }
    if (this.#storeFailure) {
      this.#storeFailure = null;
      this.#note(
        `store ${this.store.dir} takes writes again and holds the replica's epoch ${this.epoch}: acking again`,
      );
    }
    return true;
  }

  /** Brings the (just reopened) store to the replica's epoch. */
  #storeReplica(): void {
    const d = this.decoder;
    if (!d) return;
    const st = this.store.state;
    const digests = digestsOf(d);
    if (
      st?.epoch === d.epoch && st.images.length === digests.length &&
      st.images.every((i, s) =>
        i.id === digests[s].id && i.size === digests[s].size &&
        (i.length ?? i.size) === (digests[s].length ?? digests[s].size) &&
        i.digestLo === digests[s].digestLo && i.digestHi === digests[s].digestHi
      )
    ) {
      // The reopen redid the failed batch's journal.
      this.#pending = null;
      this.#pendingEpochs = 0;
    } else if (
      this.#pending && st && st.epoch < d.epoch && this.#storeHolds(d)
    ) {
      this.#flush(d);
    } else {
      this.store.replaceAll(
        { epoch: d.epoch, images: digests },
        d.images.map((i) => i.committed.subarray(0, i.size)),
        this.upstream.durable,
      );
      this.#pending = null;
      this.#pendingEpochs = 0;
    }
  }

  /** The store cannot be written: nothing is acked until it recovers. */
  #failStore(cause: Error): void {
    const error =
      `store ${this.store.dir} cannot be written: ${cause.message}; this backup no longer acks (it tries the store again when an upstream connects)`;
    if (!this.#storeFailure) {
      this.#storeFailures++;
      this.#storeFailure = { error, since: new Date().toISOString() };
      this.#note(error);
    } else if (this.#storeFailure.error !== error) {
      this.#storeFailure.error = error;
      this.#note(error);
    }
    this.#storeRetryAt = performance.now() + STORE_RETRY_MS;
  }

  rejected(_epoch: number): void {
    if (!this.#storeReopened) return;
    this.#storeReopened = false;
    this.#pending = null;
    this.#pendingEpochs = 0;
    const state = this.store.state;
    this.decoder = state ? this.#load(state) : null;
    this.#note(`replica reloaded from the store at epoch ${this.epoch}`);
  }

  /** The store holds this replica's images, at its epoch or (pages pending) an earlier one. */
  #storeHolds(decoder: EpochDecoder): boolean {
    const st = this.store.state;
    return !!st &&
      (st.epoch === decoder.epoch ||
        (this.#pending !== null && st.epoch < decoder.epoch)) &&
      st.images.length === decoder.images.length &&
      st.images.every((i, s) =>
        i.id === decoder.images[s].id && i.size === decoder.images[s].size
      );
  }

  replicaFor(hello: Hello): EpochDecoder | null {
    const d = this.decoder;
    this.#candidate = null;
    if (d && replicates(d, hello)) return d;
    if (d) {
      this.#note(
        `upstream replicates other images (${
          hello.images.map((i) => i.id).join(", ")
        }): starting a new replica once it sends data`,
      );
    }
    return null;
  }

  candidate(hello: Hello): EpochDecoder {
    const fresh = new EpochDecoder(hello.images, {
      blockSize: hello.blockSize,
    });
    this.#attach(fresh);
    // It becomes the replica once an epoch of it verified (#attach) or a
    // base sync installed it (based).
    this.#candidate = fresh;
    return fresh;
  }

  /** Keeps the highest term seen in the store (`DIR/term`), so a restart still refuses older primaries. */
  termRaised(term: number): void {
    try {
      writeTerm(this.store.dir, term);
    } catch (e) {
      this.#note(
        `cannot keep term ${term} in ${this.store.dir}/term: ${
          (e as Error).message
        } (after a restart this backup would accept older terms until it hears of this one again)`,
      );
    }
  }

  connected(epoch: number): AckLevel {
    if (this.#storeFailure && !this.#retryStore()) {
      // Refused with the reason, not answered with a state this backup
      // cannot stand behind: the upstream logs it, and its ack policy counts
      // this backup no further.
      throw new Error(this.#storeFailure.error);
    }
    if (epoch === 0 || !this.#storeHolds(this.decoder!)) {
      return AckLevel.applied;
    }
    // The upstream may continue from here: make it durable if asked.
    if (!this.upstream.durable) return AckLevel.applied;
    try {
      this.#flush();
      this.store.sync();
    } catch (e) {
      this.#noteWriteFailure(e as Error);
      if (!this.#recoverStore()) throw new Error(this.#storeFailure!.error);
      this.store.sync();
    }
    return AckLevel.durable;
  }

  /** A failed store tried again, if its last try is long enough ago: true if it recovered. */
  #retryStore(): boolean {
    return performance.now() >= this.#storeRetryAt && this.#recoverStore();
  }

  storedBytes():
    | ((slot: number, offset: number, into: Uint8Array) => void)
    | null {
    const d = this.decoder;
    if (!d || this.#storeFailure) return null;
    try {
      // What was applied in memory reaches the store first.
      this.#flush(d);
    } catch (e) {
      this.#noteWriteFailure(e as Error);
      return null;
    }
    if (this.store.state?.epoch !== d.epoch) return null;
    return (slot, offset, into) => this.store.readRange(slot, offset, into);
  }

  applied(): AckLevel {
    this.appliedEpochs++;
    if (!this.upstream.durable) this.#scheduleFlush();
    return this.upstream.durable ? AckLevel.durable : AckLevel.applied;
  }

  based(
    epoch: number,
    contents: Uint8Array[],
    images: ImageDigestInfo[],
    changed?: { slot: number; offset: number; size: number }[] | null,
  ): AckLevel {
    if (this.#storeFailure) throw new Error(this.#storeFailure.error);
    const d = this.#candidate ? null : this.decoder;
    if (changed && d) {
      // A rejoin: the store first holds what the replica held (it was
      // copied from it), then takes only the ranges that differed, in one
      // journaled commit, instead of every byte of the images again.
      this.#flush(d);
    }
    const stored = this.store.state;
    if (
      changed && d && stored && stored.epoch === d.epoch &&
      stored.images.length === images.length &&
      stored.images.every((im, s) =>
        im.id === images[s].id && im.size === images[s].size
      )
    ) {
      this.store.commitEpoch(
        { epoch, images },
        changed.map((r) => ({
          slot: r.slot,
          offset: r.offset,
          bytes: contents[r.slot].subarray(r.offset, r.offset + r.size),
        })),
        this.upstream.durable,
        { rejoin: true },
      );
    } else {
      this.store.replaceAll(
        { epoch, images },
        contents,
        this.upstream.durable,
      );
    }
    this.#pending = null;
    this.#pendingEpochs = 0;
    if (this.#candidate) this.decoder = this.#candidate;
    this.#candidate = null;
    if (this.#damaged.length) {
      this.#note(
        `store repaired by the upstream: ${
          this.#damaged.join(", ")
        } now at epoch ${epoch}`,
      );
    }
    this.#damaged = [];
    this.decoder!.load(
      epoch,
      contents,
      images.map((i) => i.length ?? i.size),
    );
    return this.upstream.durable ? AckLevel.durable : AckLevel.applied;
  }

  /** Figures for /status. */
  status(): Record<string, unknown> {
    if (this.promoted) {
      return { ...this.promoted.status(), promotedFrom: "backup" };
    }
    return {
      role: this.role,
      term: this.upstream.term,
      ...(this.cluster ? { cluster: this.cluster } : {}),
      listen: this.url,
      store: this.store.dir,
      epoch: this.epoch,
      committedEpoch: this.epoch,
      storedEpoch: this.store.state?.epoch ?? 0,
      storeHealthy: this.#storeFailure === null,
      storeError: this.#storeFailure?.error ?? null,
      storeFailedSince: this.#storeFailure?.since ?? null,
      storeFailures: this.#storeFailures,
      ...(this.#damaged.length ? { storeDamaged: this.#damaged } : {}),
      images: this.decoder ? digestsOf(this.decoder) : [],
      upstream: this.upstream.status(),
      appliedEpochs: this.appliedEpochs,
    };
  }

  /**
   * Becomes a primary: stops taking epochs from upstream and replicates its
   * store's images (the files `DIR/ID.img`, from now on written by whatever
   * runs on them) from its last committed epoch. Peers at that same epoch
   * continue incrementally; others catch up by base sync.
   */
  async promote(options: PromoteOptions): Promise<Primary> {
    if (this.promoted) throw new Error("this backup is already promoted");
    if (this.#damaged.length) {
      throw new Error(
        `cannot promote: image ${
          this.#damaged.join(", ")
        } in the store changed while this backup was stopped and has not been repaired by an upstream yet`,
      );
    }
    const decoder = this.decoder;
    if (!decoder) {
      throw new Error("cannot promote: this backup has no replica yet");
    }
    if (this.#storeFailure && !this.#recoverStore()) {
      // The new primary would run on the store's files.
      throw new Error(`cannot promote: ${this.#storeFailure.error}`);
    }
    await this.upstream.close(false);
    this.#flush(decoder);
    this.store.sync();
    let source: Source;
    const { resume, ...primaryOptions } = options;
    if (resume) {
      let spec: string;
      let command: string[];
      try {
        const r = await resumeGuest({
          store: this.store,
          epoch: decoder.epoch,
          image: resume.image,
          command: resume.command,
          dir: resume.dir,
          qmp: resume.qmp,
          mem: resume.mem,
        });
        this.resumed = r;
        this.#note(
          `resumed "${r.image}" at epoch ${r.epoch}: QEMU pid ${r.pid}, QMP ${r.qmp} (${
            r.times.totalMs.toFixed(0)
          } ms)`,
        );
        spec = r.spec + (resume.hold ? `&hold=${resume.hold}` : "");
        command = r.command;
      } catch (e) {
        throw new Error(
          `${
            (e as Error).message
          } (this backup no longer takes epochs from its upstream: restart it to follow again)`,
        );
      }
      source = await QemuSource.open(spec, { command });
    } else {
      const sources = decoder.images.map((i) =>
        new FileSource(`${this.store.dir}/${i.id}.img`, i.size, i.id)
      );
      source = sources.length === 1 ? sources[0] : new MultiSource(sources);
    }
    const primary = new Primary(source, {
      note: this.#note,
      ...primaryOptions,
      seed: {
        epoch: decoder.epoch,
        contents: decoder.images.map((i) => i.committed.subarray(0, i.size)),
        lengths: decoder.images.map((i) => i.length),
      },
    });
    this.promoted = primary;
    this.decoder = null;
    primary.start();
    this.#note(
      `promoted to primary at epoch ${primary.epoch}, replicating to ${
        options.to.join(", ") || "no peers"
      }`,
    );
    return primary;
  }

  /** Writes every epoch applied in memory to the store now. */
  flush(): void {
    if (this.#storeFailure) throw new Error(this.#storeFailure.error);
    this.#flush();
  }

  /** Stops; the store is left at the last applied epoch. */
  async close(): Promise<void> {
    await this.promoted?.stop();
    await this.upstream.close();
    try {
      if (!this.#storeFailure) this.#flush();
    } finally {
      this.store.close();
    }
  }
}

/** The highest term a store's backup has seen (`DIR/term`; 0 without one). */
export function readTerm(dir: string): number {
  let text: string;
  try {
    text = Deno.readTextFileSync(`${dir}/term`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
  const term = Number(text.trim());
  if (!Number.isSafeInteger(term) || term < 0) {
    throw new Error(
      `${dir}/term holds ${
        JSON.stringify(text.slice(0, 40))
      }, expected the highest cluster term seen (a whole number)`,
    );
  }
  return term;
}

/** Writes `DIR/term` atomically and durably (temporary file, fsync, rename). */
function writeTerm(dir: string, term: number): void {
  const tmp = `${dir}/term.tmp`;
  const f = Deno.openSync(tmp, { write: true, create: true, truncate: true });
  try {
    f.writeSync(new TextEncoder().encode(`${term}\n`));
    f.syncSync();
  } finally {
    f.close();
  }
  Deno.renameSync(tmp, `${dir}/term`);
}
