/**
 * `deno task primary --source SOURCE --to URL[,URL...] [--interval MS | --interval manual]
 *  [--ack all|quorum:K|any|none] [--ack-level received|applied|durable] [--http HOST:PORT]`
 * @module
 */

import {
  formatBytes,
  intOption,
  parseArgs,
  runMain,
  UsageError,
} from "../src/_cli.ts";
import {
  ackPolicy,
  checkUrl,
  CLUSTER_HELP,
  CLUSTER_VALUED,
  clusterOptions,
  COMMON_HELP,
  COMMON_VALUED,
  controlApp,
  last,
  linkOptions,
  onSignal,
  peerAuth,
  peerUrls,
  serveControl,
  transportOptions,
} from "../src/_role_cli.ts";
import { runBackup } from "./backup.ts";
import { BackupStore } from "../src/backup_store.ts";
import { parseLevelChoice } from "../src/level.ts";
import { openSources } from "../src/open_source.ts";
import { Primary } from "../src/primary.ts";
import { formatAckPolicy } from "../src/ack_policy.ts";
import { type CheckpointSeed, checkpointSeed } from "../src/resume.ts";
import { EtcdClient } from "../src/etcd.ts";
import {
  LeaderLease,
  type LeaderRecord,
  watchFollowers,
} from "../src/cluster.ts";

