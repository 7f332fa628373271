/**
 * `deno task backup --listen URL --store DIR [--http HOST:PORT]`
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import {
  ackPolicy,
  checkUrl,
  CLUSTER_HELP,
  CLUSTER_VALUED,
  clusterOptions,
  COMMON_HELP,
  COMMON_VALUED,
  controlApp,
  DOWNSTREAM_HELP,
  DOWNSTREAM_VALUED,
  imageLimits,
  last,
  linkOptions,
  onSignal,
  peerAuth,
  peerUrls,
  serveControl,
  transportOptions,
} from "../src/_role_cli.ts";
import { EtcdClient } from "../src/etcd.ts";
import {
  electionWinner,
  followCluster,
  LeaderLease,
  type LeaderRecord,
  type MemberRecord,
  publishMember,
  readLeader,
  readMembers,
  watchFollowers,
} from "../src/cluster.ts";
import type { Primary } from "../src/primary.ts";
import {
  Backup,
  type PromoteOptions,
  type PromoteResume,
} from "../src/backup.ts";
import { parseLevelChoice } from "../src/level.ts";
import {
  formatAckPolicy,
  parseAckLevel,
  parseAckWho,
} from "../src/ack_policy.ts";
import { AckLevel } from "../src/protocol.ts";
import { holdsGuest } from "../src/resume.ts";

const USAGE =
  `usage: deno task backup --listen URL --store DIR [--http HOST:PORT] [options]

Accepts one upstream (a primary or a relay) on --listen, verifies and applies
every epoch atomically to DIR/ID.img (each file always equals one committed
checkpoint, across crashes), and acknowledges it. With --http, POST /promote
(JSON body: {"to": ["URL", ...], "ack": "all", "ackLevel": "applied",
"interval": 1000, "level": "fast"}) makes it a primary that replicates its
images from its last committed epoch; --promote does that at start.
For a QEMU guest, add "resume": {"hold": "n0", "command": ["qemu-system-x86_64",
...], "dir": DIR, "qmp": PATH, "mem": PATH} (every key optional; see deno
task resume --help): the backup resumes the guest of its last committed
checkpoint on this host and protects it in turn, so the backups that hold
the same checkpoint continue from it without a base sync. A store with a
guest cannot be resumed while this role runs on it: promote it, or stop it
and use deno task resume.

  --promote          start as a primary from the store (needs --to)
  --candidate        (with --etcd) when the primary's leader key goes, take
                     part in the election: the most advanced of its peers
                     that surely holds every epoch the old primary may have
                     reported committed becomes primary with the next term
                     and sends to the old primary's other peers
  --on-promote CMD   once this backup is primary (elected or promoted), run
                     sh -c CMD with PATCHWIRE_EPOCH, PATCHWIRE_TERM and
                     PATCHWIRE_STORE set: where the workload is not a QEMU
                     guest, this starts it from the store's images (an
                     elected backup whose store holds a qemu: guest resumes
                     it itself, with its stored command line)
  --resume-hold NETDEV[,NETDEV...]  (with --candidate) the netdevs whose
                     output an elected backup holds until each epoch commits
                     once it resumed its store's guest (qemu:…&hold=)
  --follow-leader    (with --etcd) ask the cluster's primary to send to this
                     backup: it adds it to its peers and brings it up to
                     date (by block hashes where it holds something); how a
                     former primary rejoins, or a backup joins a running
                     cluster
  --to URL[,URL...]  peers for --promote
  --ack, --ack-level, --interval MS|manual, --level fast|max|auto: as for the primary
${DOWNSTREAM_HELP}
${CLUSTER_HELP}
                    A backup follows the cluster's term: it refuses a primary of
                    an older term, and drops it when a newer term begins.
${COMMON_HELP}`;

function promoteOptions(
  body: Record<string, unknown>,
  fallback: PromoteOptions,
): PromoteOptions {
  const known = ["to", "ack", "ackLevel", "interval", "level", "resume"];
  for (const key of Object.keys(body)) {
    if (!known.includes(key)) {
      throw new RangeError(
        `unknown promote option "${key}", expected ${known.join(", ")}`,
      );
    }
  }
  if (
    body.to !== undefined &&
    !(Array.isArray(body.to) && body.to.every((u) => typeof u === "string"))
  ) {
    throw new RangeError(`"to" must be an array of peer URLs`);
  }
  const to = (body.to as string[] | undefined) ?? fallback.to;
  const resume = body.resume === undefined
    ? undefined
    : resumeOptions(body.resume);
  const interval = body.interval;
  if (
    interval !== undefined && interval !== "manual" &&
    !(Number.isSafeInteger(interval) && (interval as number) >= 1)
  ) {
    throw new RangeError(
      `"interval" must be a whole number of ms >= 1 or "manual", got ${
        JSON.stringify(interval)
      }`,
    );
  }
  return {
    ...fallback,
    to,
    ack: {
      who: typeof body.ack === "string"
        ? parseAckWho(body.ack)
        : fallback.ack!.who,
      level: typeof body.ackLevel === "string"
        ? parseAckLevel(body.ackLevel)
        : fallback.ack!.level,
    },
    intervalMs: interval === "manual"
      ? null
      : typeof interval === "number"
      ? interval
      : fallback.intervalMs,
    level: typeof body.level === "string"
      ? parseLevelChoice(body.level)
      : fallback.level,
    ...(resume ? { resume } : {}),
  };
}

/** The "resume" object of a promote body: the QEMU command and where things go. */
function resumeOptions(v: unknown): PromoteResume {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new RangeError(
      `"resume" must be an object: {"command": [...], "dir", "qmp", "mem", "image", "hold"} (all optional)`,
    );
  }
  const r = v as Record<string, unknown>;
  const strings = ["dir", "qmp", "mem", "image", "hold"];
  for (const key of Object.keys(r)) {
    if (key !== "command" && !strings.includes(key)) {
      throw new RangeError(
        `unknown resume option "${key}", expected command, ${
          strings.join(", ")
        }`,
      );
    }
    if (key !== "command" && typeof r[key] !== "string") {
      throw new RangeError(`resume "${key}" must be a string`);
    }
  }
  if (
    r.command !== undefined &&
    !(Array.isArray(r.command) && r.command.length > 0 &&
      r.command.every((a) => typeof a === "string"))
  ) {
    throw new RangeError(
      `resume "command" must be a non-empty array of strings (the QEMU command, binary first)`,
    );
  }
  return r as PromoteResume;
}

