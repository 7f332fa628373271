/**
 * A QEMU guest's CPU and device state, saved and loaded through QEMU's own
 * migration stream with the `x-ignore-shared` capability: RAM that lives in
 * a shared memory-backend-file is left out of the stream (patchwire copies
 * it itself), so what remains is the CPU registers, the devices and the
 * small RAM blocks that are not shared (firmware, option ROMs): a few
 * hundred KB.
 *
 * Saving follows QMP's migration contract (QEMU's `docs/devel/migration.rst`
 * and the QMP `migrate` command): while the guest is stopped, `migrate` to a
 * `unix:` URI on which we listen, read the stream to its end, and poll
 * `query-migrate` until it reports `completed` (the guest is then in
 * `postmigrate`, from which `cont` runs it again). Loading is the reverse on
 * a QEMU started with `-incoming defer`: `migrate-incoming` on a `unix:`
 * URI, write the stream into it, and wait for `completed` with the guest
 * `paused`.
 *
 * A `unix:` URI instead of `fd:` (SCM_RIGHTS over the QMP socket) because
 * Deno cannot pass file descriptors; QEMU documents both.
 * @module
 */

import { type QmpClient, QmpError } from "./qmp.ts";

/** Migration states in which a migration is under way (QMP `MigrationStatus`). */
export const MIGRATION_ACTIVE = new Set([
  "setup",
  "active",
  "pre-switchover",
  "device",
  "postcopy-active",
  "postcopy-paused",
  "postcopy-recover",
  "cancelling",
  "wait-unplug",
  "colo",
]);

/** The state did not fit, QEMU failed the migration, or the stream broke. */
export class DeviceStateError extends Error {
  override name = "DeviceStateError";
}

interface MigrationInfo {
  status?: string;
  "error-desc"?: string;
}

/**
 * Enables `x-ignore-shared` (RAM in shared backends stays out of the
 * stream). Throws a {@linkcode DeviceStateError} naming the QEMU version if
 * this QEMU lacks the capability.
 */
export async function ignoreSharedRam(qmp: QmpClient): Promise<void> {
  const caps = await qmp.execute<{ capability: string; state: boolean }[]>(
    "query-migrate-capabilities",
  );
  if (!caps.some((c) => c.capability === "x-ignore-shared")) {
    throw new DeviceStateError(
      `QEMU ${qmp.version} has no migration capability x-ignore-shared (QEMU 4.0 and later have it): its device state cannot be saved without its whole RAM`,
    );
  }
  await qmp.execute("migrate-set-capabilities", {
    capabilities: [{ capability: "x-ignore-shared", state: true }],
  });
}

/** Throws unless no migration is under way. */
export async function checkNotMigrating(
  qmp: QmpClient,
  what: string,
): Promise<void> {
  const info = await qmp.execute<MigrationInfo>("query-migrate");
  if (info.status && MIGRATION_ACTIVE.has(info.status)) {
    throw new DeviceStateError(
      `${what}: a migration is already under way (status "${info.status}"); wait for it to end or cancel it (QMP migrate_cancel)`,
    );
  }
}

/**
 * Polls `query-migrate` until the migration completed; throws with QEMU's
 * reason if it failed. `deadline` is a `performance.now()` instant.
 */
async function waitMigration(
  qmp: QmpClient,
  deadline: number,
  what: string,
): Promise<void> {
  for (;;) {
    const info = await qmp.execute<MigrationInfo>("query-migrate");
    if (info.status === "completed") return;
    if (info.status === "failed" || info.status === "cancelled") {
      throw new DeviceStateError(
        `${what}: QEMU's migration ${info.status}${
          info["error-desc"] ? `: ${info["error-desc"]}` : ""
        }`,
      );
    }
    if (performance.now() > deadline) {
      throw new DeviceStateError(
        `${what}: the migration did not complete in time (status "${info.status}")`,
      );
    }
    // Each poll is a QMP round trip (~0.1 ms); yield so QEMU makes progress.
    await new Promise((r) => setTimeout(r, 0));
  }
}

/**
 * Where a guest's device state is saved to: a Unix socket of our own that
 * QEMU's `migrate` connects to. One per source; `save` is called once per
 * checkpoint while the guest is stopped.
 */
export class DeviceStateChannel {
  readonly #listener: Deno.UnixListener;
  readonly #dir: string;
  readonly path: string;
  #accepting: Promise<Deno.UnixConn> | null = null;
  #closed = false;

