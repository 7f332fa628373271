/**
 * The relay: takes one upstream stream, verifies each epoch against its own
 * replica, and forwards the frames as they came — never re-encoded — to N
 * downstream peers from its retained log. It acks upstream per its own
 * policy over its peers, and base-syncs peers from its replica.
 * @module
 */

import { PeerAuth } from "./peer_auth.ts";
import { defaultImageLimits, type ImageLimits } from "./image_limits.ts";
import type { ClusterView } from "./cluster.ts";
import { listen } from "../transports/mod.ts";
import type { TransportOptions } from "./transport.ts";
import type { AppliedEpoch } from "./decoder.ts";
import { faultPoint } from "./_fault.ts";
import { EpochDecoder } from "./decoder.ts";
import {
  type AckPolicy,
  checkAckPolicy,
  committedEpoch,
  formatAckPolicy,
} from "./ack_policy.ts";
import {
  AckLevel,
  type Hello,
  type ImageDigestInfo,
  type ImageInfo,
} from "./protocol.ts";
import { RetainedLog } from "./retained_log.ts";
import { type LinkOwner, PeerLink, type PeerLinkOptions } from "./peer_link.ts";
import type { BaseSnapshot } from "./base_sync.ts";
import { createCodecZstd, type Zstd } from "./compress/zstd.ts";
import {
  digestsOf,
  type ReplicaHooks,
  replicates,
  UpstreamServer,
} from "./_upstream.ts";

/**
 * How long the relay's own decode of an epoch waits for its peers to ack it
 * (see {@linkcode Relay.decodeDue}); after that it runs anyway.
 */
const DECODE_DEFER_MS = 50;
/** More epochs than this waiting to be decoded: the oldest runs at once. */
const MAX_DEFERRED_EPOCHS = 8;

/** Options of {@linkcode Relay.open}. */
export interface RelayOptions {
  listen: string;
  to: string[];
  /** Default: all peers, at applied. */
  ack?: AckPolicy;
  /** Token and certificates: what peers must present, and what this role presents. Default: none. */
  auth?: PeerAuth;
  /** What an upstream's HELLO may name. Default: this host's memory, per image and in all. */
  imageLimits?: ImageLimits;
  /** Bound of the retained log in bytes. Default 256 MiB. */
  logBytes?: number;
  transport?: TransportOptions;
  link?: PeerLinkOptions;
  note?: (line: string) => void;
}

/**
 * @example
 * ```ts
 * const relay = await Relay.open({
 *   listen: "quic://0.0.0.0:7000",
 *   to: ["tcp://b1:7001", "ws://b2:7002/patchwire"],
 *   ack: { who: { kind: "quorum", k: 1 }, level: AckLevel.applied },
 * });
 * ```
 */