/**
 * Runs a backup from its command-line arguments; returns once it is
 * serving (it runs until a signal). A primary that a newer term replaced
 * becomes a follower through this.
 */
export async function runBackup(argv: string[]): Promise<void> {
  const args = parseArgs(argv, [
    "listen",
    "store",
    "to",
    "ack",
    "ack-level",
    "interval",
    "level",
    "on-promote",
    "resume-hold",
    ...COMMON_VALUED,
    ...DOWNSTREAM_VALUED,
    ...CLUSTER_VALUED,
  ], ["help", "promote", "candidate", "follow-leader"]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const listenText = last(args, "listen");
  const listen = listenText === undefined ? undefined : checkUrl(
    listenText,
    "--listen",
    { listen: true, hasCert: args.options.has("cert") },
  );
  const store = last(args, "store");
  if (!listen) throw new UsageError("--listen is required");
  if (!store) throw new UsageError("--store is required");
  const transport = transportOptions(args);
  const limits = imageLimits(args);
  const clustered = clusterOptions(args);
  const etcd = clustered ? await EtcdClient.connect(clustered.etcd) : null;
  const auth = await peerAuth(args, transport);
  const link = linkOptions(args, transport);
  const intervalText = last(args, "interval") ?? "1000";
  const fallback: PromoteOptions = {
    to: peerUrls(args, "to"),
    ack: args.options.has("ack") || args.options.has("ack-level")
      ? ackPolicy(args)
      : { who: { kind: "all" }, level: AckLevel.applied },
    intervalMs: intervalText === "manual"
      ? null
      : intOption(intervalText, "interval", 1),
    level: parseLevelChoice(last(args, "level") ?? "fast"),
    auth,
    link,
  };
  let backup: Backup | null = null;
  let following: ReturnType<typeof followCluster> | null = null;
  let lease: LeaderLease | null = null;
  let followers: { stop: () => Promise<void> } | null = null;
  const onPromote = last(args, "on-promote");
  /** Runs --on-promote for primary `p`, logging how it ended. */
  const promoted = (p: Primary) => {
    if (!onPromote) return;
    const child = new Deno.Command("sh", {
      args: ["-c", onPromote],
      env: {
        PATCHWIRE_EPOCH: String(p.epoch),
        PATCHWIRE_TERM: String(p.term),
        PATCHWIRE_STORE: store,
      },
      stdin: "null",
    }).spawn();
    console.error(
      `backup: --on-promote started (pid ${child.pid}): ${onPromote}`,
    );
    child.status.then((s) =>
      console.error(`backup: --on-promote exited with code ${s.code}`)
    );
  };
  /** Promotes; in a cluster, only with the leader key and the next term. */
  const promote = async (options: PromoteOptions): Promise<Primary> => {
    const b = backup!;
    if (!etcd || !clustered) {
      const p = await b.promote(options);
      promoted(p);
      return p;
    }
    const now = await readLeader(etcd, clustered.cluster);
    if (now.leader) {
      throw new Error(
        `cluster ${clustered.cluster} has a primary: ${now.leader.name} (term ${now.term}); promoting this backup would make a second one`,
      );
    }
    // Stop taking epochs first (closing a link to a paused or cut-off
    // primary can take seconds), so the lease is fresh when the primary starts.
    await b.upstream.close(false);
    const policy = formatAckPolicy(options.ack!).split("/");
    const won = await LeaderLease.acquire(etcd, {
      cluster: clustered.cluster,
      name: clustered.name,
      leaseMs: clustered.leaseMs,
      ack: policy[0],
      ackLevel: policy[1],
      peers: options.to,
      note: (l) => console.error(`backup: ${l}`),
    });
    if (!(won instanceof LeaderLease)) {
      throw new Error(
        `cluster ${clustered.cluster} has a primary: ${won.leader.name} (term ${won.term}), elected meanwhile; this backup no longer takes epochs from its upstream: restart it to follow again`,
      );
    }
    try {
      const p = await b.promote({ ...options, term: won.term });
      promoted(p);
      p.cluster = { cluster: clustered.cluster, name: clustered.name };
      won.start(p);
      lease = won;
      followers = watchFollowers(
        etcd,
        {
          cluster: clustered.cluster,
          name: clustered.name,
          everyMs: clustered.leaseMs / 3,
        },
        p,
        (l) => console.error(`backup: ${l}`),
      );
      await following?.stop();
      console.error(
        `backup: leader of cluster ${clustered.cluster} as ${clustered.name}, term ${won.term}`,
      );
      return p;
    } catch (e) {
      await won.stop();
      throw e;
    }
  };
  const target = () => {
    const b = backup!;
    return {
      status: () => b.status(),
      checkpoint: b.promoted ? () => b.promoted!.checkpoint() : undefined,
      promote: b.promoted
        ? undefined
        : async (body: Record<string, unknown>) => {
          const p = await promote(promoteOptions(body, fallback));
          const r = b.resumed;
          return {
            promoted: true,
            epoch: p.epoch,
            ...(r
              ? {
                resumed: {
                  pid: r.pid,
                  qmp: r.qmp,
                  mem: r.mem,
                  log: r.log,
                  times: r.times,
                },
              }
              : {}),
          };
        },
    };
  };
  const { app, shared } = controlApp(args, target, listen);
  backup = await Backup.open({
    listen,
    store,
    auth,
    imageLimits: limits,
    transport: { ...transport, app: shared ? app! : undefined },
  });
  const b = backup;
  const server = await serveControl(args, app);
  console.error(
    `backup: listening on ${b.url} (store ${b.store.dir} at epoch ${b.epoch})`,
  );
  const candidate = args.options.has("candidate");
  if (candidate && !clustered) {
    throw new UsageError("--candidate needs --etcd, --cluster and --name");
  }
  const followLeader = args.options.has("follow-leader");
  if (followLeader && !clustered) {
    throw new UsageError("--follow-leader needs --etcd, --cluster and --name");
  }
  // Every backup of a cluster publishes what it holds; candidates use it
  // to elect the one that surely holds every committed epoch.
  const member = etcd && clustered
    ? publishMember(etcd, clustered, () => ({
      name: clustered.name,
      role: b.promoted ? "primary" : "backup",
      listen: b.url,
      term: b.upstream.term,
      epoch: b.epoch,
      storedEpoch: b.store.state?.epoch ?? 0,
      // A damaged store may not be elected until repaired.
      candidate: candidate && b.damaged.length === 0,
      upstream: b.upstream.remote,
      images: b.status().images as MemberRecord["images"],
      ...(followLeader ? { followLeader: true } : {}),
    }))
    : null;
  let electing = false;
  /** After the leader of `term` went (at etcd revision `since`): elect, and promote if this backup wins. */
  const elect = async (
    lastLeader: LeaderRecord | null,
    term: number,
    since: number,
  ) => {
    if (!candidate || electing || b.promoted || !etcd || !clustered) return;
    if (!lastLeader) {
      // Its policy and peers are unknown: nothing proves who holds what.
      console.error(
        `backup: no leader, and none seen by this backup: not electing (start a primary, or promote one by hand)`,
      );
      return;
    }
    electing = true;
    const t0 = performance.now();
    let said = "";
    try {
      await member!.poke(); // what this backup holds now, after the leader went
      const end = t0 + 3 * clustered.leaseMs;
      while (performance.now() < end && !b.promoted) {
        // Waiting for the other peers' records: a condition in etcd.
        await new Promise((r) => setTimeout(r, 100));
        if ((await readLeader(etcd, clustered.cluster)).leader) return;
        const round = electionWinner(
          await readMembers(etcd, clustered.cluster),
          lastLeader,
          term,
          since,
        );
        if ("waiting" in round) {
          if (round.waiting !== said) {
            console.error(`backup: election: ${round.waiting}`);
          }
          said = round.waiting;
          continue;
        }
        if (round.winner !== clustered.name) continue; // it takes the key
        const peers = (lastLeader?.peers ?? []).filter((u) => u !== b.url);
        const who = lastLeader?.ack === undefined
          ? fallback.ack!.who
          : parseAckWho(lastLeader.ack);
        // A guest in the store is resumed, with its stored command line.
        const guest = holdsGuest(b.store.state?.images ?? []);
        const hold = last(args, "resume-hold");
        const p = await promote({
          ...fallback,
          ...(guest ? { resume: hold ? { hold } : {} } : {}),
          to: peers,
          ack: {
            who: who.kind === "quorum"
              ? {
                kind: "quorum",
                k: Math.min(who.k, Math.max(1, peers.length)),
              }
              : who,
            level: lastLeader?.ackLevel
              ? parseAckLevel(lastLeader.ackLevel)
              : fallback.ack!.level,
          },
        });
        console.error(
          `backup: elected in ${
            (performance.now() - t0).toFixed(0)
          } ms after the leader of term ${term} went: primary of term ${p.term} at epoch ${p.epoch}, sending to ${
            peers.join(", ") || "no peers"
          }`,
        );
        p.onCommit((r) => console.log(`epoch ${r.epoch} committed`));
        return;
      }
    } catch (e) {
      console.error(`backup: election: ${(e as Error).message}`);
    } finally {
      electing = false;
    }
  };
  following = etcd && clustered
    ? followCluster(etcd, {
      cluster: clustered.cluster,
      name: clustered.name,
      note: (l) => console.error(`backup: ${l}`),
      leaderGone: (lastLeader, term, since) => {
        member?.poke();
        elect(lastLeader, term, since);
      },
    }, b.upstream)
    : null;
  b.cluster = following?.view ?? null;
  if (args.options.has("promote")) {
    if (fallback.to.length === 0 && fallback.ack!.who.kind !== "none") {
      throw new UsageError("--promote needs --to (or --ack none)");
    }
    const p = await promote(fallback);
    p.onCommit((r) => console.log(`epoch ${r.epoch} committed`));
  }
  onSignal(async () => {
    await followers?.stop();
    await following?.stop();
    await member?.stop();
    await b.close();
    // Only then the leader key goes: nothing more will be committed.
    await lease?.stop();
    await server?.close();
  });
}

if (import.meta.main) await runMain(USAGE, () => runBackup(Deno.args));
