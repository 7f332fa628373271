/**
 * A small etcd v3 client over etcd's JSON gateway (`/v3/...`, plain `fetch`),
 * for what the cluster needs of etcd: leases, transactions, ranges and
 * watches. Who is primary is decided by etcd (its Raft), never by a
 * consensus protocol of our own.
 *
 * Several endpoints (the members of one etcd cluster) may be given: a request
 * goes to the endpoint that answered last, and on a network error or a
 * timeout to the next, so one member down costs one timeout. Keys and values
 * are strings here (UTF-8), base64 on the wire as the gateway wants.
 *
 * @example
 * ```ts
 * const etcd = await EtcdClient.connect(["http://127.0.0.1:2379"]);
 * const lease = await etcd.grant(3);
 * const won = await etcd.createIfAbsent("/patchwire/c1/leader", "n1", lease);
 * await etcd.keepAlive(lease); // every second or so: the TTL left, 0 if gone
 * ```
 * @module
 */

/** A key and its value as etcd holds it. */
export interface KeyValue {
  key: string;
  value: string;
  /** Revision of the transaction that created the key (kept until it is deleted). */
  createRevision: number;
  modRevision: number;
  /** The lease the key is attached to ("0": none). */
  lease: string;
}

/** One change a watch saw. */
export interface WatchEvent {
  type: "put" | "delete";
  kv: KeyValue;
}

/** A comparison of a transaction (`compare` of `/v3/kv/txn`). */
export type Compare =
  | { key: string; target: "create"; createRevision: number }
  | { key: string; target: "value"; value: string }
  | { key: string; target: "version"; version: number };

/** An operation of a transaction. */
export type Operation =
  | { put: { key: string; value: string; lease?: string } }
  | { range: { key: string; prefix?: boolean } }
  | { delete: { key: string } };

/** The answer to a transaction. */
export interface TxnResult {
  succeeded: boolean;
  /** The key-values of each range operation that ran, in order. */
  ranges: KeyValue[][];
  revision: number;
}

/** etcd could not be reached at any endpoint, or answered with an error. */
export class EtcdError extends Error {
  override name = "EtcdError";
}

/** Options of {@linkcode EtcdClient}. */
export interface EtcdOptions {
  /** Per request, before the next endpoint is tried (ms). Default 1000. */
  timeoutMs?: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function b64(s: string): string {
  let bin = "";
  for (const b of enc.encode(s)) bin += String.fromCharCode(b);
  return btoa(bin);
}

function unb64(s: string | undefined): string {
  if (!s) return "";
  return dec.decode(Uint8Array.from(atob(s), (c) => c.charCodeAt(0)));
}

/** The key just after every key starting with `prefix` (etcd's range_end). */
function prefixEnd(prefix: string): string {
  const bytes = enc.encode(prefix);
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i] < 0xff) {
      const end = bytes.slice(0, i + 1);
      end[i]++;
      let bin = "";
      for (const b of end) bin += String.fromCharCode(b);
      return btoa(bin);
    }
  }
  return btoa("\0");
}

// deno-lint-ignore no-explicit-any
function toKeyValue(kv: any): KeyValue {
  return {
    key: unb64(kv.key),
    value: unb64(kv.value),
    createRevision: Number(kv.create_revision ?? 0),
    modRevision: Number(kv.mod_revision ?? 0),
    lease: String(kv.lease ?? "0"),
  };
}

/** See the module documentation. */
export class EtcdClient {
  readonly endpoints: string[];
  readonly timeoutMs: number;
  #current = 0;

  constructor(endpoints: string[], options: EtcdOptions = {}) {
    if (endpoints.length === 0) {
      throw new EtcdError("--etcd: no endpoint given, expected URL[,URL…]");
    }
    this.endpoints = endpoints.map((e) => {
      let url: URL;
      try {
        url = new URL(e);
      } catch {
        throw new EtcdError(
          `--etcd ${e}: not a URL, expected http://HOST:PORT`,
        );
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") {
        throw new EtcdError(
          `--etcd ${e}: scheme ${url.protocol}, expected http: or https:`,
        );
      }
      return url.origin;
    });
    this.timeoutMs = options.timeoutMs ?? 1000;
  }

