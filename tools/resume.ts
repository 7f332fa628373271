/**
 * `deno task resume --store DIR [--epoch N] [--image ID] [--qmp PATH]
 * [--dir DIR] [--mem PATH] [--json] [-- QEMU_COMMAND…]`
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import { resumeGuest } from "../src/resume.ts";

const USAGE =
  `usage: deno task resume --store DIR [--epoch N] [--qmp PATH] [options] [-- QEMU_COMMAND...]

Resumes the QEMU guest of a backup store's last committed checkpoint on this
host: puts the checkpoint's RAM into the mem-path of the guest's memory
backend, starts QEMU with -incoming defer and a QMP socket, loads the
checkpoint's CPU and device state, and continues the guest. Prints the QEMU
pid, its QMP socket and the time of each phase. QEMU keeps running after this
command exits; protect it in turn with
  deno task primary --source "qemu:QMP?mem=PATH&..." --from-store DIR --to ...

The store is only read. A store in use by a running backup role is refused:
stop the role, or promote it (POST /promote with "resume"). A checkpoint
without device state (a primary with state=off) cannot be resumed.

  --store DIR      the backup's store (required)
  --epoch N        refuse unless the store's checkpoint is epoch N
  --image ID       the guest's RAM image id, if the store holds several
  --qmp PATH       the QMP socket of the resumed QEMU (default DIR/qmp.sock)
  --dir DIR        where sockets, qemu.log and (without a command) the RAM
                   file go (default: a new temporary directory)
  --mem PATH       without a command: the RAM file (default DIR/ram)
  --timeout MS     QMP and device-state load time limit (default 30000)
  --json           print the result as one JSON object
  -- QEMU_COMMAND  the QEMU command, passed as given (binary first, or only
                   its arguments): the same machine and devices as the
                   primary's guest, with -object memory-backend-file,
                   id=<the stored backend id>,mem-path=PATH,share=on; its own
                   -pidfile, -serial, -netdev are kept. Without it the stored
                   command line is used, with the RAM file, the QMP socket and
                   a serial console on stdio (to DIR/console.log) rewritten
                   for this host.
  --help           this text
`;

if (import.meta.main) {
  await runMain(USAGE, async () => {
    const sep = Deno.args.indexOf("--");
    const own = sep < 0 ? Deno.args : Deno.args.slice(0, sep);
    const command = sep < 0 ? undefined : Deno.args.slice(sep + 1);
    const args = parseArgs(
      own,
      ["store", "epoch", "image", "qmp", "dir", "mem", "timeout"],
      ["help", "json"],
    );
    if (args.options.has("help")) {
      console.log(USAGE);
      return;
    }
    if (args.positional.length) {
      throw new UsageError(
        `unexpected argument "${
          args.positional[0]
        }" (the QEMU command goes after --)`,
      );
    }
    const one = (name: string) => args.options.get(name)?.at(-1);
    const store = one("store");
    if (!store) throw new UsageError("--store DIR is required");
    if (command !== undefined && command.length === 0) {
      throw new UsageError("-- is followed by no QEMU command");
    }
    if (command !== undefined && one("mem")) {
      throw new UsageError(
        "--mem is for the stored command line: with -- QEMU_COMMAND the RAM file is the mem-path the command names",
      );
    }
    const epochText = one("epoch");
    const timeoutText = one("timeout");
    const r = await resumeGuest({
      store,
      epoch: epochText === undefined
        ? undefined
        : intOption(epochText, "epoch"),
      image: one("image"),
      qmp: one("qmp"),
      dir: one("dir"),
      mem: one("mem"),
      command,
      timeoutMs: timeoutText === undefined
        ? undefined
        : intOption(timeoutText, "timeout", 1),
    });
    if (args.options.has("json")) {
      console.log(JSON.stringify({ ...r, machine: undefined }));
      return;
    }
    const t = r.times;
    console.log(
      `resumed "${r.image}" at epoch ${r.epoch}: QEMU pid ${r.pid}, QMP ${r.qmp}, RAM ${r.mem}, log ${r.log}`,
    );
    console.log(
      `times: RAM copy ${t.ramCopyMs.toFixed(1)} ms, QEMU start ${
        t.startMs.toFixed(1)
      } ms, device state load and cont ${t.loadMs.toFixed(1)} ms, total ${
        t.totalMs.toFixed(1)
      } ms`,
    );
    console.log(`protect it: --source "${r.spec}" --from-store ${store}`);
  });
}
