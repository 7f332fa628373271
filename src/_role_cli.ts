/** Command-line plumbing shared by the primary, relay and backup tools. */

import type { Hono } from "hono";
import { type ParsedArgs, UsageError } from "./_cli.ts";
import type { TransportOptions } from "./transport.ts";
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

/** Options every role takes. */
export const COMMON_VALUED = ["http", "token", "tls-cert", "tls-key", "ca"];

/** Help text for the common options. */
export const COMMON_HELP =
  `  --http HOST:PORT  serve /healthz, /status, /metrics (and the role's actions)
  --token TOKEN     shared secret peers must present (default: $PATCHWIRE_TOKEN or none)
  --tls-cert FILE   PEM certificate chain for tls:, quic: and wss: listeners
  --tls-key FILE    PEM private key for it
  --ca FILE         PEM CA certificate to trust when connecting (tls:, quic:, wss:)
  --help            this text`;

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

function readPem(path: string, what: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    throw new UsageError(`${what} ${path}: ${(e as Error).message}`);
  }
}

/** Transport options from --tls-cert, --tls-key and --ca. */
export function transportOptions(args: ParsedArgs): TransportOptions {
  const cert = last(args, "tls-cert"), key = last(args, "tls-key");
  if (!!cert !== !!key) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  const ca = last(args, "ca");
  return {
    tls: {
      cert: cert ? readPem(cert, "--tls-cert") : undefined,
      key: key ? readPem(key, "--tls-key") : undefined,
      caCerts: ca ? [readPem(ca, "--ca")] : undefined,
    },
  };
}

/** The token from --token or $PATCHWIRE_TOKEN. */
export function token(args: ParsedArgs): string {
  return last(args, "token") ?? Deno.env.get("PATCHWIRE_TOKEN") ?? "";
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
  let port: number;
  try {
    port = parseHostPort(http).port;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const app = createControlApp(target);
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
export function onSignal(stop: () => Promise<void>): void {
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
}
