/**
 * The control plane every role serves with `--http`: health (`/healthz`:
 * 200 `ok`, or 503 with the reason while the role cannot do what it acks
 * for, such as a backup whose store cannot be written), status (JSON),
 * Prometheus metrics, and the actions (checkpoint on a primary, promote on a
 * backup). The ws/wss transport endpoint can be mounted on the same app.
 * @module
 */

import { Hono, type MiddlewareHandler } from "hono";
import { constantTimeEqual } from "./peer_auth.ts";

/** What a role exposes to its control plane. */
export interface ControlTarget {
  /** Figures; `/metrics` flattens them, and `/healthz` reads {@linkcode unhealthy} from them. */
  status(): Record<string, unknown>;
  /** Primary: takes a checkpoint and returns its figures once committed. */
  checkpoint?(): Promise<unknown>;
  /** Primary: online verify of every peer (`verify.ts`); `repair` rejoins the ones that differ. */
  verify?(options: { repair: boolean }): Promise<unknown>;
  /** Backup: becomes a primary; `body` is the request's JSON. */
  promote?(body: Record<string, unknown>): Promise<unknown>;
}

/** Options of {@linkcode createControlApp}. */
export interface ControlOptions {
  /**
   * When set, every endpoint but `/healthz` requires
   * `Authorization: Bearer TOKEN`; refusals are counted in `/metrics`.
   */
  token?: string;
}

/**
 * Builds the Hono app. `target()` is called per request, so a promoted
 * backup's control plane answers for its new primary.
 *
 * @example
 * ```ts
 * const app = createControlApp(() => primary, new Hono(), { token: "s3cret" });
 * Deno.serve({ hostname: "127.0.0.1", port: 8080 }, app.fetch);
 * ```
 */
export function createControlApp(
  target: () => ControlTarget,
  app: Hono = new Hono(),
  options: ControlOptions = {},
): Hono {
  let refused = 0;
  const token = options.token ?? "";
  // Per route, not app-wide: a ws: transport endpoint mounted on the same
  // app authenticates its peers itself (HELLO).
  const guard: MiddlewareHandler = async (c, next) => {
    if (token !== "") {
      const given = /^Bearer (.+)$/.exec(c.req.header("authorization") ?? "")
        ?.[1] ?? "";
      if (!constantTimeEqual(given, token)) {
        refused++;
        return c.json({
          error: given
            ? "wrong bearer token"
            : "this control API requires Authorization: Bearer <token> (the role's --token-file)",
        }, 401);
      }
    }
    await next();
    return undefined;
  };
  app.get("/healthz", (c) => {
    const problem = unhealthy(target().status());
    return problem === null
      ? c.text("ok\n")
      : c.text(`unhealthy: ${problem}\n`, 503);
  });
  app.get(
    "/status",
    guard,
    (c) => c.json({ ...target().status(), httpRefused: refused }),
  );
  app.get(
    "/metrics",
    guard,
    (c) =>
      c.text(prometheus({ ...target().status(), httpRefused: refused }), 200, {
        "content-type": "text/plain; version=0.0.4",
      }),
  );
  app.post("/checkpoint", guard, async (c) => {
    const t = target();
    if (!t.checkpoint) {
      return c.json({ error: "POST /checkpoint is for a primary" }, 409);
    }
    try {
      return c.json(await t.checkpoint());
    } catch (e) {
      return c.json({ error: (e as Error).message }, 500);
    }
  });
  app.post("/verify", guard, async (c) => {
    const t = target();
    if (!t.verify) {
      return c.json({ error: "POST /verify is for a primary" }, 409);
    }
    const repair = c.req.query("repair");
    if (repair !== undefined && repair !== "" && repair !== "true") {
      return c.json({
        error: `?repair takes no value or "true", got "${repair}"`,
      }, 400);
    }
    try {
      return c.json(await t.verify({ repair: repair !== undefined }));
    } catch (e) {
      return c.json({ error: (e as Error).message }, 500);
    }
  });
  app.post("/promote", guard, async (c) => {
    const t = target();
    if (!t.promote) {
      return c.json({ error: "POST /promote is for a backup" }, 409);
    }
    let body: Record<string, unknown> = {};
    const text = await c.req.text();
    if (text.trim()) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        return c.json({ error: "the body must be JSON, or empty" }, 400);
      }
      if (
        typeof parsed !== "object" || parsed === null || Array.isArray(parsed)
      ) {
        return c.json(
          { error: "the body must be a JSON object, or empty" },
          400,
        );
      }
      body = parsed as Record<string, unknown>;
    }
    try {
      return c.json(await t.promote(body));
    } catch (e) {
      return c.json({ error: (e as Error).message }, 400);
    }
  });
  return app;
}

/**
 * Null if a role's status reports nothing wrong; else why: a backup whose
 * store cannot be written (it acks nothing until it can).
 */
