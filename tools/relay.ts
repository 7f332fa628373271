/**
 * `deno task relay --listen URL --to URL[,URL...] [--ack ...] [--ack-level ...] [--http HOST:PORT]`
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
import { followCluster, publishMember } from "../src/cluster.ts";
import { Relay } from "../src/relay.ts";
import { formatAckPolicy } from "../src/ack_policy.ts";

const USAGE =
  `usage: deno task relay --listen URL --to URL[,URL...] [--ack all|quorum:K|any|none]
         [--ack-level received|applied|durable] [--http HOST:PORT] [options]

Takes one upstream stream (a primary or another relay) on --listen, verifies
each epoch against its own replica and forwards the frames unchanged to every
--to peer, each from its retained log at its own pace. It acks upstream once
its own policy over its peers is met. A peer that reconnects catches up from
the log; a new one, or one that fell out of it, gets a base sync.

  --log-bytes N     retained log bound, bytes (default 268435456)
${DOWNSTREAM_HELP}
${CLUSTER_HELP}
                    A relay follows the cluster's term: it refuses a primary of
                    an older term, and drops it when a newer term begins.
${COMMON_HELP}`;

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, [
    "listen",
    "to",
    "ack",
    "ack-level",
    "log-bytes",
    ...COMMON_VALUED,
    ...DOWNSTREAM_VALUED,
    ...CLUSTER_VALUED,
  ], ["help"]);
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
  if (!listen) throw new UsageError("--listen is required");
  const to = peerUrls(args, "to");
  if (to.length === 0) throw new UsageError("--to is required");
  const policy = ackPolicy(args);
  const transport = transportOptions(args);
  const limits = imageLimits(args);
  const clustered = clusterOptions(args);
  const etcd = clustered ? await EtcdClient.connect(clustered.etcd) : null;
  const auth = await peerAuth(args, transport);
  const link = linkOptions(args, transport);
  let relay: Relay | null = null;
  const { app, shared } = controlApp(args, () => relay!, listen);
  relay = await Relay.open({
    listen,
    to,
    ack: policy,
    auth,
    imageLimits: limits,
    logBytes: last(args, "log-bytes")
      ? intOption(last(args, "log-bytes")!, "log-bytes", 1)
      : undefined,
    transport: { ...transport, app: shared ? app! : undefined },
    link,
  });
  const r = relay;
  const server = await serveControl(args, app);
  console.error(
    `relay: listening on ${r.url} → ${to.join(", ")} (ack ${
      formatAckPolicy(policy)
    })`,
  );
  const following = etcd && clustered
    ? followCluster(etcd, {
      cluster: clustered.cluster,
      name: clustered.name,
      note: (l) => console.error(`relay: ${l}`),
    }, r.upstream)
    : null;
  r.cluster = following?.view ?? null;
  // What it holds, for operators and tools (elections do not count relays).
  const member = etcd && clustered
    ? publishMember(etcd, clustered, () => ({
      name: clustered.name,
      role: "relay",
      listen: r.url,
      term: r.upstream.term,
      epoch: r.epoch,
      storedEpoch: 0,
      candidate: false,
      upstream: r.upstream.remote,
    }))
    : null;
  onSignal(async () => {
    await member?.stop();
    await following?.stop();
    await r.close();
    await server?.close();
  });
});
