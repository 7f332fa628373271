/**
 * The downstream side of a link, shared by relays and backups: accepts the
 * upstream's connection (one at a time; a new one replaces the old), checks
 * its token, answers with the replica's state, then applies epochs and base
 * syncs to the replica and acks.
 * @module
 */

import type { Connection, Listener } from "./transport.ts";
import {
  type AppliedEpoch,
  DecodeError,
  type EpochDecoder,
} from "./decoder.ts";
import {
  AckLevel,
  type Base,
  decodeControl,
  encodeControl,
  type Hello,
  type ImageDigestInfo,
  isControl,
  isFrame,
  type Proof,
  type RegionDigests,
  type RegionQuery,
} from "./protocol.ts";
import {
  bytesU32,
  regionCount,
  regionDigestsFromHashes,
  regionDigestsOfBytes,
  u32Bytes,
  zeroRegionDigests,
} from "./region_digest.ts";
import { BaseReceiver } from "./base_sync.ts";
import { type ImageState, zeroImageDigest } from "./image_state.ts";
import { decodeFrame, FrameType } from "./frame.ts";
import type { AuthVerdict, PeerAuth, RefusalReason } from "./peer_auth.ts";
import { helloExceeds, type ImageLimits } from "./image_limits.ts";

const PING = encodeControl({ type: "ping" });
const PONG = encodeControl({ type: "pong" });

/** True for exactly the PING message (it has one form: an empty body). */
function isPing(bytes: Uint8Array): boolean {
  return bytes.length === PING.length && bytes.every((b, i) => b === PING[i]);
}
/**
 * A new connection must finish its handshake (HELLO, and PROOF if asked)
 * within this (it holds a handshake slot meanwhile).
 */
const HELLO_TIMEOUT_MS = 10_000;
/**
 * Largest message taken from a connection not yet authenticated (a HELLO is
 * its images' names and sizes; a PROOF a certificate chain): a stranger
 * cannot make the listener reserve a frame-sized buffer.
 */
const MAX_HELLO_BYTES = 1 << 20;
/** Connections in their handshake at once; more are dropped at accept. */
const MAX_ADMITTING = 16;

/** True for a codec frame of type COMMIT (msgpack: fixarray, "PWR", version, flags, type). */
function isCommitFrame(bytes: Uint8Array): boolean {
  return bytes.length > 7 && bytes[7] === FrameType.COMMIT;
}

/** What the role does with what arrives. */
export interface ReplicaHooks {
  /** What an upstream must present. */
  readonly auth: PeerAuth;
  /** What a HELLO may name (checked after its credentials, before anything is allocated). */
  readonly imageLimits: ImageLimits;
  note(line: string): void;
  /**
   * The replica, if it holds the images (ids, sizes, block size) a HELLO
   * names; else null: the session then answers as an all-zero replica at
   * epoch 0, allocated only once the upstream sends data
   * ({@linkcode ReplicaHooks.candidate}).
   */
  replicaFor(hello: Hello): EpochDecoder | null;
  /**
   * A new all-zero replica of the images a HELLO names, which replaces the
   * replica only once an epoch or a base sync of it verified (a HELLO is
   * not checked: a wrong one must not cost the replica).
   */
  candidate(hello: Hello): EpochDecoder;
  /** An epoch was verified and applied; returns the level to ack now, or null (the role acks later). */
  applied(
    epoch: number,
    frames: Uint8Array[],
    applied: AppliedEpoch,
  ): AckLevel | null;
  /**
   * Optional cut-through: an epoch's frames are all here (its COMMIT just
   * arrived, not yet verified); `images` are the digests the COMMIT names.
   * A relay forwards them now, before its own decode, so it adds no decode
   * time to the commit latency (every backup verifies for itself).
   */
  forward?(
    epoch: number,
    frames: Uint8Array[],
    images: ImageDigestInfo[],
  ): void;
  /**
   * Optional, with `forward`: called as an epoch is forwarded; the role's own
   * decode of it waits for the returned promise. A relay resolves it once
   * its peers acked the epoch (or a short while passed), so its decode,
   * which only keeps its replica for base syncs, does not compete for the
   * CPU with theirs on the way to the commit. Epochs still decode in order.
   */
  decodeDue?(epoch: number): Promise<void>;
  /**
   * Ack `received` as soon as an epoch's COMMIT frame arrives, before
   * decoding it, when the upstream asks for that level (a backup; a relay
   * acks per its policy).
   */
  readonly receivedAck?: boolean;
  /**
   * Optional: the highest term seen rose to `term` (the role may keep it, so
   * that it still refuses older terms after a restart).
   */
  termRaised?(term: number): void;
  /** Optional: an epoch was rejected; the replica stays at `epoch`. */
  rejected?(epoch: number): void;
  /**
   * A new upstream is about to be told the replica's state: returns how far
   * the replica holds its epoch (a backup asked for durable acks makes it
   * durable first). Acks from earlier upstreams are forgotten.
   */
  connected(epoch: number): AckLevel;
  /**
   * Optional, for online verify: what this role stores, at the replica's
   * current epoch (a backup writes what it applied to its store first).
   * Returns a reader of the stored bytes of an image, or null if the store
   * cannot answer (verify then reads the replica in memory).
   */
  storedBytes?():
    | ((slot: number, offset: number, into: Uint8Array) => void)
    | null;
  /**
   * A base sync finished and verified; the role installs it; returns the
   * level to ack now, or null. After a rejoin, `changed` lists the ranges
   * that differed from the replica (the rest of `contents` is what it held).
   */
  based(
    epoch: number,
    contents: Uint8Array[],
    images: ImageDigestInfo[],
    changed?: { slot: number; offset: number; size: number }[] | null,
  ): AckLevel | null;
}