  private constructor(dir: string) {
    this.#dir = dir;
    this.path = `${dir}/state.sock`;
    this.#listener = Deno.listen({ transport: "unix", path: this.path });
  }

  /** A channel in a new private directory. */
  static async open(): Promise<DeviceStateChannel> {
    const dir = await Deno.makeTempDir({ prefix: "patchwire-qemu-" });
    return new DeviceStateChannel(dir);
  }

  /**
   * Starts QEMU's migration into this channel and returns a promise of the
   * number of bytes written into `into` once QEMU reports `completed`. The
   * guest must be stopped. Start it before copying the RAM: QEMU writes the
   * stream while the copy runs. Fails if the state is larger than `into`
   * (naming `tooLarge`'s fix), QEMU fails the migration, or `timeoutMs`
   * passes.
   */
  save(
    qmp: QmpClient,
    into: Uint8Array,
    timeoutMs: number,
    tooLarge: (bytes: number) => string,
  ): Promise<number> {
    const deadline = performance.now() + timeoutMs;
    // An accept left waiting by a save that failed before QEMU connected takes this one's connection.
    const accepted = this.#accepting ??= this.#listener.accept();
    accepted.catch(() => {});
    const started = qmp.execute("migrate", { uri: `unix:${this.path}` });
    return (async () => {
      let conn: Deno.UnixConn | null = null;
      try {
        await started;
        conn = await withDeadline(accepted, deadline, "QEMU to connect");
        this.#accepting = null;
        let n = 0;
        let overflow = 0;
        const spill = new Uint8Array(64 << 10);
        for (;;) {
          const buf = n < into.length ? into.subarray(n) : spill;
          const r = await withDeadline(
            conn.read(buf),
            deadline,
            "the device state",
          );
          if (r === null) break;
          if (buf === spill) overflow += r;
          else n += r;
        }
        await waitMigration(qmp, deadline, "saving the device state");
        if (overflow > 0) {
          throw new DeviceStateError(tooLarge(n + overflow));
        }
        return n;
      } catch (e) {
        if (e instanceof DeviceStateError || e instanceof QmpError) throw e;
        throw new DeviceStateError(
          `saving the device state: ${(e as Error).message}`,
        );
      } finally {
        try {
          conn?.close();
        } catch {
          // already closed
        }
      }
    })();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    Deno.removeSync(this.#dir, { recursive: true });
  }
}

/**
 * Loads `state` into a QEMU started with `-incoming defer` (x-ignore-shared
 * set, its RAM file already holding the checkpoint's RAM), through a Unix
 * socket at `socketPath` that QEMU listens on. Resolves once QEMU reports the
 * migration `completed` and the guest `paused`; the caller then `cont`s.
 */
export async function loadDeviceState(
  qmp: QmpClient,
  socketPath: string,
  state: Uint8Array,
  timeoutMs: number,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  await qmp.execute("migrate-incoming", { uri: `unix:${socketPath}` });
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path: socketPath });
  } catch (e) {
    throw new DeviceStateError(
      `cannot connect to QEMU's incoming migration socket ${socketPath}: ${
        (e as Error).message
      }`,
    );
  }
  try {
    let at = 0;
    while (at < state.length) {
      at += await withDeadline(
        conn.write(state.subarray(at)),
        deadline,
        "QEMU to take the device state",
      );
    }
  } catch (e) {
    // QEMU closes the socket when it refuses the stream: its reason follows.
    if (!(e instanceof DeviceStateError)) {
      await waitMigration(qmp, deadline, "loading the device state");
    }
    throw e;
  } finally {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
  await waitMigration(qmp, deadline, "loading the device state");
  for (;;) {
    const status = await qmp.status();
    if (status.status !== "inmigrate") {
      if (status.status !== "paused") {
        throw new DeviceStateError(
          `after loading the device state the guest is "${status.status}", expected "paused"`,
        );
      }
      return;
    }
    if (performance.now() > deadline) {
      throw new DeviceStateError(
        "QEMU did not finish loading the device state in time",
      );
    }
    await new Promise((r) => setTimeout(r, 1));
  }
}

async function withDeadline<T>(
  p: Promise<T>,
  deadline: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new DeviceStateError(`timed out waiting for ${what}`)),
          Math.max(0, deadline - performance.now()),
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