export class Relay implements LinkOwner, ReplicaHooks {
  readonly role = "relay";
  readonly auth: PeerAuth;
  readonly imageLimits: ImageLimits;
  /** The cluster it follows, for /status (see `cluster.ts` followCluster). */
  cluster: ClusterView | null = null;
  readonly retained: RetainedLog;
  readonly zstd: Zstd;
  readonly policy: AckPolicy;
  readonly durable: boolean;
  readonly ackLevel: AckLevel;
  readonly links: PeerLink[];
  decoder: EpochDecoder | null = null;
  upstream!: UpstreamServer;
  /** Highest epoch acked upstream per level. */
  readonly ackedUp = [0, 0, 0];
  #images: ImageInfo[] | null = null;
  /** A new lineage's replica, until an epoch or a base sync of it verified. */
  #candidate: EpochDecoder | null = null;
  /** Set from a new upstream's handshake until it sent an epoch or a base sync (see connected). */
  #holdAcks = false;
  /** Own decodes waiting for the peers (see decodeDue), oldest first. */
  #decodeWaiters: {
    epoch: number;
    resolve: () => void;
    timer: ReturnType<typeof setTimeout>;
  }[] = [];
  #note: (line: string) => void;

  private constructor(readonly url: string, readonly options: RelayOptions) {
    this.auth = options.auth ?? PeerAuth.none();
    this.imageLimits = options.imageLimits ?? defaultImageLimits();
    this.policy = options.ack ?? {
      who: { kind: "all" },
      level: AckLevel.applied,
    };
    checkAckPolicy(this.policy, options.to.length);
    this.durable = this.policy.level === AckLevel.durable;
    this.ackLevel = this.policy.level;
    this.retained = new RetainedLog(options.logBytes ?? 256 << 20);
    this.zstd = createCodecZstd();
    this.#note = options.note ?? ((l) => console.error(l));
    this.links = options.to.map((u) => new PeerLink(u, this, options.link));
  }

  /** The term of the stream it forwards: its upstream's (see `UpstreamServer.term`). */
  get term(): number {
    return this.upstream?.term ?? 0;
  }

  /** A newer term: the peers reconnect, so their HELLOs carry it on down. */
  termRaised(term: number): void {
    this.#note(`term ${term}: reconnecting to the peers with it`);
    for (const l of this.links) l.reconnect().catch(() => {});
  }

  /** Starts listening for the upstream and connecting to the peers. */
  static async open(options: RelayOptions): Promise<Relay> {
    if (options.to.length === 0) {
      throw new RangeError("a relay needs at least one --to peer");
    }
    const listener = await listen(options.listen, options.transport);
    const relay = new Relay(listener.url, options);
    relay.upstream = new UpstreamServer(listener, relay);
    relay.upstream.start();
    for (const l of relay.links) l.start();
    return relay;
  }

  get blockSize(): number {
    return this.decoder?.hasher.blockSize ?? 64;
  }

  /** The replica's epoch. */
  get epoch(): number {
    return this.decoder?.epoch ?? 0;
  }

  note(line: string): void {
    this.#note(line);
  }

  images(): ImageInfo[] | null {
    return this.#images;
  }

  blockHashes(): { epoch: number; hashes: Uint32Array[] } {
    const d = this.decoder!;
    return { epoch: d.epoch, hashes: d.images.map((i) => i.hashes) };
  }

  snapshot(): BaseSnapshot {
    const d = this.decoder!;
    return {
      epoch: d.epoch,
      images: digestsOf(d),
      contents: d.images.map((i) => i.committed.slice(0, i.size)),
    };
  }

  replicaFor(hello: Hello): EpochDecoder | null {
    const d = this.decoder;
    this.#candidate = null;
    return d && replicates(d, hello) ? d : null;
  }

  candidate(hello: Hello): EpochDecoder {
    const d = this.decoder;
    const fresh = new EpochDecoder(hello.images, {
      blockSize: hello.blockSize,
      zstd: this.zstd,
    });
    if (!d) {
      this.#adopt(fresh, 0);
      return fresh;
    }
    // Another lineage: it replaces the replica (and the log the peers
    // follow) only once an epoch or a base sync of it verified; until then
    // nothing of it is forwarded.
    this.#candidate = fresh;
    return fresh;
  }

  /** `decoder` is the replica from `epoch` on: the log and the peers start over from there. */
  #adopt(decoder: EpochDecoder, epoch: number): void {
    this.decoder = decoder;
    this.#candidate = null;
    this.#images = decoder.images.map((i) => ({ id: i.id, size: i.size }));
    this.retained.restart(epoch, digestsOf(decoder));
    for (const l of this.links) l.acks.reset(0);
    this.ackedUp.fill(0);
  }

  forward(
    epoch: number,
    frames: Uint8Array[],
    images: ImageDigestInfo[],
  ): void {
    faultPoint("relay.forward");
    this.#holdAcks = false;
    if (this.#candidate) return; // not verified yet: see candidate
    const bytes = frames.reduce((n, f) => n + f.length, 0);
    this.retained.append({ epoch, frames, bytes, images });
  }

  rejected(epoch: number): void {
    if (this.#candidate) return; // the log never saw the candidate's epochs
    // The log ran ahead with an epoch this replica refused: peers that took
    // it will be refused too; restart the log where the replica is.
    this.retained.restart(epoch, digestsOf(this.decoder!));
  }

  applied(
    epoch: number,
    _frames: Uint8Array[],
    _applied: AppliedEpoch,
  ): AckLevel | null {
    // A new lineage's first verified epoch: the peers get a base sync of it.
    if (this.#candidate?.epoch === epoch) this.#adopt(this.#candidate, epoch);
    this.#holdAcks = false;
    this.#ackUp();
    return null;
  }

  based(
    epoch: number,
    contents: Uint8Array[],
    images: ImageDigestInfo[],
  ): AckLevel | null {
    if (this.#candidate) this.#adopt(this.#candidate, 0);
    this.decoder!.load(
      epoch,
      contents,
      images.map((i) => i.length ?? i.size),
    );
    this.retained.restart(epoch, images);
    // The peers' acks were for the old log, maybe another history.
    for (const l of this.links) l.acks.reset(0);
    this.ackedUp.fill(0);
    this.#holdAcks = false;
    this.#ackUp();
    return null;
  }

  connected(_epoch: number): AckLevel {
    // A new upstream knows nothing of earlier acks; they follow as peers ack
    // — but only once it sent something of its own history (an epoch, or a
    // base sync): until then the peers' acks may be of another history,
    // which must not reach it as acks of its epochs.
    this.ackedUp.fill(0);
    this.#holdAcks = true;
    return AckLevel.applied;
  }

  decodeDue(epoch: number): Promise<void> {
    // With `none` the relay's own replica is what it acks: decode now.
    if (this.policy.who.kind === "none" || this.#peersHold(epoch)) {
      return Promise.resolve();
    }
    const { promise, resolve } = Promise.withResolvers<void>();
    const timer = setTimeout(() => this.#wakeDecodes(epoch), DECODE_DEFER_MS);
    this.#decodeWaiters.push({ epoch, resolve, timer });
    // A backlog means decodes are falling behind the stream: stop deferring.
    if (this.#decodeWaiters.length > MAX_DEFERRED_EPOCHS) {
      this.#wakeDecodes(this.#decodeWaiters[0].epoch);
    }
    return promise;
  }

  /** True once every live peer acked `epoch` at the policy's level. */
  #peersHold(epoch: number): boolean {
    return this.links.every((l) =>
      l.state !== "live" || l.acks.epochs[this.policy.level] >= epoch
    );
  }

  /** Releases, in order, the deferred decodes up to epoch `upTo` and those the peers hold. */
  #wakeDecodes(upTo = 0): void {
    const waiters = this.#decodeWaiters;
    let n = 0;
    while (
      n < waiters.length &&
      (waiters[n].epoch <= upTo || this.#peersHold(waiters[n].epoch))
    ) {
      clearTimeout(waiters[n].timer);
      waiters[n].resolve();
      n++;
    }
    if (n > 0) waiters.splice(0, n);
  }

  onAck(_link: PeerLink): void {
    this.#ackUp();
    this.#wakeDecodes();
  }

  /** Acks upstream whatever the policy over the peers now allows, per level. */
  #ackUp(): void {
    if (this.#holdAcks) return;
    const own = this.epoch;
    for (let level = AckLevel.durable; level >= 0; level--) {
      const acked = this.links.map((l) => l.acks.epochs[level]);
      // `none`: the relay's own replica speaks for the levels it reaches
      // itself. Otherwise the peers do; the relay's own decode (for base
      // syncs) runs after forwarding and is not waited for.
      const e = this.policy.who.kind === "none"
        ? (level <= AckLevel.applied ? own : 0)
        : Math.min(
          this.retained.last,
          committedEpoch(this.policy.who, acked, own),
        );
      if (e > this.ackedUp[level]) {
        for (let l = 0; l <= level; l++) {
          this.ackedUp[l] = Math.max(this.ackedUp[l], e);
        }
        this.upstream.ack(e, level as AckLevel);
      }
    }
  }

  /** Figures for /status. */
  status(): Record<string, unknown> {
    return {
      role: this.role,
      term: this.term,
      ...(this.cluster ? { cluster: this.cluster } : {}),
      listen: this.url,
      policy: formatAckPolicy(this.policy),
      epoch: this.epoch,
      committedEpoch: this.ackedUp[this.policy.level],
      images: this.decoder ? digestsOf(this.decoder) : [],
      upstream: this.upstream.status(),
      ackedUpstream: {
        received: this.ackedUp[0],
        applied: this.ackedUp[1],
        durable: this.ackedUp[2],
      },
      log: {
        first: this.retained.first,
        last: this.retained.last,
        bytes: this.retained.bytes,
      },
      peers: this.links.map((l) => l.status()),
    };
  }

  async close(): Promise<void> {
    this.#wakeDecodes(Infinity);
    await this.upstream.close();
    await Promise.all(this.links.map((l) => l.stop()));
    this.zstd.close();
  }
}
