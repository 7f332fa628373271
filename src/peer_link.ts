/**
 * One downstream peer as its upstream (a primary or a relay) sees it: keeps a
 * connection to the peer's URL (reconnecting with backoff), brings the peer up
 * to date from the retained log or by a base sync, streams every new epoch's
 * frames, and records the peer's acks.
 *
 * Each link sends from the shared retained log at its own pace, so a slow peer
 * never delays the others and holds no copy of the frames; a peer that falls
 * out of the log gets a base sync. What a link has sent and the peer has not
 * acknowledged is capped ({@linkcode PeerLinkOptions.sendBufferBytes}): a
 * slow or stalled peer makes its link wait, not buffer, so memory stays
 * bounded by the log and the caps whatever the peer does; if it stays behind
 * for long, its next epoch leaves the log and it is base-synced.
 * @module
 */

import { connect } from "../transports/mod.ts";
import type { Connection, TransportOptions } from "./transport.ts";
import { PeerAcks } from "./ack_policy.ts";
import {
  ACK_LEVEL_NAMES,
  type AckLevel,
  decodeControl,
  encodeControl,
  type ImageDigestInfo,
  type ImageInfo,
  isControl,
  type RegionDigests,
  type State,
} from "./protocol.ts";
import { PAGE_SIZE } from "./image_state.ts";
import { type RejoinResult, sendRejoin, snapshotDigests } from "./rejoin.ts";
import {
  bytesU32,
  differingRegions,
  pagesOfRegions,
  REGION_BYTES,
  regionCount,
  u32Bytes,
} from "./region_digest.ts";
import { type RetainedLog, sameImages } from "./retained_log.ts";
import { type BaseProgress, type BaseSnapshot, sendBase } from "./base_sync.ts";
import type { Zstd } from "./compress/zstd.ts";
import { type PeerAuth, serverNameOf } from "./peer_auth.ts";

/** What a link needs from the role that owns it. */
export interface LinkOwner {
  readonly retained: RetainedLog;
  readonly zstd: Zstd;
  /** What this role presents to its peers (token, client certificate). */
  readonly auth: PeerAuth;
  readonly blockSize: number;
  /** Whether acks at `durable` are needed (the peer then fsyncs). */
  readonly durable: boolean;
  /** The lowest ack level this role's policy needs (the peer acks nothing below it). */
  readonly ackLevel: AckLevel;
  /** The cluster term the stream belongs to (HELLO.term); absent: 0, no cluster. */
  readonly term?: number;
  /** The images replicated, or null while unknown (a relay before its first upstream). */
  images(): ImageInfo[] | null;
  /** The images frozen at the newest epoch, for a base sync. */
  snapshot(): BaseSnapshot;
  /**
   * The images' block hashes (2 u32 per block) at `epoch`, the newest:
   * live views, to be used in the same turn (rejoin and verify build their
   * region digests from them).
   */
  blockHashes(): { epoch: number; hashes: Uint32Array[] };
  /** A peer acked something. */
  onAck(link: PeerLink): void;
  /** Writes a log line. */
  note(message: string): void;
}

/** Where a link is. */
export type LinkState =
  | "connecting"
  | "handshake"
  | "base-sync"
  | "live"
  | "down"
  | "stopped";

/** A link's figures for /status and /metrics. */
export interface LinkStatus {
  url: string;
  state: LinkState;
  /** Highest epoch acked at received, applied and durable. */
  acked: { received: number; applied: number; durable: number };
  /** Highest level acked for the newest epoch sent ("none" if none yet). */
  level: string;
  sentEpoch: number;
  lag: number;
  bytesSent: number;
  /** Bytes sent and not yet acknowledged. */
  unackedBytes: number;
  /** Whether sending waits for acks (the send buffer is full). */
  throttled: boolean;
  connects: number;
  baseSyncs: number;
  baseSync: BaseProgress | null;
  /** Rejoins by block hashes (base syncs that sent only what differed). */
  rejoins: number;
  /** What the last rejoin sent. */
  lastRejoin: RejoinResult | null;
  /** Bytes the last verify found differing (absent before any verify). */
  outOfSyncBytes?: number;
  lastError: string | null;
}

/** One region that differs between a peer and its upstream, found by verify. */
export interface DifferingRange {
  image: string;
  offset: number;
  bytes: number;
}