/** The replica's images and digests, as STATE and /status name them. */
export function digestsOf(decoder: EpochDecoder): ImageDigestInfo[] {
  return decoder.images.map((i) => {
    return imageDigestInfo(i);
  });
}

/** One image's id, size, length in use (if sized) and digest. */
export function imageDigestInfo(i: ImageState): ImageDigestInfo {
  const d = i.digestValue();
  return {
    id: i.id,
    size: i.size,
    ...(i.length !== i.size ? { length: i.length } : {}),
    digestLo: d.lo,
    digestHi: d.hi,
  };
}

/** True if `decoder` holds the images (ids, sizes, block size) a HELLO names. */
export function replicates(decoder: EpochDecoder, hello: Hello): boolean {
  return decoder.images.length === hello.images.length &&
    decoder.hasher.blockSize === hello.blockSize &&
    decoder.images.every((i, s) =>
      i.id === hello.images[s].id && i.size === hello.images[s].size
    );
}

/** Serves the upstream link of a relay or backup. */
export class UpstreamServer {
  remote: string | null = null;
  connects = 0;
  bytesReceived = 0;
  lastError: string | null = null;
  /** Upstreams refused before anything they sent was used, by reason. */
  readonly refused: Record<RefusalReason, number> = {
    token: 0,
    certificate: 0,
    protocol: 0,
    term: 0,
  };
  /**
   * The highest cluster term seen (from an admitted HELLO or
   * {@linkcode UpstreamServer.adoptTerm}): an upstream of a lower term is
   * refused, since a newer primary exists (fencing).
   */
  term = 0;
  /** The term of the current session's HELLO. */
  #sessionTerm = 0;
  /** Who the current upstream proved to be ("token" without certificates). */
  peer: string | null = null;
  /** Whether the current upstream asked for durable acks. */
  durable = false;
  #conn: Connection | null = null;
  #session: Promise<void> | null = null;
  /** Connections whose HELLO is being checked. */
  #admitting = new Set<Connection>();
  #takeover: Promise<void> = Promise.resolve();
  /**
   * Connections closed and still lingering (waiting for the peer to end its
   * side, up to the transport's linger): nothing of theirs reaches the
   * replica any more, so a takeover or a promotion does not wait for a
   * paused or cut-off peer; {@linkcode UpstreamServer.close} does.
   */
  #lingering = new Set<Promise<void>>();
  #run: Promise<void> | null = null;
  #closed = false;
  /** Whether upstreams must prove a client certificate (a TLS listener with a CA). */
  readonly requireCertificate: boolean;

  constructor(readonly listener: Listener, readonly hooks: ReplicaHooks) {
    this.requireCertificate = hooks.auth.requiresCertificateOn(listener.url);
  }

  /** Starts accepting. */
  start(): void {
    const warning = this.hooks.auth.plainListenerNote(this.listener.url);
    if (warning) this.hooks.note(warning);
    this.#run ??= this.#accept();
  }

