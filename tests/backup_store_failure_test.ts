/**
 * A backup that stops storing stops claiming it stores. With the default
 * `applied` acks, a backup whose store can no longer be written (a batch
 * fails, and the store can neither be reopened nor written) acks nothing
 * more: its upstream is refused with the reason, so an ack policy that needs
 * the backup stops committing; `/healthz` answers 503 with the reason,
 * `/status` shows it and `/metrics` says `patchwire_store_healthy 0`. Once
 * the store takes writes again (tried when an upstream connects), the backup
 * stores its replica, is healthy and acks again.
 *
 * The store fails in two ways: a full disk (a real ENOSPC, on a small tmpfs
 * mounted for the test: it needs root and `mount`, and is ignored with the
 * reason printed where a tmpfs cannot be mounted), and the store's crash
 * point, which makes every commit and every reopen's redo fail (anywhere).
 * @module
 */

import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { Primary } from "../src/primary.ts";
import { Backup } from "../src/backup.ts";
import { _testing, BackupStore, StoreError } from "../src/backup_store.ts";
import { AckLevel } from "../src/protocol.ts";
import { openSource } from "../src/open_source.ts";
import { bytesEqual } from "../src/replay.ts";
import { createControlApp, serveHttp } from "../src/control_plane.ts";
import { until } from "./_until.ts";

const SPEC = "synthetic:images=2,size=1M,seed=7,dirty=0.05";

async function run(command: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(command, { args, stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(
      `${command} ${args.join(" ")}: ${
        new TextDecoder().decode(out.stderr).trim() || `exit ${out.code}`
      }`,
    );
  }
}

/** A tmpfs of `size` (e.g. "8m") mounted on a new temporary directory. */
async function mountTmpfs(size: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "pw-full-disk-" });
  try {
    await run("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir]);
  } catch (e) {
    await Deno.remove(dir);
    throw e;
  }
  return dir;
}

async function unmountTmpfs(dir: string): Promise<void> {
  try {
    await run("umount", [dir]);
  } catch {
    await run("umount", ["-l", dir]); // still busy: detach it
  }
  await Deno.remove(dir);
}

