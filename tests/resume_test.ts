/**
 * Whole-guest checkpoints and resume against real QEMU, and every bad input
 * the issue names: a non-shared guest, a guest whose RAM is not the backend,
 * a guest already migrating, a guest killed mid-capture, a store without
 * device state, a QEMU command of another machine shape, a resume while the
 * backup role runs. Each is a clear error and changes nothing.
 *
 * These use a bare QEMU (firmware only, no kernel: it starts in well under a
 * second); the booted, counting guest is in vm_failover_test.ts.
 */

import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { openSource } from "../src/open_source.ts";
import { QemuSource } from "../src/qemu_source.ts";
import { QmpClient } from "../src/qmp.ts";
import { SourceError } from "../src/source.ts";
import { Primary } from "../src/primary.ts";
import { Backup } from "../src/backup.ts";
import { BackupStore } from "../src/backup_store.ts";
import { AckLevel } from "../src/protocol.ts";
import { ResumeError, resumeGuest } from "../src/resume.ts";
import { processGone } from "../tools/_role_process.ts";

const quiet = () => {};

/** A QEMU with only firmware: enough for QMP, migration and resume. */
class BareQemu {
  readonly child: Deno.ChildProcess;
  readonly qmp: string;
  readonly mem: string;
  readonly args: string[];
  constructor(
    readonly dir: string,
    options: { share?: boolean; extra?: string[]; backend?: boolean } = {},
  ) {
    this.qmp = `${dir}/qmp.sock`;
    this.mem = `${dir}/ram`;
    const backend = options.backend ?? true;
    this.args = [
      "-accel",
      "tcg",
      "-m",
      "64M",
      "-smp",
      "1",
      ...(backend
        ? [
          "-object",
          `memory-backend-file,id=m,size=64M,mem-path=${this.mem},share=${
            options.share === false ? "off" : "on"
          }`,
          "-machine",
          "memory-backend=m",
        ]
        : [
          "-object",
          `memory-backend-file,id=spare,size=64M,mem-path=${this.mem},share=on`,
        ]),
      "-qmp",
      `unix:${this.qmp},server=on,wait=off`,
      "-display",
      "none",
      "-nodefaults",
      "-no-reboot",
      ...(options.extra ?? []),
    ];
    this.child = new Deno.Command("qemu-system-x86_64", {
      args: this.args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  }

  static async start(
    dir: string,
    options?: ConstructorParameters<typeof BareQemu>[1],
  ): Promise<BareQemu> {
    await Deno.mkdir(dir, { recursive: true });
    const q = new BareQemu(dir, options);
    const end = Date.now() + 20_000;
    for (;;) {
      try {
        (await QmpClient.connect(q.qmp, 2000)).close();
        return q;
      } catch (e) {
        if (Date.now() > end) throw e;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  get spec(): string {
    return `qemu:${this.qmp}?mem=${this.mem}`;
  }

  async stop(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // gone
    }
    await this.child.status;
  }
}

/** Every file of a directory, for "nothing changed". */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of Deno.readDirSync(dir)) {
    if (!e.isFile) continue;
    const bytes = Deno.readFileSync(`${dir}/${e.name}`);
    let h = 0;
    for (let i = 0; i < bytes.length; i += 61) h = (h * 31 + bytes[i]) | 0;
    out[e.name] = `${bytes.length}:${h}`;
  }
  return out;
}

/** QEMU processes started for `dir` (their command line names it). */
function qemusFor(dir: string): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
      if (cmd.startsWith("qemu-system") && cmd.includes(dir)) {
        const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
        if (stat.split(" ")[2] !== "Z") pids.push(Number(e.name));
      }
    } catch {
      // gone
    }
  }
  return pids;
}

