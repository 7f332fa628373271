/**
 * Who is primary, decided in etcd (never by a consensus protocol of our
 * own), with fencing terms — the way Patroni runs PostgreSQL.
 *
 * Under `/patchwire/CLUSTER/`:
 *
 * - `term`: the cluster's term, a number that only grows. Each election
 *   raises it in the same etcd transaction that takes the leader key.
 * - `leader`: JSON `{name, term, listen}` of the primary, attached to its
 *   lease: it disappears when the primary stops renewing the lease.
 *
 * A primary holds the leader key under a lease of `leaseMs` and renews it
 * every third of that. It stops committing ({@linkcode Primary.fence}) as
 * soon as it cannot be sure its lease is alive: when `leaseMs` minus a
 * margin has passed since it sent the last keep-alive etcd confirmed —
 * etcd, which counts from when it received that keep-alive, expires the
 * lease no earlier. So by the time another node can take the leader key
 * with a higher term, the old primary reports nothing committed and releases
 * no held output. If it reaches etcd again and finds its own term still
 * current (etcd was unreachable and nobody took over), it takes the leader
 * key again under a new lease, with the same term, and commits again; if it
 * finds a newer term, it stays fenced: a newer primary exists.
 *
 * @example
 * ```ts
 * const etcd = await EtcdClient.connect(["http://127.0.0.1:2379"]);
 * const won = await LeaderLease.acquire(etcd, { cluster: "c1", name: "n1", leaseMs: 3000 });
 * if (won instanceof LeaderLease) {
 *   const primary = new Primary(source, { to, term: won.term });
 *   won.start(primary);
 * }
 * ```
 * @module
 */

import { EtcdClient, EtcdError } from "./etcd.ts";

/** The value of the leader key. */
export interface LeaderRecord {
  name: string;
  term: number;
  /** Where the primary's stream comes from, for the record (its listen URL, if any). */
  listen?: string;
  /** Its ack policy (`all`, `quorum:K`, `any`, `none`) and level: what its commits promised. */
  ack?: string;
  ackLevel?: string;
  /** The peers it sends to (its --to): the followers a successor sends to. */
  peers?: string[];
}

/** A follower's record, `/patchwire/CLUSTER/members/NAME`, under its own lease. */
export interface MemberRecord {
  name: string;
  role: string;
  /** Where it accepts its upstream. */
  listen: string;
  /** The term it follows. */
  term: number;
  /** The last epoch it holds (applied), and the last in its store. */
  epoch: number;
  storedEpoch: number;
  /** Whether it may be elected (`--candidate`). */
  candidate: boolean;
  /** Where its current upstream connects from (null: none connected). */
  upstream?: string | null;
  /** Its images' digests at `epoch` (what a successor's rejoin compares against). */
  images?: { id: string; size: number; digestLo: number; digestHi: number }[];
  /**
   * Whether it asks the cluster's primary to send to it (`--follow-leader`):
   * a former primary rejoining as a follower, or a backup added to a
   * running cluster. The primary adds it to its peers
   * ({@linkcode watchFollowers}).
   */
  followLeader?: boolean;
}

/** What a cluster or node name may be: it becomes part of etcd keys. */
export const CLUSTER_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * Null if `value` is a valid cluster or node name, else why not, naming
 * `flag` (`--cluster`, `--name`).
 */
export function badClusterName(value: string, flag: string): string | null {
  return CLUSTER_NAME.test(value)
    ? null
    : `${flag} "${value}": expected 1-64 characters of A-Z a-z 0-9 . _ -`;
}

/** Where a cluster's keys are. */
export function clusterKeys(cluster: string): {
  prefix: string;
  term: string;
  leader: string;
  members: string;
} {
  const bad = badClusterName(cluster, "--cluster");
  if (bad) throw new RangeError(bad);
  const prefix = `/patchwire/${cluster}/`;
  return {
    prefix,
    term: `${prefix}term`,
    leader: `${prefix}leader`,
    members: `${prefix}members/`,
  };
}