/** Why no tmpfs can be mounted here, or null. */
async function tmpfsUnavailable(): Promise<string | null> {
  try {
    await unmountTmpfs(await mountTmpfs("1m"));
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

const noTmpfs = await tmpfsUnavailable();
if (noTmpfs) {
  console.error(
    `backup_store_failure_test: full-disk tests ignored: cannot mount a tmpfs (${noTmpfs})`,
  );
}

/** Fills the file system `dir` is on: writes `${dir}/filler` until ENOSPC. */
function fillDisk(dir: string): void {
  const f = Deno.openSync(`${dir}/filler`, { write: true, create: true });
  const chunk = new Uint8Array(64 << 10);
  try {
    for (;;) f.writeSync(chunk);
  } catch (e) {
    if ((e as { code?: string }).code !== "ENOSPC") throw e;
  } finally {
    f.close();
  }
}

Deno.test({
  name:
    "on a full disk every store write fails with ENOSPC (growing the mapped journal too: no SIGBUS), and so does reopening; with room again it reopens at the epoch whose journal was whole",
  ignore: noTmpfs !== null,
  fn: async () => {
    const mnt = await mountTmpfs("8m");
    const dir = `${mnt}/s`;
    try {
      const size = 2 << 20;
      const im = { id: "a", size, digestLo: 0, digestHi: 0 };
      const at = (epoch: number) => ({ epoch, images: [{ ...im }] });
      let store = BackupStore.open(dir);
      store.replaceAll(at(1), [new Uint8Array(size)], false);
      store.commitEpoch(
        at(2),
        [{ slot: 0, offset: 0, bytes: new Uint8Array(4096).fill(2) }],
        false,
      );
      fillDisk(mnt);
      // 1.5 MiB of ranges: more than the journal holds, so it must grow.
      assertThrows(
        () =>
          store.commitEpoch(
            at(3),
            [{ slot: 0, offset: 0, bytes: new Uint8Array(1_500_000).fill(3) }],
            false,
          ),
        (e: Error) =>
          e instanceof StoreError && /No space left on device/.test(e.message),
      );
      // A small epoch fits the journal and the images; its state does not.
      const three = new Uint8Array(4096).fill(3);
      assertThrows(
        () =>
          store.commitEpoch(
            at(3),
            [{ slot: 0, offset: 8192, bytes: three }],
            false,
          ),
        (e: Error) =>
          e instanceof StoreError &&
          /state\.json\.tmp: No space left on device/.test(e.message),
      );
      store.close();
      assertThrows(
        () => BackupStore.open(dir),
        (e: Error) =>
          e instanceof StoreError && /No space left on device/.test(e.message),
      );
      await Deno.remove(`${mnt}/filler`);
      store = BackupStore.open(dir);
      assertEquals(store.recovery.journal, "redone");
      assertEquals(store.state?.epoch, 3);
      const bytes = new Uint8Array(size);
      store.readImage(0, bytes);
      assert(bytesEqual(bytes.subarray(8192, 8192 + 4096), three));
      assert(bytesEqual(bytes.subarray(0, 4096), new Uint8Array(4096).fill(2)));
      store.close();
    } finally {
      await unmountTmpfs(mnt);
    }
  },
});

/** A way to make a store unwritable, and writable again. */
interface StoreFault {
  name: string;
  ignore: boolean;
  /** A directory for the store to live in. */
  setup(): Promise<string>;
  /** From now on, store writes fail and the store cannot be reopened. */
  fail(root: string): void;
  clear(root: string): void | Promise<void>;
  teardown(root: string): Promise<void>;
  /** What the backup's reason names as the cause. */
  cause: RegExp;
}

const FAULTS: StoreFault[] = [
  {
    name: "its disk is full",
    ignore: noTmpfs !== null,
    setup: () => mountTmpfs("8m"),
    fail: fillDisk,
    clear: (root) => Deno.remove(`${root}/filler`),
    teardown: unmountTmpfs,
    cause: /No space left on device/,
  },
  {
    name: "every commit and every reopen's redo fail",
    ignore: false,
    setup: () => Deno.makeTempDir({ prefix: "pw-store-fault-" }),
    // A commit stops once its images are written, before its state; the
    // reopen redoes its whole journal, and stops at the same point.
    fail: () => _testing.crashAfter = "images",
    clear: () => {
      _testing.crashAfter = null;
    },
    teardown: async (root) => {
      _testing.crashAfter = null;
      await Deno.remove(root, { recursive: true });
    },
    cause: /simulated crash after images/,
  },
];

async function get(url: string): Promise<{ status: number; text: string }> {
  const r = await fetch(url);
  return { status: r.status, text: await r.text() };
}

/** A metric's value in Prometheus text, or undefined. */
function metric(text: string, name: string): number | undefined {
  const m = new RegExp(`^patchwire_${name}\\{[^}]*\\} (\\S+)$`, "m").exec(
    text,
  );
  return m ? Number(m[1]) : undefined;
}

for (const fault of FAULTS) {
  Deno.test({
    name:
      `applied acks: a backup whose store cannot be written (${fault.name}) stops acking, says why on /healthz, /status and /metrics, and recovers once it can`,
    ignore: fault.ignore,
    fn: async () => {
      const root = await fault.setup();
      try {
        // The default acks (applied), batches (100 ms) and policy (all).
        const b = await Backup.open({
          listen: "tcp://127.0.0.1:0",
          store: `${root}/b`,
          note: () => {},
        });
        const http = await serveHttp(
          "127.0.0.1:0",
          createControlApp(() => ({ status: () => b.status() })),
        );
        const p = new Primary(await openSource(SPEC), {
          to: [b.url],
          intervalMs: null,
          link: { backoffMs: 20, maxBackoffMs: 200 },
          note: () => {},
        });
        p.start();
        const link = p.links[0];
        try {
          await p.checkpoint();
          await p.checkpoint();
          await until(() => b.store.state?.epoch === 2, "epoch 2 stored");
          assertEquals(await get(`${http.url}/healthz`), {
            status: 200,
            text: "ok\n",
          });
          let metrics = (await get(`${http.url}/metrics`)).text;
          assertEquals(metric(metrics, "store_healthy"), 1);
          assertEquals(metric(metrics, "store_failures_total"), 0);

          fault.fail(root);
          // Acked `applied` (in memory, as that level says); the batch that
          // would store it fails, and so does reopening the store.
          assertEquals((await p.checkpoint()).epoch, 3);
          await until(
            () => b.status().storeHealthy === false,
            "the batch of epoch 3 to fail",
          );
          const reason = new RegExp(
            `store ${b.store.dir} cannot be written: .*${fault.cause.source}.*; this backup no longer acks`,
          );
          const health = await get(`${http.url}/healthz`);
          assertEquals(health.status, 503);
          assert(reason.test(health.text), health.text);
          const status = JSON.parse((await get(`${http.url}/status`)).text);
          assertEquals(status.storeHealthy, false);
          assertEquals(`unhealthy: ${status.storeError}\n`, health.text);
          assertEquals([status.epoch, status.storedEpoch], [3, 2]);
          metrics = (await get(`${http.url}/metrics`)).text;
          assertEquals(metric(metrics, "store_healthy"), 0);
          assertEquals(metric(metrics, "store_failures_total"), 1);

          // Epoch 4 is refused, not acked; so is every reconnect, with the
          // reason: under `all` nothing commits past epoch 3.
          const fourth = p.checkpoint();
          fourth.catch(() => {}); // rejected only if the test stops the primary first
          await until(
            () =>
              /^peer refused: store .* cannot be written/.test(
                link.lastError ?? "",
              ),
            "a reconnect to be refused",
          );
          assert(reason.test(link.lastError!), link.lastError!);
          assertEquals(p.epoch, 4);
          assertEquals(b.epoch, 3, "epoch 4 was not applied");
          assertEquals(link.acks.epochs[AckLevel.applied], 3);
          assertEquals(p.committed, 3);

          await fault.clear(root);
          // The next connection tries the store again: it reopens, holds the
          // replica's epoch, and the backup acks from there.
          assertEquals((await fourth).epoch, 4);
          assertEquals((await p.checkpoint()).epoch, 5);
          await until(() => b.store.state?.epoch === 5, "epoch 5 stored");
          for (const image of p.encoder.images) {
            const stored = await Deno.readFile(
              `${b.store.dir}/${image.id}.img`,
            );
            assert(
              bytesEqual(stored, image.committed.subarray(0, image.size)),
              `${image.id}.img differs from the primary at epoch 5`,
            );
          }
          assertEquals(await get(`${http.url}/healthz`), {
            status: 200,
            text: "ok\n",
          });
          const after = JSON.parse((await get(`${http.url}/status`)).text);
          assertEquals([after.storeHealthy, after.storeError], [true, null]);
          metrics = (await get(`${http.url}/metrics`)).text;
          assertEquals(metric(metrics, "store_healthy"), 1);
          assertEquals(metric(metrics, "store_failures_total"), 1);
        } finally {
          await p.stop();
          await http.close();
          await b.close();
        }
      } finally {
        await fault.teardown(root);
      }
    },
  });
}
