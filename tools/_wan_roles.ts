/**
 * The roles (`tools/primary.ts`, `relay.ts`, `backup.ts`) as real processes
 * in the regions of a {@linkcode Wan}, for the WAN tests and the WAN bench:
 * their credentials (a token file, and for `tls:`/`quic:` a CA and a
 * certificate naming every address in the topology), their command lines,
 * and their control planes (read from this host over the control links).
 *
 * The roles' flag names live here only ({@linkcode ROLE_FLAGS}).
 * @module
 */

import { makeDevCerts } from "../src/_dev_certs.ts";
import { rolePermissions, type RoleTool } from "./_role_permissions.ts";
import type { Wan, WanProcess } from "./wan.ts";

/** The roles' command-line flags for credentials and the control plane. */
export const ROLE_FLAGS = {
  http: "--http",
  tokenFile: "--token-file",
  cert: "--cert",
  key: "--key",
  ca: "--ca",
} as const;

/** The transports the roles speak, by URL scheme. */
export type Scheme = "tcp" | "tls" | "quic" | "ws";

/** Every role listens on these ports in its own namespace. */
export const ROLE_PORT = 7000;
export const HTTP_PORT = 8000;

const ROOT = new URL("..", import.meta.url).pathname;

/** Files the roles authenticate with. */
export interface Credentials {
  token: string;
  tokenFile: string;
  /** CA, and one certificate and key every role uses as server and as client. */
  ca: string;
  cert: string;
  key: string;
}

/** Writes a token file (mode 600) and certificates naming `ips` into `dir`. */
export async function makeCredentials(
  dir: string,
  ips: string[],
): Promise<Credentials> {
  const token = crypto.randomUUID();
  const tokenFile = `${dir}/token`;
  await Deno.writeTextFile(tokenFile, token + "\n", { mode: 0o600 });
  await Deno.chmod(tokenFile, 0o600); // the mode above is masked by the umask
  // Peers are dialed at their region addresses, and mutual TLS checks that name.
  const certs = await makeDevCerts(7, { ips });
  const files = {
    ca: `${dir}/ca.pem`,
    cert: `${dir}/cert.pem`,
    key: `${dir}/key.pem`,
  };
  await Deno.writeTextFile(files.ca, certs.caCert);
  await Deno.writeTextFile(files.cert, certs.cert);
  await Deno.writeTextFile(files.key, certs.key, { mode: 0o600 });
  return { token, tokenFile, ...files };
}

/** Every address the regions of `wan` reach each other at. */
export function wanAddresses(
  wan: Wan,
  links: { a: string; b: string }[],
): string[] {
  return links.flatMap((l) => [wan.address(l.a, l.b), wan.address(l.b, l.a)]);
}

/**
 * Polls `check` every 200 ms until it returns true; a string it returns
 * says where things are. Throws naming `what` and that after `ms`.
 */
export async function waitUntil(
  what: string,
  check: () => Promise<boolean | string>,
  ms = 60_000,
): Promise<void> {
  const end = Date.now() + ms;
  let last: unknown = null;
  for (;;) {
    try {
      const r = await check();
      if (r === true) return;
      last = r;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > end) {
      throw new Error(
        `timed out after ${ms} ms waiting for ${what}; last: ${last}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The roles of one replication topology, started as processes in their regions. */
export class Cluster {
  readonly roles = new Map<string, WanProcess>();

  constructor(
    readonly wan: Wan,
    /** Stores go to `dir/REGION`. */
    readonly dir: string,
    readonly credentials: Credentials,
    readonly scheme: Scheme = "tcp",
  ) {}

  #start(region: string, tool: string, args: string[]): WanProcess {
    const c = this.credentials;
    const p = this.wan.spawn(region, Deno.execPath(), [
      "run",
      ...rolePermissions(tool as RoleTool),
      `${ROOT}tools/${tool}.ts`,
      ...args,
      ROLE_FLAGS.http,
      `0.0.0.0:${HTTP_PORT}`,
      ROLE_FLAGS.tokenFile,
      c.tokenFile,
      ...(this.scheme === "tls" || this.scheme === "quic"
        ? [ROLE_FLAGS.cert, c.cert, ROLE_FLAGS.key, c.key, ROLE_FLAGS.ca, c.ca]
        : []),
    ], { cwd: ROOT, label: tool });
    this.roles.set(region, p);
    return p;
  }

  /** The URL a role in `from` sends to the role in `to` at. */
  url(from: string, to: string): string {
    const path = this.scheme === "ws" ? "/patchwire" : "";
    return `${this.scheme}://${this.wan.address(from, to)}:${ROLE_PORT}${path}`;
  }

  #listen(): string {
    const path = this.scheme === "ws" ? "/patchwire" : "";
    return `${this.scheme}://0.0.0.0:${ROLE_PORT}${path}`;
  }

  /** A backup in `region`, its store in `dir/REGION`. */
  backup(region: string, args: string[] = []): WanProcess {
    return this.#start(region, "backup", [
      "--listen",
      this.#listen(),
      "--store",
      `${this.dir}/${region}`,
      ...args,
    ]);
  }

  /** A relay in `region` sending to the backups (regions linked to it). */
  relay(region: string, backups: string[], args: string[] = []): WanProcess {
    return this.#start(region, "relay", [
      "--listen",
      this.#listen(),
      "--to",
      backups.map((b) => this.url(region, b)).join(","),
      ...args,
    ]);
  }

  /** A primary in `region` replicating the synthetic source `spec` to `to`. */
  primary(
    region: string,
    to: string,
    spec: string,
    args: string[] = [],
  ): WanProcess {
    return this.#start(region, "primary", [
      "--source",
      `synthetic:${spec}`,
      "--to",
      this.url(region, to),
      ...args,
    ]);
  }

  /** Waits for every role started so far to serve its control plane. */
  async ready(): Promise<void> {
    await Promise.all(
      [...this.roles.values()].map((p) =>
        p.waitFor(/control plane on/, 60_000)
      ),
    );
  }

  /** A role's `GET /status`. */
  // deno-lint-ignore no-explicit-any
  async status(region: string): Promise<any> {
    const res = await fetch(
      `http://${this.wan.controlAddress(region)}:${HTTP_PORT}/status`,
      { headers: { authorization: `Bearer ${this.credentials.token}` } },
    );
    if (res.status !== 200) {
      throw new Error(
        `${region} /status answered ${res.status}: ${await res.text()}`,
      );
    }
    return await res.json();
  }

  /** The last lines every role printed, for failure messages. */
  logs(lines = 30): string {
    return [...this.roles].map(([r, p]) =>
      `--- ${r} (${p.label}):\n${p.output(lines)}`
    ).join("\n");
  }
}
