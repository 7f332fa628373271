/**
 * A checkpoint's RAM and device state are stored and resumed together across
 * backup crashes: a backup process replicating a real QEMU guest (whole-guest
 * checkpoints, durable acks) is SIGKILLed at each of the store's fault points
 * (`PATCHWIRE_FAULT`, src/_fault.ts), restarted, and then its store must hold
 * the RAM, the device state and its length of one epoch — the primary's
 * last committed one — and resume into a running guest.
 */

import { assert, assertEquals } from "./_assert.ts";
import { openSource } from "../src/open_source.ts";
import { Primary } from "../src/primary.ts";
import { AckLevel } from "../src/protocol.ts";
import { QmpClient } from "../src/qmp.ts";
import { resumeGuest } from "../src/resume.ts";
import { rolePermissions } from "../tools/_role_permissions.ts";
import { PortRange } from "../tools/_role_process.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const quiet = () => {};

/** Store fault points, and on which pass each dies (base-sync points on the first). */
const POINTS: [string, number][] = [
  ["store.journal.unsealed", 2],
  ["store.journal.written", 2],
  ["store.apply.mid", 2],
  ["store.images.fsync", 2],
  ["store.rename.before", 3],
  ["store.state.renamed", 2],
  ["store.replace.staged", 1],
  ["store.replace.switched", 1],
];

function backupProcess(listen: string, store: string, fault: string) {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...rolePermissions("backup"),
      `${ROOT}tools/backup.ts`,
      "--listen",
      listen,
      "--store",
      store,
    ],
    cwd: ROOT,
    env: { PATCHWIRE_FAULT: fault },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

async function waitQmp(path: string): Promise<void> {
  const end = Date.now() + 20_000;
  for (;;) {
    try {
      (await QmpClient.connect(path, 2000)).close();
      return;
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

Deno.test({
  name:
    "vm store crashes: RAM and device state of one epoch survive a backup killed at every store fault point, and resume",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "pw-vm-crash-" });
    const qemu = new Deno.Command("qemu-system-x86_64", {
      args: [
        "-m",
        "64M",
        "-object",
        `memory-backend-file,id=m,size=64M,mem-path=${dir}/ram,share=on`,
        "-machine",
        "memory-backend=m",
        "-qmp",
        `unix:${dir}/qmp.sock,server=on,wait=off`,
        "-display",
        "none",
        "-nodefaults",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const ports = new PortRange();
    try {
      await waitQmp(`${dir}/qmp.sock`);
      for (const [point, pass] of POINTS) {
        await t.step(`${point} (pass ${pass})`, async () => {
          const store = `${dir}/${point}`;
          const url = `tcp://127.0.0.1:${ports.take()}`;
          const source = await openSource(
            `qemu:${dir}/qmp.sock?mem=${dir}/ram`,
          );
          const p = new Primary(source, {
            to: [url],
            intervalMs: null,
            ack: { who: { kind: "all" }, level: AckLevel.durable },
            link: { backoffMs: 20, maxBackoffMs: 100 },
            note: quiet,
          });
          p.start();
          let backup = backupProcess(url, store, `${point}:${pass}`);
          try {
            // Checkpoints until the armed backup dies at its point.
            let died = false;
            backup.status.then(() => died = true);
            const pending: Promise<unknown>[] = [];
            for (let i = 0; i < 6 && !died; i++) {
              const c = p.checkpoint();
              pending.push(c);
              await Promise.race([c, backup.status]);
            }
            const status = await backup.status;
            assertEquals(
              status.signal,
              "SIGKILL",
              `the backup died at ${point}`,
            );
            // Restarted, it recovers its store and catches up.
            backup = backupProcess(url, store, "");
            await Promise.all(pending);
            await p.checkpoint();
            await p.checkpoint();
            backup.kill("SIGTERM");
            await backup.status;
            const state = JSON.parse(
              Deno.readTextFileSync(`${store}/state.json`),
            );
            assertEquals(
              state.epoch,
              p.epoch,
              "the store holds the last commit",
            );
            const [ram, dev] = p.encoder.images;
            assertEquals(state.images[1].length, dev.length);
            assert(
              same(
                Deno.readFileSync(`${store}/ram.img`),
                ram.committed.subarray(0, ram.size),
              ),
              "RAM of that epoch",
            );
            assert(
              same(
                Deno.readFileSync(`${store}/ram.state.img`),
                dev.committed.subarray(0, dev.size),
              ),
              "device state of that epoch",
            );
          } finally {
            try {
              backup.kill("SIGKILL");
            } catch {
              // gone
            }
            await backup.status;
            await backup.stderr.cancel().catch(() => {});
            await p.stop();
          }
          const r = await resumeGuest({ store, dir: `${store}-resumed` });
          try {
            const q = await QmpClient.connect(r.qmp);
            assertEquals((await q.status()).status, "running");
            q.close();
          } finally {
            Deno.kill(r.pid, "SIGKILL");
          }
        });
      }
    } finally {
      try {
        qemu.kill("SIGKILL");
      } catch {
        // gone
      }
      await qemu.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});