Deno.test({
  name: "qemu: bad guests are refused at open, naming the fix",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "pw-resume-" });
    try {
      await t.step("RAM not shared", async () => {
        const q = await BareQemu.start(`${dir}/private`, { share: false });
        try {
          const e = await assertRejects(() => openSource(q.spec), SourceError);
          assert(/share=off.*expected share=on/.test(e.message), e.message);
        } finally {
          await q.stop();
        }
      });
      await t.step("the guest's RAM is not the backend named", async () => {
        const q = await BareQemu.start(`${dir}/nobackend`, { backend: false });
        try {
          const e = await assertRejects(() => openSource(q.spec), SourceError);
          assert(
            /the guest's RAM is not the backend of mem=.*-machine memory-backend=spare, or give state=off/
              .test(e.message),
            e.message,
          );
          // RAM-only capture of that file is still possible, and says what it is.
          const s = await openSource(`${q.spec}&state=off`);
          assertEquals(s.images.length, 1);
          await s.close();
        } finally {
          await q.stop();
        }
      });
      await t.step("a guest already migrating", async () => {
        const q = await BareQemu.start(`${dir}/migrating`, {
          extra: ["-qmp", `unix:${dir}/migrating/qmp2.sock,server=on,wait=off`],
        });
        const sink = Deno.listen({
          transport: "unix",
          path: `${dir}/migrating/sink`,
        });
        const other = await QmpClient.connect(`${dir}/migrating/qmp2.sock`);
        try {
          // Nobody reads the sink: the migration stays active.
          await other.execute("migrate", { uri: `unix:${dir}/migrating/sink` });
          const conn = await sink.accept();
          const e = await assertRejects(() => openSource(q.spec), SourceError);
          assert(/a migration is already under way/.test(e.message), e.message);
          await other.execute("migrate_cancel");
          conn.close();
        } finally {
          other.close();
          sink.close();
          await q.stop();
        }
      });
      await t.step("bad options", async () => {
        const q = await BareQemu.start(`${dir}/opts`);
        try {
          for (
            const [opt, re] of [
              ["&state=maybe", /state=maybe: expected on or off/],
              ["&state=off&hold=n0", /hold= needs state=on/],
              ["&state-size=12", /state-size= must be at least 4K/],
              ["&hold=nope", /hold=nope: .*expected the id of a -netdev/],
              ["&hold=all", /hold=all: the guest has no -netdev/],
              [
                "&state-size=4K",
                /the device state is \d+ bytes, more than state-size=4096/,
              ],
            ] as [string, RegExp][]
          ) {
            const e = await assertRejects(
              () => openSource(q.spec + opt),
              SourceError,
            );
            assert(re.test(e.message), `${opt}: ${e.message}`);
          }
          // None of those left the guest stopped or half-configured.
          const check = await QmpClient.connect(q.qmp);
          assertEquals((await check.status()).running, true);
          const objects = await check.execute<{ name: string }[]>("qom-list", {
            path: "/objects",
          });
          assertEquals(
            objects.filter((o) => o.name.startsWith("patchwire")),
            [],
          );
          check.close();
        } finally {
          await q.stop();
        }
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "resume: a store's checkpoint runs again; bad stores, commands and a running backup are refused with the store unchanged",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "pw-resume-" });
    const store = `${dir}/store`;
    const q = await BareQemu.start(`${dir}/vm`, {
      extra: [
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
      ],
    });
    try {
      await t.step(
        "checkpoints of the whole guest, then a guest killed mid-capture",
        async () => {
          const backup = await Backup.open({
            listen: "tcp://127.0.0.1:0",
            store,
            note: quiet,
          });
          const source = await openSource(`${q.spec}&hold=n0`);
          assert(source instanceof QemuSource);
          const p = new Primary(source, {
            to: [backup.url],
            intervalMs: null,
            note: quiet,
          });
          p.start();
          try {
            for (let i = 0; i < 3; i++) await p.checkpoint();
            assert(
              /--ack none with network output of netdev n0 held: no epoch would ever commit/
                .test(
                  (() => {
                    try {
                      new Primary(source, {
                        to: [],
                        ack: { who: { kind: "none" }, level: AckLevel.applied },
                      });
                      return "accepted";
                    } catch (e) {
                      return (e as Error).message;
                    }
                  })(),
                ),
              "hold with --ack none is refused",
            );
            const before = p.encoder.epoch;
            const taking = p.checkpoint();
            q.child.kill("SIGKILL"); // while it stops, saves and copies
            const e = await assertRejects(() => taking, SourceError);
            assert(
              /QMP|QEMU|connection|device state/.test(e.message),
              e.message,
            );
            assertEquals(p.encoder.epoch, before, "no partial epoch");
          } finally {
            await p.stop();
            await backup.close();
            await q.stop();
          }
          const state = JSON.parse(
            Deno.readTextFileSync(`${store}/state.json`),
          );
          assertEquals(state.epoch, 3);
          assertEquals(
            state.images.map((i: { id: string }) => i.id),
            ["ram", "ram.state", "ram.machine"],
          );
          assert(state.images[1].length > 1000, "a device state is stored");
        },
      );

      await t.step(
        "resume with the stored command line runs the guest",
        async () => {
          const before = snapshot(store);
          const r = await resumeGuest({ store, dir: `${dir}/r1` });
          try {
            assertEquals(r.epoch, 3);
            const qmp = await QmpClient.connect(r.qmp);
            assertEquals((await qmp.status()).status, "running");
            qmp.close();
            assert(r.times.totalMs > 0 && r.times.loadMs > 0);
            assert(r.spec.includes(`state-size=`), r.spec);
          } finally {
            Deno.kill(r.pid, "SIGKILL");
          }
          assertEquals(snapshot(store), before, "the store is only read");
        },
      );

      await t.step(
        "a QEMU command of another machine shape: QEMU's reason, nothing left running",
        async () => {
          const before = snapshot(store);
          const machine = JSON.parse(
            new TextDecoder().decode(
              Deno.readFileSync(`${store}/ram.machine.img`).filter((b) =>
                b !== 0
              ),
            ),
          );
          const args = (machine.args as string[]).map((a) =>
            a.startsWith("memory-backend-file")
              ? a.replace(/mem-path=[^,]*/, `mem-path=${dir}/r2/ram`)
              : a
          ).filter((a, i, all) => a !== "-qmp" && all[i - 1] !== "-qmp");
          // The checkpoint's NIC missing, or its RAM another size: QEMU refuses the state.
          const noNic = args.filter((a, i, all) =>
            !a.startsWith("virtio-net-pci") &&
            !(a === "-device" && all[i + 1]?.startsWith("virtio-net-pci"))
          );
          const otherSize = args.map((a) =>
            a.startsWith("memory-backend-file")
              ? a.replace("size=64M", "size=96M")
              : a === "64M"
              ? "96M"
              : a
          );
          await Deno.mkdir(`${dir}/r2`);
          for (
            const [what, command] of [["no NIC", noNic], [
              "96M of RAM",
              otherSize,
            ]] as const
          ) {
            const e = await assertRejects(
              () =>
                resumeGuest({
                  store,
                  dir: `${dir}/r2`,
                  command: ["qemu-system-x86_64", ...command],
                }),
              ResumeError,
            );
            assert(
              /QEMU refused the checkpoint's device state|QEMU exited \(code 1\)/
                .test(e.message),
              `${what}: ${e.message}`,
            );
            console.log(`  ${what}: ${e.message.split("\n").at(-1)}`);
            assertEquals(
              qemusFor(`${dir}/r2`),
              [],
              "the refused QEMU was stopped",
            );
            assertEquals(snapshot(store), before);
          }
          // A command without the checkpoint's memory backend.
          const noBackend = args.filter((a) =>
            !a.startsWith("memory-backend-file")
          );
          const f = await assertRejects(
            () => resumeGuest({ store, dir: `${dir}/r2`, command: noBackend }),
            ResumeError,
          );
          assert(
            /has no -object memory-backend-file,id=m/.test(f.message),
            f.message,
          );
        },
      );

      await t.step(
        "a resume while the backup role runs on the store",
        async () => {
          const backup = await Backup.open({
            listen: "tcp://127.0.0.1:0",
            store,
            note: quiet,
          });
          try {
            const e = await assertRejects(
              () => resumeGuest({ store }),
              ResumeError,
            );
            assert(
              /in use by a running backup role: stop it, or promote it/.test(
                e.message,
              ),
              e.message,
            );
          } finally {
            await backup.close();
          }
        },
      );

      await t.step(
        "a store without device state, and the wrong epoch",
        async () => {
          const e = await assertRejects(
            () => resumeGuest({ store, epoch: 2 }),
            ResumeError,
          );
          assert(/holds epoch 3, not 2/.test(e.message), e.message);
          const ramOnly = `${dir}/ram-only`;
          const s = BackupStore.open(ramOnly);
          s.replaceAll(
            {
              epoch: 5,
              images: [{ id: "vm", size: 8192, digestLo: 0, digestHi: 0 }],
            },
            [new Uint8Array(8192)],
            true,
          );
          s.close();
          const before = snapshot(ramOnly);
          const f = await assertRejects(
            () => resumeGuest({ store: ramOnly }),
            ResumeError,
          );
          assert(
            /no guest that can be resumed.*RAM alone.*cannot be resumed/s.test(
              f.message,
            ),
            f.message,
          );
          const g = await assertRejects(
            () => resumeGuest({ store: ramOnly, image: "vm" }),
            ResumeError,
          );
          assert(/"vm" has no device state/.test(g.message), g.message);
          assertEquals(snapshot(ramOnly), before);
          const h = await assertRejects(
            () => resumeGuest({ store: `${dir}/none` }),
            ResumeError,
          );
          assert(/is not a backup store/.test(h.message), h.message);
          assert(
            !(await Deno.stat(`${dir}/none`).catch(() => null)),
            "nothing created",
          );
        },
      );
    } finally {
      await q.stop();
      for (const pid of qemusFor(dir)) Deno.kill(pid, "SIGKILL");
      for (const pid of qemusFor(dir)) {
        const end = Date.now() + 10_000;
        while (!(await processGone(pid)) && Date.now() < end) {
          await new Promise((r) => setTimeout(r, 20));
        }
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});