/** What verify found on one peer. */
export interface VerifyResult {
  url: string;
  /** The epoch compared (the upstream's newest when verify reached the peer). */
  epoch: number;
  /** Bytes of the images compared. */
  bytes: number;
  /** Pages (4 KiB) that differ, merged into ranges. */
  differing: DifferingRange[];
  outOfSyncBytes: number;
  ms: number;
}

/** Default of {@linkcode PeerLinkOptions.peerTimeoutMs}. */
export const DEFAULT_PEER_TIMEOUT_MS = 10_000;

/** Default of {@linkcode PeerLinkOptions.sendBufferBytes}. */
export const DEFAULT_SEND_BUFFER_BYTES = 64 << 20;

/** Options of {@linkcode PeerLink}. */
export interface PeerLinkOptions {
  transport?: TransportOptions;
  /**
   * Bytes of frames sent and not yet acknowledged (at any level) before the
   * link waits for acks (default {@linkcode DEFAULT_SEND_BUFFER_BYTES}); at
   * least one epoch is always let through.
   */
  sendBufferBytes?: number;
  /**
   * A connected peer that sends nothing (no ack, no PONG) for this long is
   * taken for gone: the link closes and reconnects, instead of waiting out
   * TCP's retransmissions across a partition. Default
   * {@linkcode DEFAULT_PEER_TIMEOUT_MS}.
   */
  peerTimeoutMs?: number;
  /** A PING goes out after this long without word from the peer. Default 1000. */
  keepaliveMs?: number;
  /** First reconnect delay; doubles up to `maxBackoffMs`. */
  backoffMs?: number;
  maxBackoffMs?: number;
}