/** Reads a leader key's value; throws naming the key if it is not ours. */
export function parseLeader(key: string, value: string): LeaderRecord {
  let v: unknown;
  try {
    v = JSON.parse(value);
  } catch {
    v = null;
  }
  const r = v as Record<string, unknown> | null;
  if (
    !r || typeof r !== "object" || typeof r.name !== "string" ||
    !Number.isSafeInteger(r.term) || (r.term as number) < 1
  ) {
    throw new EtcdError(
      `${key} holds ${
        JSON.stringify(value.slice(0, 80))
      }, not a patchwire leader record ({"name", "term"}): is another program using this cluster name?`,
    );
  }
  return {
    name: r.name,
    term: r.term as number,
    ...(typeof r.listen === "string" ? { listen: r.listen } : {}),
    ...(typeof r.ack === "string" ? { ack: r.ack } : {}),
    ...(typeof r.ackLevel === "string" ? { ackLevel: r.ackLevel } : {}),
    ...(Array.isArray(r.peers) && r.peers.every((p) => typeof p === "string")
      ? { peers: r.peers as string[] }
      : {}),
  };
}

function parseTerm(key: string, value: string | undefined): number {
  if (value === undefined) return 0;
  const term = Number(value);
  if (!Number.isSafeInteger(term) || term < 1) {
    throw new EtcdError(
      `${key} holds ${
        JSON.stringify(value.slice(0, 80))
      }, expected a cluster term (a whole number >= 1): is another program using this cluster name?`,
    );
  }
  return term;
}

/** What {@linkcode LeaderLease} needs to know. */
export interface LeaseOptions {
  cluster: string;
  /** This node's name (`--name`). */
  name: string;
  /** Lease length, ms (`--lease-ms`, default 3000); etcd counts it in whole seconds. */
  leaseMs?: number;
  listen?: string;
  /** What the leader record tells a successor: the ack policy and the peers. */
  ack?: string;
  ackLevel?: string;
  peers?: string[];
  note?: (line: string) => void;
}

/** What a leader lease fences: a primary. */
export interface Fenceable {
  fence(reason: string): void;
  unfence(): void;
}

/**
 * The cluster's current term and leader (null: none), and the etcd revision
 * they were read at (a watch from the next one misses nothing).
 */
export async function readLeader(
  etcd: EtcdClient,
  cluster: string,
): Promise<{ term: number; leader: LeaderRecord | null; revision: number }> {
  const keys = clusterKeys(cluster);
  const r = await etcd.txn([], [
    { range: { key: keys.term } },
    { range: { key: keys.leader } },
  ]);
  const termKv = r.ranges[0]?.[0];
  const leaderKv = r.ranges[1]?.[0];
  return {
    term: parseTerm(keys.term, termKv?.value),
    leader: leaderKv ? parseLeader(keys.leader, leaderKv.value) : null,
    revision: r.revision,
  };
}

/** A primary's hold on the leader key; see the module documentation. */
export class LeaderLease {
  readonly term: number;
  readonly leaseMs: number;
  /** Whether the lease is known alive (false: the primary is fenced). */
  alive = true;
  /** Set once a newer term was seen: this node is no longer the primary. */
  supersededBy: LeaderRecord | number | null = null;
  /** Resolves once a newer term was seen (with the new leader, or the term). */
  readonly superseded: Promise<LeaderRecord | number>;
  #superseded!: (by: LeaderRecord | number) => void;
  #lease: string;
  #lastConfirmed: number;
  #stopped = false;
  #loop: Promise<void> | null = null;
  #wake: (() => void) | null = null;
  /** Fires at the deadline unless a keep-alive is confirmed first. */
  #fenceTimer: ReturnType<typeof setTimeout> | null = null;
  readonly #note: (line: string) => void;