  #raiseTerm(term: number): void {
    if (term <= this.term) return;
    this.term = term;
    this.hooks.termRaised?.(term);
  }

  /**
   * Follows `term` from now on (learned from the cluster, see
   * `cluster.ts`): the current upstream, if of a lower term, is dropped, and
   * every upstream of a lower term is refused from now on.
   */
  async adoptTerm(term: number): Promise<void> {
    this.#raiseTerm(term);
    if (this.#conn && this.#sessionTerm < this.term) {
      this.refused.term++;
      await this.#abort(
        this.#conn,
        `term ${this.term} began: the upstream of term ${this.#sessionTerm} was replaced (fenced)`,
      );
    }
  }

  /** The upstream link's figures for /status. */
  status(): Record<string, unknown> {
    return {
      remote: this.remote,
      connected: this.connected,
      connects: this.connects,
      clientCertificates: this.requireCertificate,
      peer: this.peer,
      term: this.term,
      refused: this.refused,
      bytesReceived: this.bytesReceived,
      durable: this.durable,
      lastError: this.lastError,
    };
  }

  /** True while an upstream is connected. */
  get connected(): boolean {
    return this.#conn !== null;
  }

  /** Acks `epoch` at `level` to the current upstream, if any (lost acks are re-earned after a reconnect). */
  ack(epoch: number, level: AckLevel): Promise<void> {
    return this.#tell(encodeControl({ type: "ack", epoch, level }));
  }

  /** When this replica last sent its upstream anything (ms, performance.now()). */
  #lastSent = 0;

  async #tell(message: Uint8Array): Promise<void> {
    this.#lastSent = performance.now();
    try {
      await this.#conn?.send(message);
    } catch {
      // The connection broke; the upstream reconnects and learns our state.
    }
  }

  /**
   * Stops accepting and drops the upstream. With `linger` false it returns
   * once nothing more is taken from the upstream, without waiting for its
   * connection to finish closing (a promotion must not wait on a paused
   * primary); a later close() waits for it.
   */
  async close(linger = true): Promise<void> {
    this.#closed = true;
    await this.listener.close();
    await Promise.all([...this.#admitting].map((c) => c.close()));
    if (this.#conn) this.#release(this.#conn);
    await this.#session;
    await this.#run;
    await this.#takeover;
    if (linger) await Promise.all(this.#lingering);
  }

  /** Closes `conn` without waiting for its linger (see {@linkcode UpstreamServer.close}). */
  #release(conn: Connection): void {
    const closing = conn.close().catch(() => {});
    this.#lingering.add(closing);
    closing.finally(() => this.#lingering.delete(closing));
  }

  async #accept(): Promise<void> {
    while (!this.#closed) {
      let conn: Connection | null;
      try {
        conn = await this.listener.accept();
      } catch (e) {
        if (this.#closed) break;
        this.hooks.note(`accept failed: ${(e as Error).message}`);
        continue;
      }
      if (!conn) break;
      if (this.#admitting.size >= MAX_ADMITTING) {
        this.hooks.note(
          `upstream ${conn.remote} dropped: ${MAX_ADMITTING} connections are already in their handshake`,
        );
        await conn.close();
        continue;
      }
      this.#admitting.add(conn);
      this.#admit(conn)
        .catch((e) => {
          // Not awaited by anyone: a failure here must not end the process.
          this.hooks.note(`upstream ${conn.remote}: ${(e as Error).message}`);
          return conn.close();
        })
        .catch(() => {})
        .finally(() => this.#admitting.delete(conn));
    }
  }

  /**
   * Checks a new connection's HELLO, concurrently with the current session:
   * only an upstream that passed replaces the current one, so a stranger
   * cannot even disconnect it.
   */
  async #admit(conn: Connection): Promise<void> {
    let admitted: { hello: Hello; peer: string } | null;
    try {
      admitted = await this.#handshake(conn);
    } catch (e) {
      await this.#abort(conn, (e as Error).message);
      return;
    }
    if (!admitted || this.#closed) {
      await conn.close();
      return;
    }
    // One takeover at a time, in the order the upstreams passed.
    const previous = this.#takeover;
    let release!: () => void;
    this.#takeover = new Promise((r) => release = r);
    await previous;
    try {
      if (this.#closed) {
        await conn.close();
        return;
      }
      if (this.#conn) {
        this.hooks.note(
          `upstream ${conn.remote} connected: replacing ${this.remote}`,
        );
        this.#release(this.#conn);
        await this.#session;
      }
      if (admitted.hello.term < this.term) {
        // A newer term was adopted while this one waited its turn.
        this.refused.term++;
        await this.#abort(
          conn,
          `its term ${admitted.hello.term} is older than term ${this.term}, which this replica follows`,
        );
        return;
      }
      this.#raiseTerm(admitted.hello.term);
      this.#conn = conn;
      this.#sessionTerm = admitted.hello.term;
      this.remote = conn.remote;
      this.peer = admitted.peer;
      this.#session = this.#serve(conn, admitted.hello).finally(() => {
        if (this.#conn === conn) {
          this.#conn = null;
          this.remote = null;
          this.peer = null;
        }
      });
    } finally {
      release();
    }
  }

  /**
   * The handshake: a HELLO with the token, within the image limits, and
   * where a certificate is required a PROOF answering this connection's
   * CHALLENGE — all within {@linkcode HELLO_TIMEOUT_MS}. Returns null if the
   * upstream was refused (told, logged and counted here) or left; throws on
   * a protocol error.
   */
  async #handshake(
    conn: Connection,
  ): Promise<{ hello: Hello; peer: string } | null> {
    const timer = setTimeout(() => {
      this.refused.protocol++;
      this.hooks.note(
        `upstream ${conn.remote} refused: no handshake within ${HELLO_TIMEOUT_MS} ms`,
      );
      conn.close().catch(() => {});
    }, HELLO_TIMEOUT_MS);
    try {
      return await this.#checkCredentials(conn);
    } finally {
      clearTimeout(timer);
    }
  }

  async #checkCredentials(
    conn: Connection,
  ): Promise<{ hello: Hello; peer: string } | null> {
    const first = await conn.receive(MAX_HELLO_BYTES);
    if (first === null) return null;
    // Nothing an upstream sends is used before its HELLO passed.
    let hello: Hello;
    try {
      if (!isControl(first)) {
        throw new DecodeError("expected hello, got a frame");
      }
      const m = decodeControl(first);
      if (m.type !== "hello") {
        throw new DecodeError(`expected hello, got ${m.type}`);
      }
      hello = m;
    } catch (e) {
      this.refused.protocol++;
      throw e;
    }
    let verdict: AuthVerdict = this.hooks.auth.checkToken(hello.token);
    if (verdict.ok && this.requireCertificate) {
      verdict = await this.#challenge(conn);
    }
    if (verdict.ok && hello.term < this.term) {
      verdict = {
        ok: false,
        reason: "term",
        message:
          `its term ${hello.term} is older than term ${this.term}, which this replica follows: a newer primary exists (the sender was replaced, and is fenced)`,
      };
    }
    if (verdict.ok) {
      const exceeds = helloExceeds(
        hello.images,
        hello.blockSize,
        this.hooks.imageLimits,
      );
      if (exceeds) {
        verdict = { ok: false, reason: "protocol", message: exceeds };
      }
    }
    if (!verdict.ok) {
      this.refused[verdict.reason]++;
      const refusal = verdict.reason === "protocol" ||
          verdict.reason === "term"
        ? verdict.message
        : `authentication failed: ${verdict.message}`;
      this.lastError = `refused: ${verdict.message}`;
      this.hooks.note(`upstream ${conn.remote} refused: ${verdict.message}`);
      try {
        await conn.send(encodeControl({ type: "error", message: refusal }));
      } catch {
        // gone already
      }
      return null;
    }
    return { hello, peer: verdict.peer };
  }

  /**
   * Sends this connection's CHALLENGE and checks the PROOF that answers it
   * (an ERROR instead: the upstream has no certificate).
   */
  async #challenge(conn: Connection): Promise<AuthVerdict> {
    const challenge = this.hooks.auth.challenge();
    await conn.send(encodeControl({ type: "challenge", nonce: challenge }));
    const bytes = await conn.receive(MAX_HELLO_BYTES);
    if (bytes === null) {
      return {
        ok: false,
        reason: "certificate",
        message: "left when asked for a client certificate proof",
      };
    }
    let proof: Proof | undefined;
    try {
      if (!isControl(bytes)) {
        throw new DecodeError("expected proof, got a frame");
      }
      const m = decodeControl(bytes);
      if (m.type === "error") {
        proof = undefined;
      } else if (m.type !== "proof") {
        throw new DecodeError(`expected proof, got ${m.type}`);
      } else {
        proof = m;
      }
    } catch (e) {
      this.refused.protocol++;
      throw e;
    }
    return await this.hooks.auth.checkProof(proof, challenge);
  }

  async #serve(conn: Connection, hello: Hello): Promise<void> {
    let decodes = Promise.resolve();
    try {
      this.connects++;
      this.durable = hello.durable;
      let decoder = this.hooks.replicaFor(hello);
      decoder?.discardPending();
      // Other images: answer as their all-zero replica at epoch 0, which is
      // allocated only when the upstream sends something to apply to it.
      const replica = (): EpochDecoder => {
        decoder ??= this.hooks.candidate(hello);
        return decoder;
      };
      this.#lastSent = performance.now();
      const epoch = decoder?.epoch ?? 0;
      await conn.send(encodeControl({
        type: "state",
        epoch,
        images: decoder ? digestsOf(decoder) : hello.images.map((i) => {
          const d = zeroImageDigest(i.size, hello.blockSize);
          return { id: i.id, size: i.size, digestLo: d.lo, digestHi: d.hi };
        }),
        level: this.hooks.connected(epoch),
      }));
      this.hooks.note(
        `upstream ${conn.remote} connected at its epoch ${hello.epoch}; this replica is at epoch ${epoch}`,
      );
      let base: BaseReceiver | null = null;
      let frames: Uint8Array[] = [];
      let heldBytes = 0;
      // Decodes epoch by epoch, each once `due`; the first failure ends the session.
      const decodeLater = async (
        epochFrames: Uint8Array[],
        due: Promise<void>,
      ): Promise<void> => {
        await due;
        if (deferredError) return;
        try {
          let applied = null;
          for (const f of epochFrames) applied = replica().receive(f);
          if (applied) {
            const level = this.hooks.applied(
              applied.epoch,
              epochFrames,
              applied,
            );
            if (level !== null) await this.ack(applied.epoch, level);
          }
        } catch (e) {
          deferredError = e as Error;
          this.hooks.rejected?.(replica().epoch);
          await this.#abort(conn, deferredError.message); // ends the loop below
        }
      };
      let deferredError: Error | null = null;
      /** Waits for the deferred decodes; false if one failed (the session is over). */
      const settle = async () => {
        await decodes;
        return deferredError === null;
      };
      for (;;) {
        const bytes = await conn.receive();
        if (bytes === null || deferredError) break;
        this.bytesReceived += bytes.length;
        // Unasked PONGs while data arrives and no ack is due: the upstream
        // then knows a long transfer (a base sync, a big epoch) is alive.
        if (performance.now() - this.#lastSent >= 1000) {
          await this.#tell(PONG);
        }
        if (isFrame(bytes)) {
          frames.push(bytes);
          heldBytes += bytes.length;
          if (heldBytes > replica().maxEpochBytes) {
            throw new DecodeError(
              `${heldBytes} bytes of frames without a COMMIT, more than the ${replica().maxEpochBytes} an epoch of these images can take`,
            );
          }
          if (isCommitFrame(bytes)) {
            const commit = decodeFrame(bytes);
            if (commit.type === FrameType.COMMIT) {
              if (this.hooks.receivedAck && hello.level === AckLevel.received) {
                // Protocol A: every frame of the epoch is here (not yet verified).
                await this.ack(commit.epoch, AckLevel.received);
              }
              if (this.hooks.forward) {
                this.hooks.forward(
                  commit.epoch,
                  frames,
                  commit.body.images.map((i) => ({
                    id: i.id,
                    size: i.size,
                    ...(i.length !== undefined ? { length: i.length } : {}),
                    digestLo: i.digestLo,
                    digestHi: i.digestHi,
                  })),
                );
                if (this.hooks.decodeDue) {
                  const epochFrames = frames;
                  const due = this.hooks.decodeDue(commit.epoch);
                  decodes = decodes.then(() => decodeLater(epochFrames, due));
                  frames = [];
                  heldBytes = 0;
                  continue;
                }
                // Let the links hand the frames to their sockets before the
                // decode below holds the thread.
                await new Promise((r) => setTimeout(r, 0));
              }
            }
          }
          if (this.hooks.decodeDue) continue; // held in `frames` until the COMMIT
          let applied;
          try {
            applied = replica().receive(bytes);
          } catch (e) {
            this.hooks.rejected?.(replica().epoch);
            throw e;
          }
          if (applied) {
            const epochFrames = frames;
            frames = [];
            heldBytes = 0;
            const level = this.hooks.applied(
              applied.epoch,
              epochFrames,
              applied,
            );
            if (level !== null) await this.ack(applied.epoch, level);
          }
          continue;
        }
        if (isPing(bytes)) {
          await this.#tell(PONG);
          continue;
        }
        // Other control messages act on the replica as decoded so far (and
        // a bad one ends the session only after the epochs before it).
        if (!await settle()) break;
        const m = decodeControl(bytes);
        if (m.type === "base" || m.type === "base_end") {
          const d = replica();
          base ??= new BaseReceiver(hello.images, d.hasher, d.zstd);
        }
        if (m.type === "rejoin") {
          // A base sync over what this replica holds (`rejoin.ts`).
          const d = replica();
          base = new BaseReceiver(hello.images, d.hasher, d.zstd);
          base.startFrom(
            m.epoch,
            d.images.map((i) => i.committed.subarray(0, i.size)),
          );
          this.hooks.note(
            `upstream rejoins this replica (epoch ${d.epoch}) to epoch ${m.epoch} by block hashes`,
          );
        } else if (m.type === "region_query") {
          await this.#tell(encodeControl(
            this.#regionDigests(m, hello, decoder),
          ));
        } else if (m.type === "base") {
          base!.add(m as Base);
        } else if (m.type === "base_end") {
          const contents = base!.finish(m);
          const level = this.hooks.based(
            m.epoch,
            contents,
            m.images,
            base!.changed,
          );
          decoder = this.hooks.replicaFor(hello) ?? replica();
          decoder.discardPending();
          frames = [];
          heldBytes = 0;
          this.hooks.note(`base sync of epoch ${m.epoch} installed`);
          if (level !== null) await this.ack(m.epoch, level);
        } else if (m.type === "error") {
          throw new Error(`upstream says: ${m.message}`);
        } else {
          throw new DecodeError(`unexpected ${m.type} from upstream`);
        }
      }
    } catch (e) {
      await this.#abort(conn, (e as Error).message);
    } finally {
      // Whole epochs already forwarded still become the replica, before a
      // next session reads its epoch.
      await decodes;
      this.#release(conn);
    }
  }

  /**
   * Answers a REGION_QUERY from the block hashes the replica keeps, or with
   * `rehash` from the bytes it stores; an all-zero replica not yet
   * allocated answers as zeros. Bounds what the upstream may name.
   */
  #regionDigests(
    q: RegionQuery,
    hello: Hello,
    decoder: EpochDecoder | null,
  ): RegionDigests {
    const info = hello.images[q.slot];
    if (!info) {
      throw new DecodeError(
        `region query for image slot ${q.slot}, only ${hello.images.length} images`,
      );
    }
    if (q.unit % hello.blockSize !== 0) {
      throw new DecodeError(
        `region query unit ${q.unit} is not a multiple of the block size ${hello.blockSize}`,
      );
    }
    const count = regionCount(info.size, q.unit);
    const regions = q.regions.length ? bytesU32(q.regions) : null;
    if (regions) {
      if (regions.length > count) {
        throw new DecodeError(
          `region query names ${regions.length} regions, image "${info.id}" has ${count}`,
        );
      }
      for (const r of regions) {
        if (r >= count) {
          throw new DecodeError(
            `region query names region ${r} of ${q.unit} bytes, image "${info.id}" has ${count}`,
          );
        }
      }
    }
    const out = new Uint32Array(2 * (regions ? regions.length : count));
    if (!decoder) {
      zeroRegionDigests(hello.blockSize, info.size, q.unit, regions, out);
      return {
        type: "region_digests",
        epoch: 0,
        slot: q.slot,
        unit: q.unit,
        digests: u32Bytes(out),
      };
    }
    const image = decoder.images[q.slot];
    if (q.rehash) {
      const stored = this.hooks.storedBytes?.() ?? null;
      const read = stored
        ? (offset: number, into: Uint8Array) => stored(q.slot, offset, into)
        : (offset: number, into: Uint8Array) =>
          into.set(image.committed.subarray(offset, offset + into.length));
      regionDigestsOfBytes(
        decoder.hasher,
        image.size,
        q.unit,
        regions,
        read,
        out,
      );
    } else {
      regionDigestsFromHashes(
        image.hashes,
        image.blocks,
        q.unit / decoder.hasher.blockSize,
        regions,
        out,
      );
    }
    return {
      type: "region_digests",
      epoch: decoder.epoch,
      slot: q.slot,
      unit: q.unit,
      digests: u32Bytes(out),
    };
  }

  /** Reports why the session ends, here and to the upstream, and closes it. */
  async #abort(conn: Connection, msg: string): Promise<void> {
    this.lastError = msg;
    if (!this.#closed) {
      this.hooks.note(`upstream ${conn.remote}: ${msg}`);
      try {
        await conn.send(encodeControl({ type: "error", message: msg }));
      } catch {
        // already broken
      }
    }
    this.#release(conn);
  }
}