const USAGE =
  `usage: deno task primary --source SOURCE [--source SOURCE...] --to URL[,URL...]
         [--interval MS | --interval manual] [--ack all|quorum:K|any|none]
         [--ack-level received|applied|durable] [--http HOST:PORT] [options]

Checkpoints its sources every --interval ms (default 1000; "manual": only on
POST /checkpoint), encodes what changed and replicates it to every --to peer
(backups or relays). An epoch is committed once the ack policy is met: which
peers (--ack, default all) acknowledged it how far (--ack-level, default applied).
Logs one line per committed epoch.

SOURCE (several --source make several images, one epoch across all):
        qemu:QMP_SOCKET?mem=PATH[&hold=NETDEV,...|all][&state=off]
          (a live QEMU guest whose RAM is the shared memory-backend-file
          PATH; per checkpoint, paused with QMP stop/cont while its RAM is
          copied and its CPU and device state saved: images ID, ID.state and
          ID.machine, which resume turns back into a running guest. hold=
          releases the guest's network output on those netdevs only once its
          epoch is committed (not with --ack none); state=off: RAM only,
          which cannot be resumed. Also &id=NAME, &state-size=SIZE,
          &timeout=MS, &pid=PID),
        proc:PID[?size=SIZE&dirty=auto|scan] (a live process's writable
          memory, stopped with SIGSTOP/SIGCONT per capture; images proc-PID
          and proc-PID.layout; soft-dirty pages only where the kernel has them),
        file:PATH (a file or device, copied whole each epoch; nothing pauses
          its writers, so a file changing during the copy, such as a live
          guest's RAM file, is not a consistent checkpoint: use qemu:),
        series:DIR (a recording by record: one epoch per capture) or
        synthetic:SPEC (e.g. synthetic:images=3,size=16M,seed=1,dirty=0.02)
URL:    tcp://HOST:PORT, tls://HOST:PORT, quic://HOST:PORT, ws://HOST:PORT/PATH, wss://…

  --level fast|max|auto
                    codec operating point (default fast); auto: per epoch the
                    level expected to commit soonest, from the encode time and
                    wire bytes of recent epochs at each level and the measured
                    time from encoded to committed per wire byte (/status: auto)
  --log-bytes N     retained log bound, bytes (default 268435456)
  --max-in-flight N epochs encoded and not yet committed before the next
                    capture waits (default 16; raise it on long, lossy links
                    where commit latency exceeds 16 intervals)
  --epochs N        stop after N committed epochs (default: run until stopped)
  --from-store DIR  start from the checkpoint in backup store DIR instead of
                    epoch 0: after resume brought a guest back on this host,
                    the backups that hold that checkpoint continue from it
                    incrementally (the sources must give the store's images)
  --listen URL      (in a cluster) where this node accepts its upstream once a
  --store DIR       newer term replaced it: it stops its sources (a qemu:
                    guest is paused, its held output never released), stores
                    the images it last encoded in DIR, and follows the new
                    primary as a backup (--follow-leader), which brings it
                    up to date by block hashes. Without them it stops.
  --verify-every S  online verify of every peer each S seconds (as POST
                    /verify; exported as patchwire_out_of_sync_bytes{peer})
${CLUSTER_HELP}
                    A primary takes the cluster's leader key with the next term
                    at start, and stops if another node holds it.
${COMMON_HELP}`;

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, [
    "source",
    "to",
    "interval",
    "ack",
    "ack-level",
    "level",
    "log-bytes",
    "max-in-flight",
    "epochs",
    "from-store",
    "verify-every",
    "listen",
    "store",
    ...COMMON_VALUED,
    ...CLUSTER_VALUED,
  ], ["help"]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const sources = args.options.get("source") ?? [];
  if (sources.length === 0) throw new UsageError("--source is required");
  const to = peerUrls(args, "to");
  const policy = ackPolicy(args);
  if (to.length === 0 && policy.who.kind !== "none") {
    throw new UsageError("--to is required (or --ack none)");
  }
  const intervalText = last(args, "interval") ?? "1000";
  const intervalMs = intervalText === "manual"
    ? null
    : intOption(intervalText, "interval", 1);
  const level = parseLevelChoice(last(args, "level") ?? "fast");
  const epochs = last(args, "epochs")
    ? intOption(last(args, "epochs")!, "epochs", 1)
    : Infinity;
  const logBytes = last(args, "log-bytes")
    ? intOption(last(args, "log-bytes")!, "log-bytes", 1)
    : undefined;
  const verifyEvery = last(args, "verify-every")
    ? intOption(last(args, "verify-every")!, "verify-every", 1)
    : null;
  const transport = transportOptions(args);
  const auth = await peerAuth(args, transport);
  const link = linkOptions(args, transport);
  const clustered = clusterOptions(args);
  const followText = last(args, "listen");
  const followStore = last(args, "store");
  if ((followText || followStore) && !clustered) {
    throw new UsageError(
      "--listen and --store are for a primary in a cluster (--etcd, --cluster, --name): where it follows once a newer term replaced it",
    );
  }
  if (!followText !== !followStore) {
    throw new UsageError("--listen and --store go together");
  }
  const followListen = followText
    ? checkUrl(followText, "--listen", {
      listen: true,
      hasCert: args.options.has("cert"),
    })
    : undefined;
  if (followStore) {
    // Said now, not when this node is replaced: the store must open.
    try {
      BackupStore.open(followStore).close();
    } catch (e) {
      throw new UsageError(`--store ${followStore}: ${(e as Error).message}`);
    }
  }
  // The leader key first: a node that may not be primary touches no source.
  let lease: LeaderLease | null = null;
  if (clustered) {
    const etcd = await EtcdClient.connect(clustered.etcd);
    const won = await LeaderLease.acquire(etcd, {
      cluster: clustered.cluster,
      name: clustered.name,
      leaseMs: clustered.leaseMs,
      ack: last(args, "ack") ?? "all",
      ackLevel: last(args, "ack-level") ?? "applied",
      peers: to,
      note: (l) => console.error(`primary: ${l}`),
    });
    if (!(won instanceof LeaderLease)) {
      throw new Error(
        `cluster ${clustered.cluster} already has a primary: ${won.leader.name} (term ${won.term}); a second one would commit beside it — stop it first, or start this node as a backup to follow it`,
      );
    }
    lease = won;
    console.error(
      `primary: leader of cluster ${clustered.cluster} as ${clustered.name}, term ${lease.term} (lease ${clustered.leaseMs} ms)`,
    );
  }
  let primary: Primary | null = null;
  const { app } = controlApp(args, () => primary!);
  let source;
  try {
    source = await openSources(sources);
  } catch (e) {
    await lease?.stop();
    throw e;
  }
  const fromStore = last(args, "from-store");
  let seed: CheckpointSeed | undefined;
  try {
    seed = fromStore ? checkpointSeed(fromStore, source.images) : undefined;
  } catch (e) {
    await source.close();
    await lease?.stop();
    throw e;
  }
  primary = new Primary(source, {
    term: lease?.term,
    seed,
    to,
    ack: policy,
    level,
    intervalMs,
    auth,
    logBytes,
    maxInFlight: last(args, "max-in-flight")
      ? intOption(last(args, "max-in-flight")!, "max-in-flight", 1)
      : undefined,
    link,
  });
  const p = primary;
  if (source.notice) console.error(`primary: ${source.notice}`);
  const server = await serveControl(args, app);
  console.error(
    `primary: ${source.name}: ${
      source.images.map((i) => `${i.id} ${formatBytes(i.size)}`).join(", ")
    } → ${to.join(", ") || "no peers"} (ack ${
      formatAckPolicy(policy)
    }, level ${level}, ${
      intervalMs === null ? "manual checkpoints" : `every ${intervalMs} ms`
    })`,
  );
  let done!: () => void;
  const finished = new Promise<void>((r) => done = r);
  let count = 0;
  p.onCommit((r) => {
    count++;
    const ratio = r.wireBytes > 0 ? r.dirtyBytes / r.wireBytes : 0;
    console.log(
      `epoch ${r.epoch} committed: dirty ${formatBytes(r.dirtyBytes)} → wire ${
        formatBytes(r.wireBytes)
      } (${ratio.toFixed(1)}x), pause ${r.pauseMs.toFixed(1)} ms, encode ${
        r.encodeMs.toFixed(1)
      } ms, commit ${r.commitMs.toFixed(1)} ms`,
    );
    if (count >= epochs) done();
  });
  // Periodic online verify; one at a time.
  let verifying = false;
  const verifyTimer = verifyEvery === null ? null : setInterval(() => {
    if (verifying) return;
    verifying = true;
    p.verify({ repair: false }).catch((e) =>
      console.error(`primary: verify: ${(e as Error).message}`)
    ).finally(() => verifying = false);
  }, verifyEvery * 1000);
  let followers: { stop: () => Promise<void> } | null = null;
  const stop = async () => {
    if (verifyTimer !== null) clearInterval(verifyTimer);
    await followers?.stop();
    await p.stop();
    // Only then the leader key goes: nothing more will be committed.
    await lease?.stop();
    await server?.close();
  };
  const unhandle = onSignal(stop);
  p.start();
  let follows: Promise<void> | null = null;
  if (lease && clustered) {
    p.cluster = { cluster: clustered.cluster, name: clustered.name };
    lease.start(p);
    followers = watchFollowers(
      lease.etcd,
      {
        cluster: clustered.cluster,
        name: clustered.name,
        everyMs: clustered.leaseMs / 3,
      },
      p,
      (l) => console.error(`primary: ${l}`),
    );
    const leased = lease;
    /** A newer term replaced this primary: follow it, or stop. */
    const replaced = async (by: LeaderRecord | number) => {
      const who = typeof by === "number"
        ? `term ${by}`
        : `${by.name} (term ${by.term})`;
      if (!followListen || !followStore) {
        console.error(
          `primary: replaced by ${who}; without --listen and --store this node cannot follow: stopping`,
        );
        await source.halt?.();
        await stop();
        Deno.exit(1);
      }
      // Nothing this node does may reach the world any more.
      await source.halt?.();
      const final = p.snapshot();
      unhandle();
      if (verifyTimer !== null) clearInterval(verifyTimer);
      await followers?.stop();
      await p.stop();
      await leased.stop(false);
      await server?.close();
      // Its store starts from the images it last encoded: the new primary
      // compares them by block hashes and sends what differs.
      const store = BackupStore.open(followStore);
      try {
        store.replaceAll(
          { epoch: final.epoch, images: final.images },
          final.contents,
          true,
        );
      } finally {
        store.close();
      }
      console.error(
        `primary: replaced by ${who}: following it as a backup on ${followListen} from epoch ${final.epoch}, the last this node encoded (store ${followStore})`,
      );
      const pass = (flag: string) => {
        const value = last(args, flag);
        return value === undefined ? [] : [`--${flag}`, value];
      };
      await runBackup([
        "--listen",
        followListen,
        "--store",
        followStore,
        "--etcd",
        clustered.etcd.join(","),
        "--cluster",
        clustered.cluster,
        "--name",
        clustered.name,
        "--lease-ms",
        String(clustered.leaseMs),
        "--follow-leader",
        // Its credentials, control plane and limits, as a backup takes them.
        ...COMMON_VALUED.flatMap(pass),
      ]);
    };
    follows = leased.superseded.then(replaced);
  }
  // Until --epochs are committed (then stop), or for good once this node
  // follows a newer primary as a backup.
  const outcome = await Promise.race([
    finished.then(() => "finished"),
    follows ? follows.then(() => "following") : new Promise<string>(() => {}),
  ]);
  if (outcome === "finished") await stop();
});