export function unhealthy(status: Record<string, unknown>): string | null {
  if (status.storeHealthy === false) {
    return String(status.storeError ?? "its store cannot be written");
  }
  if (Array.isArray(status.storeDamaged) && status.storeDamaged.length) {
    return `stored image ${
      status.storeDamaged.join(", ")
    } changed while the backup was stopped; waiting for its upstream to repair it`;
  }
  return null;
}

function label(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** Status JSON → Prometheus text: the same figures, flattened. */
export function prometheus(status: Record<string, unknown>): string {
  const lines: string[] = [];
  const role = String(status.role ?? "unknown");
  const put = (name: string, value: unknown, labels: string[] = []) => {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    const l = [`role="${role}"`, ...labels].join(",");
    lines.push(`patchwire_${name}{${l}} ${value}`);
  };
  put("epoch", status.epoch);
  put("committed_epoch", status.committedEpoch);
  put("bytes_before_encoding_total", status.bytesBeforeEncoding);
  put("bytes_after_encoding_total", status.bytesAfterEncoding);
  // Commit latency and capture wait run from when a checkpoint was due.
  const quantiles = {
    pauseMs: "pause_ms",
    commitMs: "commit_ms",
    captureWaitMs: "capture_wait_ms",
  } as const;
  for (const [key, name] of Object.entries(quantiles)) {
    const q = status[key] as Record<string, number> | undefined;
    if (!q) continue;
    put(name, q.p50, ['quantile="0.5"']);
    put(name, q.p99, ['quantile="0.99"']);
  }
  // Output commit (qemu: …&hold=): what the held output costs and how much went out.
  const held = status.held as Record<string, unknown> | undefined;
  if (held) {
    const q = held.addedLatencyMs as Record<string, number> | undefined;
    put("held_output_added_latency_ms", q?.p50, ['quantile="0.5"']);
    put("held_output_added_latency_ms", q?.p99, ['quantile="0.99"']);
    put("held_output_released_packets_total", held.releasedPackets);
    put("held_output_released_epoch", held.releasedEpoch);
    put("held_output_epochs", held.heldEpochs);
  }
  const log = status.log as Record<string, number> | undefined;
  if (log) put("retained_log_bytes", log.bytes);
  put("http_refused_total", status.httpRefused);
  // A backup's store: 0 while it cannot be written (and nothing is acked).
  if (typeof status.storeHealthy === "boolean") {
    put("store_healthy", status.storeHealthy ? 1 : 0);
  }
  put("store_failures_total", status.storeFailures);
  const up = status.upstream as Record<string, unknown> | undefined;
  if (up) {
    put("upstream_connected", up.connected ? 1 : 0);
    put("upstream_bytes_received_total", up.bytesReceived);
    const refused = up.refused as Record<string, number> | undefined;
    for (const [reason, n] of Object.entries(refused ?? {})) {
      put("upstream_refused_total", n, [`reason="${label(reason)}"`]);
    }
  }
  const peers = (status.peers ?? []) as Record<string, unknown>[];
  for (const p of peers) {
    const peer = `peer="${label(String(p.url))}"`;
    const acked = p.acked as Record<string, number>;
    for (const level of ["received", "applied", "durable"]) {
      put("peer_acked_epoch", acked?.[level], [peer, `level="${level}"`]);
    }
    put("peer_lag_epochs", p.lag, [peer]);
    put("peer_bytes_sent_total", p.bytesSent, [peer]);
    put("peer_live", p.state === "live" ? 1 : 0, [peer]);
    put("peer_base_syncs_total", p.baseSyncs, [peer]);
    put("peer_rejoins_total", p.rejoins, [peer]);
    // From the last online verify (absent until one ran).
    put("out_of_sync_bytes", p.outOfSyncBytes, [peer]);
  }
  return lines.join("\n") + "\n";
}

/** Parses `HOST:PORT` (port 0 picks one). */
export function parseHostPort(
  text: string,
  what = "--http",
): { hostname: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]*):(\d+)$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) {
    throw new RangeError(`${what} "${text}": expected HOST:PORT`);
  }
  return {
    hostname: m[1].replace(/^\[|\]$/g, "") || "0.0.0.0",
    port,
  };
}

/** A running control-plane server. */
export interface HttpServer {
  /** `http://host:port` it listens on. */
  readonly url: string;
  close(): Promise<void>;
}

/** Serves `app` on `HOST:PORT`. */
export function serveHttp(address: string, app: Hono): Promise<HttpServer> {
  const { hostname, port } = parseHostPort(address);
  return new Promise((resolve, reject) => {
    try {
      const server = Deno.serve({
        hostname,
        port,
        onListen: (addr) => {
          resolve({
            url: `http://${addr.hostname}:${addr.port}`,
            close: () => server.shutdown(),
          });
        },
      }, app.fetch);
    } catch (e) {
      reject(
        new Error(
          `cannot serve HTTP on ${address}: ${(e as Error).message}`,
        ),
      );
    }
  });
}