  private constructor(
    readonly etcd: EtcdClient,
    readonly options: LeaseOptions,
    term: number,
    lease: string,
    sentAt: number,
  ) {
    this.term = term;
    this.leaseMs = options.leaseMs ?? 3000;
    this.#lease = lease;
    this.#lastConfirmed = sentAt;
    this.#note = options.note ?? ((l) => console.error(l));
    this.superseded = new Promise((r) => this.#superseded = r);
  }

  /** etcd's TTL for a lease of `ms`: whole seconds, at least 1. */
  static ttlSeconds(ms: number): number {
    return Math.max(1, Math.floor(ms / 1000));
  }

  /**
   * Takes the leader key with the next term if nobody holds it; returns the
   * lease, or the current leader.
   */
  static async acquire(
    etcd: EtcdClient,
    options: LeaseOptions,
  ): Promise<LeaderLease | { term: number; leader: LeaderRecord }> {
    const keys = clusterKeys(options.cluster);
    const leaseMs = options.leaseMs ?? 3000;
    for (;;) {
      const now = await readLeader(etcd, options.cluster);
      if (now.leader) return { term: now.term, leader: now.leader };
      const sentAt = performance.now();
      const lease = await etcd.grant(LeaderLease.ttlSeconds(leaseMs));
      const term = now.term + 1;
      const won = await takeLeader(etcd, keys, options, now.term, term, lease);
      if (won) return new LeaderLease(etcd, options, term, lease, sentAt);
      await etcd.revoke(lease).catch(() => {});
      // Someone else moved first: look again.
    }
  }

  /** Renews the lease until {@linkcode LeaderLease.stop}, fencing `primary` when it cannot. */
  start(primary: Fenceable): void {
    this.#loop ??= this.#run(primary);
  }

  /** The instant (performance.now()) after which the lease may be gone. */
  get deadline(): number {
    // Margin for the two clocks' rates and the time etcd took to answer.
    return this.#lastConfirmed + this.leaseMs - Math.min(500, this.leaseMs / 6);
  }

  /**
   * Fences `primary` at the deadline, whatever the keep-alive in flight is
   * doing (a request to an unreachable etcd may hang well past it).
   */
  #armFence(primary: Fenceable): void {
    if (this.#fenceTimer !== null) clearTimeout(this.#fenceTimer);
    this.#fenceTimer = setTimeout(() => {
      this.#fenceTimer = null;
      if (this.#stopped) return;
      this.#fence(
        primary,
        `etcd did not confirm its leader lease within ${this.leaseMs} ms`,
      );
    }, Math.max(0, this.deadline - performance.now()));
  }

  async #run(primary: Fenceable): Promise<void> {
    const every = this.leaseMs / 3;
    this.#armFence(primary);
    while (!this.#stopped) {
      const sentAt = performance.now();
      let ttl: number | null = null;
      try {
        ttl = await this.etcd.keepAlive(this.#lease);
      } catch (e) {
        if (this.alive) {
          this.#note(`lease keep-alive failed: ${(e as Error).message}`);
        }
      }
      if (ttl !== null && ttl > 0 && this.supersededBy === null) {
        this.#lastConfirmed = sentAt;
        this.#armFence(primary);
        if (!this.alive) {
          this.alive = true;
          primary.unfence();
        }
      } else if (ttl === 0) {
        // The lease is gone at etcd: stop now, then see who holds the term.
        this.#fence(primary, "its leader lease expired in etcd");
        await this.#retake(primary);
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, every);
        this.#wake = () => {
          clearTimeout(t);
          r();
        };
      });
      this.#wake = null;
    }
  }

  #fence(primary: Fenceable, reason: string): void {
    if (!this.alive) return;
    this.alive = false;
    primary.fence(reason);
  }

  /** After the lease expired: the same term again if nobody took over, else superseded. */
  async #retake(primary: Fenceable): Promise<void> {
    if (this.supersededBy !== null) return;
    let now;
    try {
      now = await readLeader(this.etcd, this.options.cluster);
    } catch {
      return; // etcd unreachable again: the next round tries
    }
    if (now.term > this.term || (now.leader && now.leader.term > this.term)) {
      this.supersededBy = now.leader ?? now.term;
      this.#note(
        `term ${now.term} began${
          now.leader ? ` with ${now.leader.name} as primary` : ""
        }: this node's term ${this.term} is over (fenced for good)`,
      );
      this.#superseded(this.supersededBy);
      return;
    }
    if (now.leader) return; // ours, from a lease about to go: wait
    const keys = clusterKeys(this.options.cluster);
    const sentAt = performance.now();
    const lease = await this.etcd.grant(LeaderLease.ttlSeconds(this.leaseMs));
    const won = await takeLeader(
      this.etcd,
      keys,
      this.options,
      this.term,
      this.term,
      lease,
    );
    if (!won) {
      await this.etcd.revoke(lease).catch(() => {});
      return;
    }
    this.#lease = lease;
    this.#lastConfirmed = sentAt;
    this.#armFence(primary);
    this.alive = true;
    this.#note(`leader key taken again with term ${this.term}`);
    primary.unfence();
  }

  /** Stops renewing and gives the leader key up (the lease is revoked). */
  async stop(release = true): Promise<void> {
    this.#stopped = true;
    if (this.#fenceTimer !== null) clearTimeout(this.#fenceTimer);
    this.#wake?.();
    await this.#loop;
    if (release) await this.etcd.revoke(this.#lease).catch(() => {});
  }
}

/**
 * The transaction of an election: if the term is still `from` and nobody
 * holds the leader key, the term becomes `to` and the leader key is ours,
 * under `lease`.
 */
async function takeLeader(
  etcd: EtcdClient,
  keys: { term: string; leader: string },
  options: LeaseOptions,
  from: number,
  to: number,
  lease: string,
): Promise<boolean> {
  const record: LeaderRecord = {
    name: options.name,
    term: to,
    ...(options.listen ? { listen: options.listen } : {}),
    ...(options.ack ? { ack: options.ack } : {}),
    ...(options.ackLevel ? { ackLevel: options.ackLevel } : {}),
    ...(options.peers ? { peers: options.peers } : {}),
  };
  const r = await etcd.txn(
    [
      from === 0
        ? { key: keys.term, target: "create", createRevision: 0 }
        : { key: keys.term, target: "value", value: String(from) },
      { key: keys.leader, target: "create", createRevision: 0 },
    ],
    [
      { put: { key: keys.term, value: String(to) } },
      { put: { key: keys.leader, value: JSON.stringify(record), lease } },
    ],
  );
  return r.succeeded;
}

/** What {@linkcode followCluster} tells a relay or backup: the term to follow. */
export interface TermFollower {
  adoptTerm(term: number): Promise<void>;
}

/** The cluster as a relay or backup sees it, for /status. */
export interface ClusterView {
  cluster: string;
  name: string;
  term: number;
  leader: string | null;
  /** Set while etcd cannot be read or watched. */
  etcdError: string | null;
}

/**
 * Follows the cluster's term in etcd: reads it, then watches the cluster's
 * keys, and hands every new term to `follower` (which then refuses the old
 * primary and drops it if connected). Re-reads and watches again whenever
 * the watch breaks (etcd unreachable: retried every second). Returns the
 * view it keeps current, and a stop function.
 */
export function followCluster(
  etcd: EtcdClient,
  options: {
    cluster: string;
    name: string;
    note?: (line: string) => void;
    /**
     * The leader key is gone (its lease expired or was revoked), or there
     * was none when etcd was read: `last` is the record it held, if seen.
     */
    leaderGone?: (
      last: LeaderRecord | null,
      term: number,
      revision: number,
    ) => void;
  },
  follower: TermFollower,
): { view: ClusterView; stop: () => Promise<void> } {
  const keys = clusterKeys(options.cluster);
  const note = options.note ?? ((l) => console.error(l));
  const view: ClusterView = {
    cluster: options.cluster,
    name: options.name,
    term: 0,
    leader: null,
    etcdError: null,
  };
  const abort = new AbortController();
  let last: LeaderRecord | null = null;
  const gone = (revision: number) =>
    options.leaderGone?.(last, view.term, revision);
  const adopt = async (term: number) => {
    if (term > view.term) {
      view.term = term;
      await follower.adoptTerm(term);
    }
  };
  const run = async () => {
    while (!abort.signal.aborted) {
      try {
        const now = await readLeader(etcd, options.cluster);
        await adopt(now.term);
        if (now.leader) last = now.leader;
        view.leader = now.leader?.name ?? null;
        if (!now.leader) gone(now.revision);
        if (view.etcdError) note(`etcd readable again: term ${view.term}`);
        view.etcdError = null;
        await etcd.watch(
          keys.prefix,
          (e) => {
            try {
              if (e.kv.key === keys.term && e.type === "put") {
                adopt(parseTerm(keys.term, e.kv.value)).catch(() => {});
              } else if (e.kv.key === keys.leader) {
                if (e.type === "put") {
                  last = parseLeader(keys.leader, e.kv.value);
                  view.leader = last.name;
                } else {
                  view.leader = null;
                  gone(e.kv.modRevision);
                }
              }
            } catch (err) {
              note((err as Error).message);
            }
          },
          abort.signal,
          { prefix: true, fromRevision: now.revision + 1 },
        );
      } catch (e) {
        const msg = (e as Error).message;
        if (msg !== view.etcdError) note(`cluster ${options.cluster}: ${msg}`);
        view.etcdError = msg;
      }
      if (abort.signal.aborted) break;
      // The watch ended or etcd is unreachable: read again shortly.
      await new Promise<void>((r) => {
        const t = setTimeout(r, 1000);
        abort.signal.addEventListener("abort", () => {
          clearTimeout(t);
          r();
        }, { once: true });
      });
    }
  };
  const running = run();
  return {
    view,
    stop: async () => {
      abort.abort();
      await running;
    },
  };
}

/**
 * Publishes this node's {@linkcode MemberRecord} under a lease of its own
 * (it disappears when the node does), every third of `leaseMs` and at once
 * on `poke`.
 */
export function publishMember(
  etcd: EtcdClient,
  options: { cluster: string; name: string; leaseMs: number },
  record: () => MemberRecord,
): { poke: () => Promise<void>; stop: () => Promise<void> } {
  const key = `${clusterKeys(options.cluster).members}${options.name}`;
  let lease: string | null = null;
  let stopped = false;
  let wake: (() => void) | null = null;
  const publish = async () => {
    if (lease !== null && (await etcd.keepAlive(lease)) === 0) lease = null;
    lease ??= await etcd.grant(LeaderLease.ttlSeconds(options.leaseMs));
    await etcd.put(key, JSON.stringify(record()), lease);
  };
  let chain = Promise.resolve();
  const poke = () => {
    chain = chain.then(publish).catch(() => {});
    return chain;
  };
  const loop = (async () => {
    while (!stopped) {
      await poke();
      await new Promise<void>((r) => {
        const t = setTimeout(r, options.leaseMs / 3);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  })();
  return {
    poke,
    stop: async () => {
      stopped = true;
      wake?.();
      await loop;
      await chain;
      if (lease) await etcd.revoke(lease).catch(() => {});
    },
  };
}

/** What {@linkcode watchFollowers} adds followers to: a primary. */
export interface FollowerTarget {
  /** Starts sending to `url` if it is not a peer yet; true if it was added. */
  addPeer(url: string): boolean;
  /** Stops sending to `url`; true if it was a peer. */
  removePeer(url: string): Promise<boolean>;
}

/**
 * The primary's side of `--follow-leader`: every `everyMs`, reads the
 * member records and adds each follower that asks the primary to send to
 * it (a former primary rejoining, a backup added to the cluster) to the
 * primary's peers, and drops one again once its record is gone (its lease
 * expired: the node stopped or died), so that an ack policy over all peers
 * does not wait for it forever. Records that are not ours are skipped; an
 * etcd that cannot be read is tried again next round.
 */
export function watchFollowers(
  etcd: EtcdClient,
  options: { cluster: string; name: string; everyMs: number },
  primary: FollowerTarget,
  note: (line: string) => void = () => {},
): { stop: () => Promise<void> } {
  let stopped = false;
  let wake: (() => void) | null = null;
  /** Followers added here: URL → name. */
  const added = new Map<string, string>();
  const loop = (async () => {
    while (!stopped) {
      try {
        const asking = new Map<string, string>();
        for (const m of await readMembers(etcd, options.cluster)) {
          if (m.followLeader && m.name !== options.name) {
            asking.set(m.listen, m.name);
          }
        }
        for (const [url, name] of asking) {
          if (!added.has(url) && primary.addPeer(url)) {
            added.set(url, name);
            note(
              `follower ${name} asks this primary for its epochs: sending to ${url}`,
            );
          }
        }
        for (const [url, name] of added) {
          if (asking.has(url)) continue;
          added.delete(url);
          await primary.removePeer(url);
          note(
            `follower ${name} left the cluster (its record expired): no longer sending to ${url}`,
          );
        }
      } catch {
        // etcd unreachable: next round
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, options.everyMs);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      wake?.();
      await loop;
    },
  };
}

/** Every member record of a cluster (records that are not ours are skipped). */
export async function readMembers(
  etcd: EtcdClient,
  cluster: string,
): Promise<(MemberRecord & { revision: number })[]> {
  const out: (MemberRecord & { revision: number })[] = [];
  for (const kv of await etcd.list(clusterKeys(cluster).members)) {
    try {
      const r = JSON.parse(kv.value);
      if (
        typeof r?.name === "string" && typeof r.listen === "string" &&
        Number.isSafeInteger(r.epoch) && Number.isSafeInteger(r.term)
      ) out.push({ ...(r as MemberRecord), revision: kv.modRevision });
    } catch {
      // not ours
    }
  }
  return out;
}

/**
 * How many of the `n` peers of an ack policy must report before the most
 * advanced of them surely holds every epoch the primary may have reported
 * committed: an epoch committed under quorum:K is on K of the n peers, and
 * any n-K+1 of them include one of those K (all: K = n, one report is
 * enough; any: K = 1, every peer must report).
 */
export function reportsNeeded(ack: string | undefined, n: number): number {
  const quorum = /^quorum:(\d+)$/.exec(ack ?? "");
  const k = ack === "any" ? 1 : quorum ? Number(quorum[1]) : n;
  return Math.max(1, n - Math.min(k, n) + 1);
}

/**
 * One election round, after the leader of `term` is gone (at etcd revision
 * `since`): the winner is the most advanced candidate among the old
 * primary's peers that follow that term and published their record since
 * (by epoch, ties by name), once enough of them reported that the most
 * advanced surely holds every epoch the old primary may have reported
 * committed ({@linkcode reportsNeeded}). Every candidate computes the same
 * answer from the same records; only the winner tries to take the leader key.
 */
export function electionWinner(
  members: (MemberRecord & { revision: number })[],
  last: LeaderRecord | null,
  term: number,
  since: number,
): { winner: string } | { waiting: string } {
  const peers = last?.peers ?? [];
  // Only records written after the leader went count: before, a peer may
  // still have been taking epochs.
  // Relays publish what they hold too, but keep no store and are never
  // candidates: they are not counted (see RELIABILITY.md's election rule).
  const followers = members.filter((m) =>
    m.role !== "relay" && m.term === term && m.revision > since
  );
  const reported = peers.length
    ? followers.filter((m) => peers.includes(m.listen))
    : followers;
  const needed = peers.length ? reportsNeeded(last?.ack, peers.length) : 1;
  if (reported.length < needed) {
    return {
      waiting: `${reported.length} of the old primary's ${
        peers.length || "?"
      } peers reported, ${needed} needed to be sure one holds every committed epoch (ack ${
        last?.ack ?? "unknown"
      })`,
    };
  }
  const best = Math.max(...reported.map((m) => m.epoch));
  const top = reported.filter((m) => m.candidate && m.epoch === best)
    .sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  if (top.length === 0) {
    return {
      waiting:
        `no candidate holds epoch ${best}, the most advanced reported: none surely holds every committed epoch`,
    };
  }
  return { winner: top[0].name };
}
