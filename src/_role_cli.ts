/** Command-line plumbing shared by the primary, relay and backup tools. */

import type { Hono } from "hono";
import { intOption, type ParsedArgs, UsageError } from "./_cli.ts";
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  type TransportOptions,
} from "./transport.ts";
import { PeerAuth, readTokenFile } from "./peer_auth.ts";
import {
  DEFAULT_PEER_TIMEOUT_MS,
  DEFAULT_SEND_BUFFER_BYTES,
  type PeerLinkOptions,
} from "./peer_link.ts";
import {
  type ControlTarget,
  createControlApp,
  type HttpServer,
  parseHostPort,
  serveHttp,
} from "./control_plane.ts";
import type { AckPolicy } from "./ack_policy.ts";
import { parseAckLevel, parseAckWho } from "./ack_policy.ts";
import { AckLevel } from "./protocol.ts";
import { transportFor } from "../transports/mod.ts";
import { defaultImageLimits, type ImageLimits } from "./image_limits.ts";
import { badClusterName } from "./cluster.ts";

/** Options every role takes. */
export const COMMON_VALUED = [
  "http",
  "token-file",
  "cert",
  "key",
  "ca",
  "max-frame-bytes",
  "send-buffer-bytes",
  "peer-timeout-ms",
];

/** Help text for the common options. */
export const COMMON_HELP =
  `  --http HOST:PORT  serve /healthz, /status, /metrics (and the role's actions);
                    a HOST other than loopback needs a token, which the control
                    API then requires (Authorization: Bearer TOKEN; not /healthz)
  --token-file FILE shared token (one line, file mode 600) that every peer
                    presents and checks, and the control API requires (default:
                    $PATCHWIRE_TOKEN, else none)
  --cert FILE       PEM certificate chain of this role: its TLS server
                    certificate (tls:, quic:, wss: listeners) and the client
                    certificate it proves to the peers it connects to
  --key FILE        PEM (PKCS#8) private key of --cert
  --ca FILE         PEM CA bundle: servers this role connects to must have
                    certificates from it, and with it an upstream connecting
                    to this role over tls:, quic: or wss: must prove a
                    certificate from it (mutual TLS)
  --max-frame-bytes N  largest message taken from or sent to a peer (default ${DEFAULT_MAX_MESSAGE_BYTES})
  --send-buffer-bytes N  per peer, bytes sent and not yet acknowledged before
                    sending waits (default ${DEFAULT_SEND_BUFFER_BYTES}); a peer that
                    stays behind falls out of the retained log and is base-synced
  --peer-timeout-ms MS  a peer that sends nothing (no ack, no answer to the
                    PINGs sent after 1 s of quiet) for this long is taken for
                    gone and reconnected (default ${DEFAULT_PEER_TIMEOUT_MS})
  Refused peers are logged and counted (/metrics patchwire_upstream_refused_total).
  --help            this text`;

/** Options of the roles that take an upstream (relay, backup). */
export const DOWNSTREAM_VALUED = ["max-image-bytes", "max-total-image-bytes"];

/** Help text for {@linkcode DOWNSTREAM_VALUED}. */
export const DOWNSTREAM_HELP =
  `  --max-image-bytes SIZE  largest image an upstream may name (K, M, G, T
                    suffixes: binary units; default: this host's memory)
  --max-total-image-bytes SIZE  largest sum of the images an upstream names
                    (default: this host's memory); an upstream naming more is
                    refused in its handshake, before anything is allocated`;

/** Parses `123`, `4K`, `8M`, `1G`, `2T` (binary units, optional "iB"/"B") as bytes. */
export function byteSizeOption(value: string, name: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT])?(?:i?B)?$/i.exec(value.trim());
  const n = m
    ? Math.floor(
      Number(m[1]) *
        2 ** (10 * " KMGT".indexOf((m[2] ?? " ").toUpperCase())),
    )
    : NaN;
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new UsageError(
      `--${name} must be a size in bytes >= 1 (K, M, G, T allowed), got "${value}"`,
    );
  }
  return n;
}

/** `--max-image-bytes` and `--max-total-image-bytes`, over the defaults. */
export function imageLimits(args: ParsedArgs): ImageLimits {
  const limits = defaultImageLimits();
  const image = last(args, "max-image-bytes");
  const total = last(args, "max-total-image-bytes");
  if (image !== undefined) {
    limits.image = byteSizeOption(image, "max-image-bytes");
  }
  if (total !== undefined) {
    limits.total = byteSizeOption(total, "max-total-image-bytes");
  }
  return limits;
}