  /** A client whose etcd answered (its version), or an EtcdError naming every endpoint tried. */
  static async connect(
    endpoints: string[],
    options: EtcdOptions = {},
  ): Promise<EtcdClient> {
    const client = new EtcdClient(endpoints, options);
    await client.#request("GET", "/version");
    return client;
  }

  /** The endpoint that answered last. */
  get endpoint(): string {
    return this.endpoints[this.#current];
  }

  // deno-lint-ignore no-explicit-any
  async #request(method: string, path: string, body?: unknown): Promise<any> {
    const failures: string[] = [];
    for (let i = 0; i < this.endpoints.length; i++) {
      const at = (this.#current + i) % this.endpoints.length;
      const endpoint = this.endpoints[at];
      let res: Response;
      try {
        res = await fetch(`${endpoint}${path}`, {
          method,
          body: body === undefined ? undefined : JSON.stringify(body),
          headers: body === undefined
            ? undefined
            : { "content-type": "application/json" },
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (e) {
        failures.push(`${endpoint}: ${(e as Error).message}`);
        continue;
      }
      const text = await res.text();
      // deno-lint-ignore no-explicit-any
      let json: any;
      try {
        json = JSON.parse(text);
      } catch {
        throw new EtcdError(
          `etcd ${endpoint}${path} answered ${res.status} with ${
            JSON.stringify(text.slice(0, 200))
          }, expected JSON`,
        );
      }
      if (!res.ok || json.error) {
        // A member without a leader cannot serve: another member may.
        const message = json.message ?? json.error ?? text;
        if (/no leader|not capable|timed out|unavailable/i.test(message)) {
          failures.push(`${endpoint}: ${message}`);
          continue;
        }
        throw new EtcdError(`etcd ${endpoint}${path}: ${message}`);
      }
      this.#current = at;
      return json;
    }
    throw new EtcdError(
      `etcd unreachable (${failures.join("; ")})`,
    );
  }

  /** Grants a lease of `ttlSeconds`; returns its id. */
  async grant(ttlSeconds: number): Promise<string> {
    const r = await this.#request("POST", "/v3/lease/grant", {
      TTL: ttlSeconds,
    });
    return String(r.ID);
  }

  /** Renews a lease; returns the seconds it has left, 0 if it is gone (expired or revoked). */
  async keepAlive(lease: string): Promise<number> {
    const r = await this.#request("POST", "/v3/lease/keepalive", { ID: lease });
    return Number(r.result?.TTL ?? 0);
  }

  /** Revokes a lease: every key attached to it is deleted. */
  async revoke(lease: string): Promise<void> {
    await this.#request("POST", "/v3/lease/revoke", { ID: lease });
  }

  /** The key-value at `key`, or null. */
  async get(key: string): Promise<KeyValue | null> {
    const r = await this.#request("POST", "/v3/kv/range", { key: b64(key) });
    return r.kvs?.length ? toKeyValue(r.kvs[0]) : null;
  }

  /** Every key-value whose key starts with `prefix`, in key order. */
  async list(prefix: string): Promise<KeyValue[]> {
    const r = await this.#request("POST", "/v3/kv/range", {
      key: b64(prefix),
      range_end: prefixEnd(prefix),
    });
    return (r.kvs ?? []).map(toKeyValue);
  }

