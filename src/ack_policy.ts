/**
 * Ack policies: which peers must acknowledge an epoch (`all`, `quorum:K`,
 * `any`, `none`) and how far (`received`, `applied`, `durable`) before it is
 * committed — DRBD's protocols A, B and C, per peer set.
 * @module
 */

import { ACK_LEVEL_NAMES, AckLevel, type AckLevelName } from "./protocol.ts";

/** Which peers must ack. */
export type AckWho =
  | { kind: "all" }
  | { kind: "quorum"; k: number }
  | { kind: "any" }
  | { kind: "none" };

/** A whole policy. */
export interface AckPolicy {
  who: AckWho;
  level: AckLevel;
}

/**
 * Parses `all`, `quorum:K`, `any` or `none`.
 * @example
 * ```ts
 * parseAckWho("quorum:2"); // { kind: "quorum", k: 2 }
 * ```
 */
export function parseAckWho(text: string): AckWho {
  if (text === "all" || text === "any" || text === "none") {
    return { kind: text };
  }
  const m = /^quorum:(\d+)$/.exec(text);
  if (m && Number(m[1]) >= 1) return { kind: "quorum", k: Number(m[1]) };
  throw new RangeError(
    `bad ack policy "${text}": expected all, quorum:K (K ≥ 1), any or none`,
  );
}

/** Parses `received`, `applied` or `durable`. */
export function parseAckLevel(text: string): AckLevel {
  const i = ACK_LEVEL_NAMES.indexOf(text as AckLevelName);
  if (i < 0) {
    throw new RangeError(
      `bad ack level "${text}": expected received, applied or durable`,
    );
  }
  return i as AckLevel;
}

/** The policy as text, e.g. `quorum:2/applied`. */
export function formatAckPolicy(policy: AckPolicy): string {
  const who = policy.who.kind === "quorum"
    ? `quorum:${policy.who.k}`
    : policy.who.kind;
  return `${who}/${ACK_LEVEL_NAMES[policy.level]}`;
}

/** Checks that a policy can be met by `peers` peers; throws a RangeError saying why not. */
export function checkAckPolicy(policy: AckPolicy, peers: number): void {
  if (policy.who.kind === "quorum" && policy.who.k > peers) {
    throw new RangeError(
      `ack policy quorum:${policy.who.k} needs at least ${policy.who.k} peers, ${peers} given`,
    );
  }
}

/**
 * The highest epoch the policy commits, given each peer's acked epoch at the
 * policy's level (cumulative acks: acking `e` acks everything before it).
 * `none` commits whatever has been sent, `sent`.
 *
 * @example
 * ```ts
 * committedEpoch({ kind: "quorum", k: 2 }, [7, 5, 3], 9); // 5
 * ```
 */
export function committedEpoch(
  who: AckWho,
  acked: number[],
  sent: number,
): number {
  if (who.kind === "none" || acked.length === 0) return sent;
  const sorted = [...acked].sort((a, b) => b - a);
  switch (who.kind) {
    case "all":
      return sorted[sorted.length - 1];
    case "any":
      return sorted[0];
    case "quorum":
      return sorted[Math.min(who.k, sorted.length) - 1];
  }
}

/** Each peer's highest acked epoch per level, kept cumulative across levels. */
export class PeerAcks {
  /** Indexed by level: received, applied, durable. */
  readonly epochs = [0, 0, 0];

  /** Records an ack; a higher level also counts for the lower ones. Returns true if anything moved. */
  record(epoch: number, level: AckLevel): boolean {
    let moved = false;
    for (let l = 0; l <= level; l++) {
      if (epoch > this.epochs[l]) {
        this.epochs[l] = epoch;
        moved = true;
      }
    }
    return moved;
  }

  /** Starts over at `epoch` for every level (a peer that rejoined at a known epoch). */
  reset(epoch: number): void {
    this.epochs.fill(epoch);
  }

  /** The highest level reached for `epoch`, or -1. */
  levelOf(epoch: number): number {
    for (let l = AckLevel.durable; l >= 0; l--) {
      if (this.epochs[l] >= epoch) return l;
    }
    return -1;
  }
}
