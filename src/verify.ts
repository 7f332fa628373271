/**
 * Online verify, like DRBD's: every live peer hashes the bytes it stores
 * again (a backup reads its store files), at the upstream's newest epoch,
 * and the 64 KiB regions whose digests differ from the upstream's are
 * compared page by page. With `repair`, each peer that differs is rejoined
 * against its stored bytes (`rejoin.ts`), which sends only those pages, and
 * verified again.
 * @module
 */

import type { PeerLink, VerifyResult } from "./peer_link.ts";

/** Most differing ranges listed per peer (the byte count covers them all). */
export const MAX_LISTED_RANGES = 100;

/** One peer's verify outcome. */
export type PeerVerify =
  | (VerifyResult & {
    /** GB of images hashed and compared per second. */
    gbPerSecond: number;
    /** After `repair`: the verify that followed the rejoin. */
    repaired?: VerifyResult;
  })
  | { url: string; error: string };

/** What verify found on every peer. */
export interface VerifyReport {
  peers: PeerVerify[];
  /** Out-of-sync bytes over all peers (before any repair). */
  outOfSyncBytes: number;
}

/**
 * Verifies every link's peer; with `repair`, rejoins the ones that differ
 * and verifies them again (waiting at most `timeoutMs` for each rejoin).
 */
export async function verifyPeers(
  links: PeerLink[],
  options: { repair?: boolean; timeoutMs?: number } = {},
): Promise<VerifyReport> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const peers = await Promise.all(links.map(async (link) => {
    try {
      const r = await link.verify();
      const out: PeerVerify = {
        ...r,
        differing: r.differing.slice(0, MAX_LISTED_RANGES),
        gbPerSecond: r.bytes / 1e9 / Math.max(r.ms / 1000, 1e-6),
      };
      if (options.repair && r.outOfSyncBytes > 0) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new Error(
                  `peer ${link.url}: the repair did not finish within ${timeoutMs} ms (${
                    link.lastError ?? link.state
                  })`,
                ),
              ),
            timeoutMs,
          );
        });
        try {
          await Promise.race([link.repair(), late]);
        } finally {
          clearTimeout(timer);
        }
        out.repaired = await link.verify();
      }
      return out;
    } catch (e) {
      return { url: link.url, error: (e as Error).message };
    }
  }));
  return {
    peers,
    outOfSyncBytes: peers.reduce(
      (n, p) => n + ("outOfSyncBytes" in p ? p.outOfSyncBytes : 0),
      0,
    ),
  };
}