/** One downstream peer. Call {@linkcode PeerLink.start}; {@linkcode PeerLink.stop} ends it. */
export class PeerLink {
  readonly acks = new PeerAcks();
  state: LinkState = "connecting";
  sentEpoch = 0;
  /**
   * The highest epoch this connection handed the peer (frames, a base sync,
   * or the state it caught up from): an ack above it is not for what was
   * sent here — a relay's peers may still ack another history's epochs
   * while a new upstream connects to it — and is ignored.
   */
  #sessionTop = -1;
  bytesSent = 0;
  connects = 0;
  baseSyncs = 0;
  baseSync: BaseProgress | null = null;
  lastError: string | null = null;
  /** Whether the link is waiting for acks before it sends more. */
  throttled = false;
  rejoins = 0;
  lastRejoin: RejoinResult | null = null;
  /** The last verify's result. */
  lastVerify: VerifyResult | null = null;
  /** The next session rejoins the peer against the bytes it stores (verify --repair). */
  #repairNext = false;
  /** Callers of repair() waiting for its rejoin. */
  #repairWaiters: ((r: RejoinResult) => void)[] = [];
  /** Callers waiting for the peer's next REGION_DIGESTS, in order. */
  #regionWaiters: {
    resolve: (m: RegionDigests) => void;
    reject: (e: Error) => void;
  }[] = [];
  /** Verify requests waiting for the link to be caught up. */
  #verifies: {
    resolve: (r: VerifyResult) => void;
    reject: (e: Error) => void;
  }[] = [];
  /** Epochs sent and not yet acknowledged, oldest first, with their bytes. */
  #unacked: { epoch: number; bytes: number }[] = [];
  #unackedBytes = 0;
  #ackWaiters: (() => void)[] = [];
  #conn: Connection | null = null;
  #stopped = false;
  #run: Promise<void> | null = null;
  #wakeSleep: (() => void) | null = null;

  constructor(
    readonly url: string,
    readonly owner: LinkOwner,
    readonly options: PeerLinkOptions = {},
  ) {}

  /** Starts connecting; returns at once. */
  start(): void {
    this.#run ??= this.#loop();
  }

  /** Closes the connection and stops reconnecting. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.state = "stopped";
    this.#wakeSleep?.();
    this.#wakeAckWaiters();
    this.owner.retained.wakeAll();
    await this.#conn?.close();
    await this.#run;
  }

  status(): LinkStatus {
    const last = this.owner.retained.last;
    const lvl = this.acks.levelOf(this.sentEpoch);
    return {
      url: this.url,
      state: this.state,
      acked: {
        received: this.acks.epochs[0],
        applied: this.acks.epochs[1],
        durable: this.acks.epochs[2],
      },
      level: this.sentEpoch > 0 && lvl >= 0 ? ACK_LEVEL_NAMES[lvl] : "none",
      sentEpoch: this.sentEpoch,
      lag: Math.max(0, last - this.acks.epochs[0]),
      bytesSent: this.bytesSent,
      unackedBytes: this.#unackedBytes,
      throttled: this.throttled,
      connects: this.connects,
      baseSyncs: this.baseSyncs,
      baseSync: this.baseSync,
      rejoins: this.rejoins,
      lastRejoin: this.lastRejoin,
      ...(this.lastVerify
        ? { outOfSyncBytes: this.lastVerify.outOfSyncBytes }
        : {}),
      lastError: this.lastError,
    };
  }

  /**
   * Online verify: once this link has sent the newest epoch, the peer
   * hashes the bytes it stores again (a backup reads its store) and
   * answers with region digests, which are compared with this role's at
   * that epoch; the regions that differ are compared page by page. Sending
   * waits meanwhile. Rejects if the link is not live.
   */
  verify(): Promise<VerifyResult> {
    if (this.state !== "live" && this.state !== "base-sync") {
      return Promise.reject(
        new Error(`peer ${this.url} is ${this.state}, not live`),
      );
    }
    const p = new Promise<VerifyResult>((resolve, reject) =>
      this.#verifies.push({ resolve, reject })
    );
    this.owner.retained.wakeAll();
    return p;
  }

  /**
   * Makes the next session rejoin the peer against the bytes it stores,
   * sending what differs (verify --repair), and starts it now.
   */
  async repair(): Promise<RejoinResult> {
    this.#repairNext = true;
    const done = new Promise<RejoinResult>((r) => this.#repairWaiters.push(r));
    await this.reconnect();
    return await done;
  }

  /**
   * Ends the current session and connects again at once, with a new HELLO
   * (the owner's term rose: the peer must hear of it).
   */
  async reconnect(): Promise<void> {
    this.#wakeSleep?.();
    await this.#conn?.close();
  }

  async #loop(): Promise<void> {
    let backoff = this.options.backoffMs ?? 100;
    const maxBackoff = this.options.maxBackoffMs ?? 2000;
    while (!this.#stopped) {
      this.state = "connecting";
      let live = false;
      try {
        const conn = await connect(this.url, this.options.transport);
        this.#conn = conn;
        if (this.#stopped) break;
        this.connects++;
        live = true;
        await this.#session(conn);
      } catch (e) {
        const msg = (e as Error).message;
        if (!this.#stopped && msg !== this.lastError) {
          this.owner.note(`peer ${this.url}: ${msg}`);
        }
        this.lastError = msg;
      } finally {
        await this.#conn?.close();
        this.#conn = null;
      }
      if (this.#stopped) break;
      this.state = "down";
      if (live) backoff = this.options.backoffMs ?? 100;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, backoff);
        this.#wakeSleep = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wakeSleep = null;
      backoff = Math.min(maxBackoff, backoff * 2);
    }
    this.state = "stopped";
  }

  async #session(conn: Connection): Promise<void> {
    const owner = this.owner;
    this.state = "handshake";
    let images = owner.images();
    while (!images) {
      // A relay with no upstream yet has nothing to offer.
      await owner.retained.changed();
      if (this.#stopped) return;
      images = owner.images();
    }
    // Liveness: a peer that says nothing for the timeout is taken for gone
    // (a partition); the PINGs after the handshake make it answer when no
    // ack is due.
    let closedBy: Error | null = null;
    let lastHeard = performance.now(), pinged = false, live = false;
    const timeoutMs = this.options.peerTimeoutMs ?? DEFAULT_PEER_TIMEOUT_MS;
    const keepaliveMs = Math.min(this.options.keepaliveMs ?? 1000, timeoutMs);
    const watchdog = setInterval(() => {
      const quiet = performance.now() - lastHeard;
      if (quiet > timeoutMs) {
        closedBy ??= new Error(
          `no word from the peer for ${
            (quiet / 1000).toFixed(1)
          } s (timeout ${timeoutMs} ms): reconnecting`,
        );
        conn.close().catch(() => {});
      } else if (live && !pinged && quiet >= keepaliveMs) {
        pinged = true;
        conn.send(encodeControl({ type: "ping" })).catch(() => {});
      }
    }, keepaliveMs / 2);
    try {
      await this.#live(
        conn,
        images,
        () => {
          lastHeard = performance.now();
          pinged = false;
        },
        () => live = true,
        (e) => closedBy ??= e,
      );
    } catch (e) {
      throw closedBy ?? e;
    } finally {
      clearInterval(watchdog);
    }
    if (closedBy) throw closedBy;
    if (!this.#stopped) throw new Error("peer closed the connection");
  }

  /**
   * The handshake, then the stream. `heard` is called for every message from
   * the peer, `handshaken` once its state is in, `failed` with what ended the
   * session from the reading side.
   */
  async #live(
    conn: Connection,
    images: ImageInfo[],
    heard: () => void,
    handshaken: () => void,
    failed: (e: Error) => void,
  ): Promise<void> {
    const owner = this.owner;
    await conn.send(encodeControl({
      type: "hello",
      token: owner.auth.token,
      images,
      epoch: owner.retained.last,
      blockSize: owner.blockSize,
      durable: owner.durable,
      level: owner.ackLevel,
      term: owner.term ?? 0,
    }));
    this.#sessionTop = -1;
    const state = await this.#receiveState(conn);
    heard();
    handshaken();
    this.lastError = null;
    // What the peer holds now is all its acks mean (it may have restarted empty).
    this.acks.reset(0);
    // Acks count only for the history the log held at the handshake.
    const generation = owner.retained.generation;

    // Acks arrive independently of sending.
    let readerDone = false;
    const reader = (async () => {
      try {
        for (;;) {
          const bytes = await conn.receive();
          if (bytes === null) break;
          heard();
          const m = isControl(bytes) ? decodeControl(bytes) : null;
          if (m?.type === "pong") continue;
          if (m?.type === "region_digests") {
            const w = this.#regionWaiters.shift();
            if (!w) {
              throw new Error("peer sent region digests nobody asked for");
            }
            w.resolve(m);
            continue;
          }
          if (m?.type === "ack") {
            if (m.epoch > this.#sessionTop) continue;
            this.#acked(m.epoch);
            if (owner.retained.generation !== generation) continue;
            if (this.acks.record(m.epoch, m.level)) owner.onAck(this);
          } else if (m?.type === "error") {
            throw new Error(`peer refused: ${m.message}`);
          } else {
            throw new Error(
              `unexpected ${m ? m.type : "frame"} from a downstream peer`,
            );
          }
        }
      } catch (e) {
        failed(e as Error);
      } finally {
        readerDone = true;
        const gone = new Error(`peer ${this.url}: the connection ended`);
        for (const w of this.#regionWaiters.splice(0)) w.reject(gone);
        owner.retained.wakeAll();
        this.#wakeAckWaiters();
      }
    })();
    this.#unacked = [];
    this.#unackedBytes = 0;
    const cap = this.options.sendBufferBytes ?? DEFAULT_SEND_BUFFER_BYTES;

    try {
      const repair = this.#repairNext;
      let next = repair ? -1 : this.#catchUpFrom(state, images);
      if (next < 0) {
        next = this.#canRejoin(state, images)
          ? await this.#rejoin(conn, repair)
          : await this.#baseSync(conn);
      }
      this.state = "live";
      while (!this.#stopped && !readerDone) {
        const changed = owner.retained.changed();
        while (next <= owner.retained.last && !readerDone) {
          let entry = owner.retained.get(next);
          // The send buffer: wait for acks rather than hand more to a peer
          // that has not taken what it got.
          while (
            entry && this.#unackedBytes > 0 &&
            this.#unackedBytes + entry.bytes > cap &&
            !readerDone && !this.#stopped
          ) {
            this.throttled = true;
            await new Promise<void>((r) => this.#ackWaiters.push(r));
            entry = owner.retained.get(next);
          }
          this.throttled = false;
          if (
            readerDone || this.#stopped ||
            owner.retained.generation !== generation
          ) break;
          if (!entry) {
            // Fell out of the retained log while behind.
            owner.note(
              `peer ${this.url}: epoch ${next} is no longer retained, base sync`,
            );
            next = await this.#baseSync(conn);
            this.state = "live";
            continue;
          }
          this.#unacked.push({ epoch: next, bytes: entry.bytes });
          this.#unackedBytes += entry.bytes;
          this.#sessionTop = next;
          for (const f of entry.frames) {
            await conn.send(f);
            this.bytesSent += f.length;
          }
          this.sentEpoch = next;
          next++;
        }
        if (
          this.#verifies.length && !readerDone &&
          next > owner.retained.last &&
          owner.blockHashes().epoch === next - 1
        ) {
          await this.#verify(conn, next - 1);
          continue;
        }
        if (owner.retained.generation !== generation) {
          // The log restarted (the owner took a base sync: maybe another
          // history). Acks in flight on this connection are for the old one:
          // start over with a handshake, which the peer answers with its state.
          throw new Error("the log restarted: reconnecting");
        }
        await changed;
      }
    } finally {
      await conn.close();
      await reader;
      const gone = new Error(`peer ${this.url}: the connection ended`);
      for (const v of this.#verifies.splice(0)) v.reject(gone);
    }
  }

  /** Asks the peer for region digests and waits for its answer (routed by the reader). */
  async #askRegions(
    conn: Connection,
    epoch: number,
    slot: number,
    unit: number,
    regions: Uint32Array | null,
    rehash: boolean,
    repairing = false,
  ): Promise<Uint32Array> {
    const answer = new Promise<RegionDigests>((resolve, reject) =>
      this.#regionWaiters.push({ resolve, reject })
    );
    await conn.send(encodeControl({
      type: "region_query",
      epoch,
      slot,
      unit,
      regions: regions ? u32Bytes(regions) : new Uint8Array(0),
      rehash,
    }));
    const m = await answer;
    if (rehash && !repairing && m.epoch !== epoch) {
      throw new Error(
        `peer answered verify at its epoch ${m.epoch}, expected ${epoch}`,
      );
    }
    const images = this.owner.images() ?? [];
    const want = regions
      ? regions.length
      : regionCount(images[slot]?.size ?? 0, unit);
    if (m.slot !== slot || m.unit !== unit || m.digests.length !== 8 * want) {
      throw new Error(
        `peer answered region digests for slot ${m.slot}, unit ${m.unit}, ${
          m.digests.length / 8
        } regions; asked slot ${slot}, unit ${unit}, ${want} regions`,
      );
    }
    return bytesU32(m.digests);
  }

  /** Whether the peer holds images of the same ids and sizes, at some epoch past 0: worth comparing by hashes. */
  #canRejoin(state: State, images: ImageInfo[]): boolean {
    return state.epoch > 0 && state.images.length === images.length &&
      state.images.every((d, i) =>
        d.id === images[i].id && d.size === images[i].size
      );
  }

  /** A base sync that sends only the pages that differ (`rejoin.ts`). */
  async #rejoin(conn: Connection, rehash: boolean): Promise<number> {
    this.state = "base-sync";
    const snap = this.owner.snapshot();
    const { hashes } = this.owner.blockHashes();
    const ours = snapshotDigests(
      hashes,
      snap.contents.map((c) => c.length),
      this.owner.blockSize,
    );
    this.#sessionTop = snap.epoch;
    const started = performance.now();
    const result = await sendRejoin(
      conn,
      snap,
      ours,
      (slot, unit, regions) =>
        this.#askRegions(conn, snap.epoch, slot, unit, regions, rehash, true),
      this.owner.zstd,
      (p) => this.baseSync = p,
    );
    this.bytesSent += result.wireBytes;
    this.baseSync = null;
    this.rejoins++;
    this.lastRejoin = result;
    this.sentEpoch = snap.epoch;
    if (rehash) {
      this.#repairNext = false;
      for (const w of this.#repairWaiters.splice(0)) w(result);
    }
    this.owner.note(
      `peer ${this.url}: rejoined to epoch ${snap.epoch} by block hashes${
        rehash ? " of its stored bytes" : ""
      }: ${result.regionsDiffering} of ${result.regions} regions differed, sent ${
        (result.differingBytes / 1048576).toFixed(2)
      } MiB of ${
        (result.totalBytes / 1048576).toFixed(1)
      } MiB (${result.wireBytes} bytes on the wire) in ${
        (performance.now() - started).toFixed(0)
      } ms`,
    );
    return snap.epoch + 1;
  }

  /** Runs the waiting verify requests at `epoch`, the newest, which the peer has. */
  async #verify(conn: Connection, epoch: number): Promise<void> {
    const waiting = this.#verifies.splice(0);
    const started = performance.now();
    try {
      const { hashes } = this.owner.blockHashes();
      const images = this.owner.images() ?? [];
      const sizes = images.map((i) => i.size);
      // Ours first, in this turn: the hashes are live.
      const ours = snapshotDigests(hashes, sizes, this.owner.blockSize);
      const differing: DifferingRange[] = [];
      for (let slot = 0; slot < images.length; slot++) {
        const theirs = await this.#askRegions(
          conn,
          epoch,
          slot,
          REGION_BYTES,
          null,
          true,
        );
        const regions = differingRegions(ours.regions[slot], theirs, null);
        if (!regions.length) continue;
        const list = pagesOfRegions(regions, REGION_BYTES, sizes[slot]);
        const pages = differingRegions(
          ours.pages[slot],
          await this.#askRegions(conn, epoch, slot, PAGE_SIZE, list, true),
          list,
        );
        for (const p of pages) {
          const offset = p * PAGE_SIZE;
          const bytes = Math.min(PAGE_SIZE, sizes[slot] - offset);
          const last = differing[differing.length - 1];
          if (
            last && last.image === images[slot].id &&
            last.offset + last.bytes === offset
          ) last.bytes += bytes;
          else differing.push({ image: images[slot].id, offset, bytes });
        }
      }
      const result: VerifyResult = {
        url: this.url,
        epoch,
        bytes: sizes.reduce((a, b) => a + b, 0),
        differing,
        outOfSyncBytes: differing.reduce((n, d) => n + d.bytes, 0),
        ms: performance.now() - started,
      };
      this.lastVerify = result;
      for (const v of waiting) v.resolve(result);
    } catch (e) {
      for (const v of waiting) v.reject(e as Error);
      throw e;
    }
  }

  /** The peer took everything up to `epoch`: those bytes leave the send buffer. */
  #acked(epoch: number): void {
    let freed = false;
    while (this.#unacked.length && this.#unacked[0].epoch <= epoch) {
      this.#unackedBytes -= this.#unacked.shift()!.bytes;
      freed = true;
    }
    if (freed) this.#wakeAckWaiters();
  }

  #wakeAckWaiters(): void {
    const w = this.#ackWaiters;
    this.#ackWaiters = [];
    for (const r of w) r();
  }

  /** The peer's STATE, after answering its CHALLENGE if it sends one. */
  async #receiveState(conn: Connection): Promise<State> {
    let challenged = false;
    for (;;) {
      const bytes = await conn.receive();
      if (bytes === null) {
        throw new Error("peer closed the connection during the handshake");
      }
      if (!isControl(bytes)) {
        throw new Error("peer sent a frame, expected its state");
      }
      const m = decodeControl(bytes);
      if (m.type === "error") throw new Error(`peer refused: ${m.message}`);
      if (m.type === "challenge" && !challenged) {
        challenged = true;
        const proof = await this.owner.auth.proof(
          serverNameOf(this.url),
          m.nonce,
        );
        if (!proof) {
          const message =
            "no client certificate: this upstream has no --cert/--key";
          await conn.send(encodeControl({ type: "error", message }));
          throw new Error(
            "peer refused: authentication failed: it requires a client certificate signed by its CA, and this role has none (--cert/--key)",
          );
        }
        await conn.send(encodeControl(proof));
        continue;
      }
      if (m.type !== "state") {
        throw new Error(`peer sent ${m.type}, expected its state`);
      }
      return m;
    }
  }

  /** The next epoch to send if the peer can continue from the log, else -1. */
  #catchUpFrom(state: State, images: ImageInfo[]): number {
    const log = this.owner.retained;
    if (state.epoch < log.first - 1 || state.epoch > log.last) return -1;
    const digests: ImageDigestInfo[] | undefined = log.digestsAt(state.epoch);
    if (!digests || !sameImages(digests, state.images)) return -1;
    if (
      digests.length !== images.length ||
      digests.some((d, i) => d.id !== images[i].id || d.size !== images[i].size)
    ) return -1;
    this.acks.record(state.epoch, state.level);
    this.sentEpoch = state.epoch;
    this.#sessionTop = state.epoch;
    this.owner.onAck(this);
    return state.epoch + 1;
  }

  async #baseSync(conn: Connection): Promise<number> {
    this.state = "base-sync";
    const snap = this.owner.snapshot();
    // Its ack follows BASE_END.
    this.#sessionTop = snap.epoch;
    const total = snap.contents.reduce((n, c) => n + c.length, 0);
    this.owner.note(
      `peer ${this.url}: base sync of epoch ${snap.epoch} (${
        (total / 1048576).toFixed(1)
      } MiB)`,
    );
    this.baseSyncs++;
    let lastTenth = 0;
    const wire = await sendBase(conn, snap, this.owner.zstd, (p) => {
      this.baseSync = p;
      const tenth = Math.floor(10 * p.sentBytes / Math.max(1, p.totalBytes));
      if (tenth > lastTenth && tenth < 10) {
        lastTenth = tenth;
        this.owner.note(`peer ${this.url}: base sync ${tenth * 10}%`);
      }
    });
    this.bytesSent += wire;
    this.baseSync = null;
    this.sentEpoch = snap.epoch;
    this.owner.note(`peer ${this.url}: base sync of epoch ${snap.epoch} sent`);
    return snap.epoch + 1;
  }
}