/** Options of a role in a cluster (`cluster.ts`). */
export const CLUSTER_VALUED = ["etcd", "cluster", "name", "lease-ms"];

/** Help text for {@linkcode CLUSTER_VALUED}. */
export const CLUSTER_HELP =
  `  --etcd URL[,URL...]  etcd endpoints (its v3 JSON gateway, http://HOST:2379):
                    who is primary is decided there; with --cluster and --name
  --cluster NAME    the cluster's name: its keys are /patchwire/NAME/ in etcd
  --name NODE       this node's name in the cluster
  --lease-ms MS     the primary's leader lease (default 3000): a primary that
                    cannot renew it stops committing before it can expire`;

/** `--etcd`, `--cluster`, `--name`, `--lease-ms`, or null without `--etcd`. */
export function clusterOptions(
  args: ParsedArgs,
): { etcd: string[]; cluster: string; name: string; leaseMs: number } | null {
  const etcd = list(args, "etcd");
  const cluster = last(args, "cluster");
  const name = last(args, "name");
  if (etcd.length === 0) {
    if (cluster !== undefined || name !== undefined) {
      throw new UsageError("--cluster and --name need --etcd URL[,URL...]");
    }
    return null;
  }
  if (cluster === undefined) {
    throw new UsageError("--etcd needs --cluster NAME");
  }
  if (name === undefined) throw new UsageError("--etcd needs --name NODE");
  const bad = badClusterName(cluster, "--cluster") ??
    badClusterName(name, "--name");
  if (bad) throw new UsageError(bad);
  const leaseText = last(args, "lease-ms");
  const leaseMs = leaseText === undefined
    ? 3000
    : intOption(leaseText, "lease-ms", 1000);
  return { etcd, cluster, name, leaseMs };
}

/** The last value of an option, or undefined. */
export function last(args: ParsedArgs, name: string): string | undefined {
  return args.options.get(name)?.at(-1);
}

/** Comma-separated values of every occurrence of an option. */
export function list(args: ParsedArgs, name: string): string[] {
  return (args.options.get(name) ?? []).flatMap((v) => v.split(",")).map((v) =>
    v.trim()
  ).filter(Boolean);
}

/**
 * Checks a peer or listen URL at start, naming the flag: a supported scheme,
 * a host, a port 1-65535 (0 too for `--listen`), and for a TLS listener
 * (`tls:`, `quic:`, `wss:`) the certificate it serves.
 */
export function checkUrl(
  url: string,
  flag: string,
  options: { listen?: boolean; hasCert?: boolean } = {},
): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
    transportFor(parsed);
  } catch (e) {
    throw new UsageError(`${flag} ${url}: ${(e as Error).message}`);
  }
  if (parsed.protocol === "memory:") return url;
  if (!parsed.hostname) {
    throw new UsageError(
      `${flag} ${url}: no host; expected scheme://HOST:PORT`,
    );
  }
  const port = Number(parsed.port);
  if (
    !parsed.port || !Number.isInteger(port) || (port === 0 && !options.listen)
  ) {
    throw new UsageError(
      `${flag} ${url}: no port; expected scheme://HOST:PORT with a port from 1 to 65535`,
    );
  }
  if (
    options.listen && !options.hasCert &&
    ["tls:", "quic:", "wss:"].includes(parsed.protocol)
  ) {
    throw new UsageError(
      `${flag} ${url}: a ${
        parsed.protocol.slice(0, -1)
      } listener serves a certificate: give --cert FILE and --key FILE`,
    );
  }
  return url;
}

/** The peer URLs of `--NAME URL[,URL...]`, each checked at start ({@linkcode checkUrl}). */
export function peerUrls(args: ParsedArgs, name: string): string[] {
  return list(args, name).map((u) => checkUrl(u, `--${name}`));
}

function readPem(path: string, what: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    throw new UsageError(`${what} ${path}: ${(e as Error).message}`);
  }
}

