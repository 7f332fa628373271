/**
 * The `qemu:` source against a real QEMU guest (TCG, the host's Debian
 * kernel, a busybox initramfs whose /init keeps changing memory; see
 * tools/guest.ts). Needs qemu-system-x86_64, a kernel in /boot, busybox and
 * cpio (.ci/run installs them).
 */

import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { startGuest } from "../tools/guest.ts";
import { openSource } from "../src/open_source.ts";
import { QemuSource } from "../src/qemu_source.ts";
import { QmpClient } from "../src/qmp.ts";
import { SourceError } from "../src/source.ts";
import { Primary } from "../src/primary.ts";
import { Relay } from "../src/relay.ts";
import { Backup } from "../src/backup.ts";
import { AckLevel } from "../src/protocol.ts";
import { until } from "./_until.ts";

const quiet = () => {};

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  const n = a.length & ~7;
  const a64 = new BigUint64Array(a.buffer, a.byteOffset, n / 8);
  const b64 = new BigUint64Array(b.buffer, b.byteOffset, n / 8);
  for (let i = 0; i < a64.length; i++) if (a64[i] !== b64[i]) return false;
  for (let i = n; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

Deno.test("qemu: a live guest replicated through a relay to two backups; bad inputs; a paused guest; a guest that exits", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "pw-qemu-" });
  const guest = await startGuest({ dir: `${dir}/vm`, memMiB: 128 });
  try {
    await t.step("bad inputs give clear errors", async () => {
      const notQemu = Deno.listen({ transport: "unix", path: `${dir}/fake` });
      (async () => {
        for await (const c of notQemu) {
          await c.write(new TextEncoder().encode("220 smtp ready\r\n"));
        }
      })();
      const cases: [string, RegExp][] = [
        [`qemu:${dir}/fake?mem=${guest.mem}`, /is not a QMP socket/],
        [
          `qemu:${dir}/nothing?mem=${guest.mem}`,
          /cannot connect to the QMP socket/,
        ],
        [`qemu:${guest.qmp}`, /mem=PATH is missing/],
        [
          `qemu:${guest.qmp}?mem=${dir}/vm/initramfs.gz`,
          /is not this guest's RAM: its memory-backend-file paths are .*\/ram/,
        ],
        [`qemu:${guest.qmp}?mem=${dir}/none`, /mem=.*none/],
        [
          `qemu:${guest.qmp}?mem=${guest.mem}&bogus=1`,
          /unknown option "bogus"/,
        ],
      ];
      for (const [spec, re] of cases) {
        const e = await assertRejects(() => openSource(spec), SourceError);
        assert(re.test(e.message), `${spec}: ${e.message}`);
      }
      notQemu.close();
    });

    await t.step(
      "every committed epoch: each backup's image equals the guest RAM captured for it",
      async () => {
        const backups = [
          await Backup.open({
            listen: "tcp://127.0.0.1:0",
            store: `${dir}/b1`,
            note: quiet,
          }),
          await Backup.open({
            listen: "ws://127.0.0.1:0/pw",
            store: `${dir}/b2`,
            note: quiet,
          }),
        ];
        const relay = await Relay.open({
          listen: "tcp://127.0.0.1:0",
          to: backups.map((b) => b.url),
          link: { backoffMs: 20 },
          note: quiet,
        });
        const source = await openSource(guest.spec);
        assert(source instanceof QemuSource);
        const stateSize = source.images[1]?.size;
        assertEquals(source.images, [
          { id: "ram", size: 128 << 20 },
          { id: "ram.state", size: stateSize, sized: true },
          { id: "ram.machine", size: 64 << 10, sized: true },
        ]);
        const p = new Primary(source, {
          to: [relay.url],
          intervalMs: null,
          ack: { who: { kind: "all" }, level: AckLevel.applied },
          note: quiet,
        });
        p.start();
        try {
          let changed = 0;
          for (let i = 0; i < 6; i++) {
            const r = await p.checkpoint();
            if (i > 0 && r.dirtyPages > 0) changed++;
            assert(r.pauseMs > 0, "a running guest is paused for the capture");
            const captured = p.encoder.images[0].committed.subarray(
              0,
              128 << 20,
            );
            for (const b of backups) {
              await until(
                () => b.store.state?.epoch === r.epoch,
                `${b.url} to store epoch ${r.epoch}`,
              );
              const stored = await Deno.readFile(`${b.store.dir}/ram.img`);
              assert(
                bytesEqual(stored, captured),
                `${b.url}: ram.img differs from the guest RAM captured at epoch ${r.epoch}`,
              );
              // The device state of the same stop window, committed with it.
              const model = p.encoder.images[1];
              const state = b.store.state!.images[1];
              assertEquals(state.length, model.length);
              assert(model.length > 100_000 && model.length < 4 << 20);
              const storedState = await Deno.readFile(
                `${b.store.dir}/ram.state.img`,
              );
              assert(
                bytesEqual(
                  storedState,
                  model.committed.subarray(0, model.size),
                ),
                `${b.url}: ram.state.img differs from the device state of epoch ${r.epoch}`,
              );
            }
            await new Promise((r) => setTimeout(r, 100)); // let the guest run
          }
          assert(
            changed >= 4,
            `the guest's memory changed between epochs (${changed} of 5)`,
          );
          assertEquals(p.pauses.count, 6);
        } finally {
          await p.stop();
          await relay.close();
          for (const b of backups) await b.close();
        }
        // QMP serves one client per socket: ask once the source let go.
        const q = await QmpClient.connect(guest.qmp);
        try {
          assertEquals(
            (await q.status()).status,
            "running",
            "the guest runs again after each capture",
          );
        } finally {
          q.close();
        }
      },
    );

    await t.step(
      "a guest its operator paused is captured and left paused",
      async () => {
        const operator = await QmpClient.connect(guest.qmp);
        await operator.execute("stop");
        operator.close(); // QMP serves one client per socket
        const source = await QemuSource.open(guest.spec);
        const buffers = () => source.images.map((i) => new Uint8Array(i.size));
        const buf = buffers();
        const again = buffers();
        let pauseMs = -1;
        try {
          const first = await source.capture(buf);
          pauseMs = first.pauseMs;
          // Saved once; still stopped, so the second capture reuses it (QEMU
          // refuses to migrate a guest twice without running it between).
          const second = await source.capture(again);
          assertEquals(second.lengths, first.lengths);
        } finally {
          await source.close();
        }
        assertEquals(pauseMs, 0, "no pause of ours");
        assert(
          bytesEqual(buf[0], again[0]),
          "a paused guest's RAM does not change",
        );
        const check = await QmpClient.connect(guest.qmp);
        try {
          // After saving its state QEMU calls a stopped guest "postmigrate";
          // the operator's cont runs it as from "paused".
          const status = await check.status();
          assertEquals(status.running, false, "left stopped");
          await check.execute("cont");
        } finally {
          check.close();
        }
      },
    );

    await t.step(
      "a guest that exits: the capture fails with a clear error, no epoch is made",
      async () => {
        const source = await QemuSource.open(guest.spec);
        const p = new Primary(source, {
          to: [],
          intervalMs: null,
          ack: { who: { kind: "none" }, level: AckLevel.applied },
          note: quiet,
        });
        p.start();
        try {
          await p.checkpoint();
          const before = p.encoder.epoch;
          await guest.stop();
          const e = await assertRejects(() => p.checkpoint(), SourceError);
          assert(
            /QEMU closed the QMP connection|the connection broke/.test(
              e.message,
            ),
            e.message,
          );
          assertEquals(p.encoder.epoch, before, "no partial epoch");
        } finally {
          await p.stop();
        }
      },
    );
  } finally {
    await guest.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