  /** Puts `value` at `key`, attached to `lease` if given. */
  async put(key: string, value: string, lease?: string): Promise<void> {
    await this.#request("POST", "/v3/kv/put", {
      key: b64(key),
      value: b64(value),
      ...(lease ? { lease } : {}),
    });
  }

  /** Deletes `key`. */
  async delete(key: string): Promise<void> {
    await this.#request("POST", "/v3/kv/deleterange", { key: b64(key) });
  }

  /** Runs a transaction: `success` if every comparison holds, else `failure`. */
  async txn(
    compare: Compare[],
    success: Operation[],
    failure: Operation[] = [],
  ): Promise<TxnResult> {
    const op = (o: Operation) =>
      "put" in o
        ? {
          request_put: {
            key: b64(o.put.key),
            value: b64(o.put.value),
            ...(o.put.lease ? { lease: o.put.lease } : {}),
          },
        }
        : "range" in o
        ? {
          request_range: {
            key: b64(o.range.key),
            ...(o.range.prefix ? { range_end: prefixEnd(o.range.key) } : {}),
          },
        }
        : { request_delete_range: { key: b64(o.delete.key) } };
    const r = await this.#request("POST", "/v3/kv/txn", {
      compare: compare.map((c) =>
        c.target === "create"
          ? {
            key: b64(c.key),
            target: "CREATE",
            result: "EQUAL",
            create_revision: String(c.createRevision),
          }
          : c.target === "value"
          ? {
            key: b64(c.key),
            target: "VALUE",
            result: "EQUAL",
            value: b64(c.value),
          }
          : {
            key: b64(c.key),
            target: "VERSION",
            result: "EQUAL",
            version: String(c.version),
          }
      ),
      success: success.map(op),
      failure: failure.map(op),
    });
    const ranges: KeyValue[][] = [];
    for (const resp of r.responses ?? []) {
      if (resp.response_range) {
        ranges.push((resp.response_range.kvs ?? []).map(toKeyValue));
      }
    }
    return {
      succeeded: r.succeeded === true,
      ranges,
      revision: Number(r.header?.revision ?? 0),
    };
  }

  /**
   * Creates `key` with `value` (attached to `lease`) if it does not exist;
   * returns whether it did, and the key-value there now.
   */
  async createIfAbsent(
    key: string,
    value: string,
    lease?: string,
  ): Promise<{ created: boolean; kv: KeyValue | null }> {
    const r = await this.txn(
      [{ key, target: "create", createRevision: 0 }],
      [{ put: { key, value, lease } }, { range: { key } }],
      [{ range: { key } }],
    );
    return { created: r.succeeded, kv: r.ranges[0]?.[0] ?? null };
  }

  /**
   * Watches `key` (or every key under it, with `prefix`) from `fromRevision`
   * (default: changes after now), calling `onEvent` for each change, until
   * `signal` aborts. Resolves when the watch ends: aborted, or the stream
   * broke (then the caller re-reads and watches again).
   */
  async watch(
    key: string,
    onEvent: (e: WatchEvent) => void,
    signal: AbortSignal,
    options: { prefix?: boolean; fromRevision?: number } = {},
  ): Promise<void> {
    const request = {
      create_request: {
        key: b64(key),
        ...(options.prefix ? { range_end: prefixEnd(key) } : {}),
        ...(options.fromRevision
          ? { start_revision: String(options.fromRevision) }
          : {}),
      },
    };
    let res: Response;
    try {
      res = await fetch(`${this.endpoint}/v3/watch`, {
        method: "POST",
        body: JSON.stringify(request),
        signal,
      });
    } catch {
      return;
    }
    if (!res.body) return;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffered += value;
        // The gateway sends one JSON object per line.
        let nl: number;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (!line) continue;
          // deno-lint-ignore no-explicit-any
          let msg: any;
          try {
            msg = JSON.parse(line);
          } catch {
            continue;
          }
          for (const ev of msg.result?.events ?? []) {
            onEvent({
              type: ev.type === "DELETE" ? "delete" : "put",
              kv: toKeyValue(ev.kv),
            });
          }
        }
      }
    } catch {
      // Aborted or broken: the caller decides.
    } finally {
      reader.releaseLock();
      await res.body.cancel().catch(() => {});
    }
  }
}