/** Transport options from --cert, --key, --ca and --max-frame-bytes. */
export function transportOptions(args: ParsedArgs): TransportOptions {
  const cert = last(args, "cert"), key = last(args, "key");
  if (!!cert !== !!key) {
    throw new UsageError("--cert and --key go together");
  }
  const ca = last(args, "ca");
  const max = last(args, "max-frame-bytes");
  return {
    tls: {
      cert: cert ? readPem(cert, "--cert") : undefined,
      key: key ? readPem(key, "--key") : undefined,
      caCerts: ca ? [readPem(ca, "--ca")] : undefined,
    },
    maxMessageBytes: max
      ? intOption(max, "max-frame-bytes", 1024)
      : DEFAULT_MAX_MESSAGE_BYTES,
  };
}

/** Peer link options: the transport, --send-buffer-bytes and --peer-timeout-ms. */
export function linkOptions(
  args: ParsedArgs,
  transport: TransportOptions,
): PeerLinkOptions {
  const buffer = last(args, "send-buffer-bytes");
  const timeout = last(args, "peer-timeout-ms");
  return {
    transport,
    sendBufferBytes: buffer
      ? intOption(buffer, "send-buffer-bytes", 1)
      : DEFAULT_SEND_BUFFER_BYTES,
    peerTimeoutMs: timeout
      ? intOption(timeout, "peer-timeout-ms", 100)
      : DEFAULT_PEER_TIMEOUT_MS,
  };
}

/** The token from --token-file or $PATCHWIRE_TOKEN ("" for none). */
export function token(args: ParsedArgs): string {
  const file = last(args, "token-file");
  if (file) {
    try {
      return readTokenFile(file);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  return Deno.env.get("PATCHWIRE_TOKEN") ?? "";
}

/** Token and certificates from --token-file, --cert, --key and --ca. */
export async function peerAuth(
  args: ParsedArgs,
  transport: TransportOptions,
): Promise<PeerAuth> {
  try {
    return await PeerAuth.create({
      token: token(args),
      cert: transport.tls?.cert,
      key: transport.tls?.key,
      ca: transport.tls?.caCerts,
    });
  } catch (e) {
    throw new UsageError(`--cert/--key/--ca: ${(e as Error).message}`);
  }
}

/** --ack and --ack-level as a policy (defaults: all, applied). */
export function ackPolicy(args: ParsedArgs): AckPolicy {
  try {
    return {
      who: parseAckWho(last(args, "ack") ?? "all"),
      level: last(args, "ack-level")
        ? parseAckLevel(last(args, "ack-level")!)
        : AckLevel.applied,
    };
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/**
 * Validates --http and, when the role listens on ws:/wss: at the same port,
 * returns the app the WebSocket endpoint must be mounted on.
 */
export function controlApp(
  args: ParsedArgs,
  target: () => ControlTarget,
  listenUrl?: string,
): { app: Hono | null; shared: boolean } {
  const http = last(args, "http");
  if (!http) return { app: null, shared: false };
  let port: number, hostname: string;
  try {
    ({ port, hostname } = parseHostPort(http));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const secret = token(args);
  if (secret === "" && !isLoopback(hostname)) {
    throw new UsageError(
      `--http ${http} is reachable from other hosts, and anyone reaching it could checkpoint or promote: bind it to 127.0.0.1 or give --token-file (the control API then requires the token)`,
    );
  }
  const app = createControlApp(target, undefined, { token: secret });
  let shared = false;
  if (listenUrl) {
    try {
      const u = new URL(listenUrl);
      shared = (u.protocol === "ws:" || u.protocol === "wss:") &&
        Number(u.port) === port && port !== 0;
    } catch {
      // reported by the transport
    }
  }
  return { app, shared };
}

function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "::1" ||
    /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

/** Serves the control plane if --http was given. */
export async function serveControl(
  args: ParsedArgs,
  app: Hono | null,
): Promise<HttpServer | null> {
  const http = last(args, "http");
  if (!http || !app) return null;
  const server = await serveHttp(http, app);
  console.error(`control plane on ${server.url}`);
  return server;
}

/** Runs `stop` on SIGINT/SIGTERM, then exits. */
export function onSignal(stop: () => Promise<void>): () => void {
  let stopping = false;
  const handler = async () => {
    if (stopping) Deno.exit(130);
    stopping = true;
    console.error("stopping…");
    try {
      await stop();
    } finally {
      Deno.exit(0);
    }
  };
  Deno.addSignalListener("SIGINT", handler);
  Deno.addSignalListener("SIGTERM", handler);
  // Removes the handlers: a primary that becomes a follower hands them on.
  return () => {
    Deno.removeSignalListener("SIGINT", handler);
    Deno.removeSignalListener("SIGTERM", handler);
  };
}
