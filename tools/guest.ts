/**
 * `guest`: boots a small QEMU guest whose RAM is a shared file, ready to be
 * replicated with `--source qemu:QMP_SOCKET?mem=PATH`. Tests and benchmarks
 * use it, and it shows how to start QEMU for patchwire.
 *
 * The guest is the host's Debian kernel (`/boot/vmlinuz-*`) with a busybox
 * initramfs built here, whose `/init` runs a workload that keeps changing
 * memory: it rewrites files in its RAM-backed root file system, a few pages
 * at a time, with a counter that tells how far it got.
 *
 * ```sh
 * deno run -A tools/guest.ts --dir /tmp/vm0 --mem 256 [--accel tcg|kvm]
 * # prints the QMP socket and RAM file, then runs until interrupted
 * deno task primary --source "qemu:/tmp/vm0/qmp.sock?mem=/tmp/vm0/ram" --to tcp://...
 * ```
 *
 * Needs `qemu-system-x86_64`, a kernel in /boot (Debian: linux-image-cloud-amd64),
 * a static busybox (busybox-static) and cpio.
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";

/** A running guest. */
export interface Guest {
  /** The QMP socket. */
  qmp: string;
  /** The file that is the guest's RAM (memory-backend-file, share=on). */
  mem: string;
  /** RAM size in bytes. */
  size: number;
  /** The `qemu:` source spec for this guest. */
  spec: string;
  process: Deno.ChildProcess;
  /** Serial console output so far. */
  console(): string;
  /** Kills QEMU and waits for it. */
  stop(): Promise<void>;
}

/** Options of {@linkcode startGuest}. */
export interface GuestOptions {
  /** Directory for the socket, RAM file, initramfs and console log. */
  dir: string;
  /** RAM in MiB (at least 96 for a Debian kernel). Default 128. */
  memMiB?: number;
  /** "tcg" (default: portable, slow) or "kvm". */
  accel?: "tcg" | "kvm";
  /**
   * Shell run by /init after boot, in a loop by default: changes memory.
   * It may use busybox applets.
   */
  workload?: string;
  /** How long to wait for the guest to come up. Default 120 s. */
  bootTimeoutMs?: number;
}

/** What the default workload does every round: rewrites a few files in the RAM-backed root. */
export const DEFAULT_WORKLOAD = `
i=0
while true; do
  i=$((i+1))
  dd if=/dev/urandom of=/tmp/blob.$((i % 8)) bs=4096 count=$((16 + i % 48)) 2>/dev/null
  echo $i > /tmp/round
  usleep 20000
done`;

/** The first kernel image in /boot, newest name last. */
export function findKernel(): string {
  let names: string[] = [];
  try {
    names = [...Deno.readDirSync("/boot")].map((e) => e.name)
      .filter((n) => n.startsWith("vmlinuz-")).sort();
  } catch {
    // no /boot
  }
  if (names.length === 0) {
    throw new Error(
      "no kernel in /boot (vmlinuz-*): install one, e.g. apt-get install linux-image-cloud-amd64",
    );
  }
  return `/boot/${names.at(-1)}`;
}

async function run(cmd: string, args: string[], what: string): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`${what}: cannot run ${cmd}: ${(e as Error).message}`);
  }
  if (!out.success) {
    throw new Error(
      `${what}: ${cmd} failed: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
}

/** Builds `DIR/initramfs.gz`: busybox and an /init that runs `workload`. */
export async function buildInitramfs(
  dir: string,
  workload = DEFAULT_WORKLOAD,
): Promise<string> {
  const root = `${dir}/initramfs`;
  await Deno.remove(root, { recursive: true }).catch(() => {});
  for (const d of ["bin", "proc", "sys", "dev", "tmp"]) {
    await Deno.mkdir(`${root}/${d}`, { recursive: true });
  }
  try {
    await Deno.copyFile("/bin/busybox", `${root}/bin/busybox`);
  } catch (e) {
    throw new Error(
      `cannot copy /bin/busybox (apt-get install busybox-static): ${
        (e as Error).message
      }`,
    );
  }
  await Deno.chmod(`${root}/bin/busybox`, 0o755);
  await Deno.writeTextFile(
    `${root}/init`,
    `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "patchwire-guest: ready"
${workload}
`,
  );
  await Deno.chmod(`${root}/init`, 0o755);
  const out = `${dir}/initramfs.gz`;
  await run(
    "sh",
    [
      "-c",
      `cd '${root}' && find . | cpio -o -H newc --quiet | gzip -1 > '${out}'`,
    ],
    "building the initramfs",
  );
  return out;
}

/**
 * Boots a guest and resolves once its /init runs. Its RAM is
 * `DIR/ram` and its QMP socket `DIR/qmp.sock`.
 */
export async function startGuest(options: GuestOptions): Promise<Guest> {
  const { dir } = options;
  const memMiB = options.memMiB ?? 128;
  await Deno.mkdir(dir, { recursive: true });
  const kernel = findKernel();
  const initrd = await buildInitramfs(dir, options.workload);
  const qmp = `${dir}/qmp.sock`;
  const mem = `${dir}/ram`;
  await Deno.remove(qmp).catch(() => {});
  await Deno.remove(mem).catch(() => {});
  const args = [
    "-accel",
    options.accel ?? "tcg",
    "-m",
    `${memMiB}M`,
    "-smp",
    "1",
    "-object",
    `memory-backend-file,id=m,size=${memMiB}M,mem-path=${mem},share=on`,
    "-machine",
    "memory-backend=m",
    "-qmp",
    `unix:${qmp},server,nowait`,
    "-kernel",
    kernel,
    "-initrd",
    initrd,
    "-append",
    "console=ttyS0 quiet panic=-1 rdinit=/init",
    "-nographic",
    "-no-reboot",
    "-nodefaults",
    "-serial",
    "stdio",
  ];
  let process: Deno.ChildProcess;
  try {
    process = new Deno.Command("qemu-system-x86_64", {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    throw new Error(
      `cannot start qemu-system-x86_64 (apt-get install qemu-system-x86): ${
        (e as Error).message
      }`,
    );
  }
  let text = "";
  let exited = false;
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      if (text.length > 1 << 20) text = text.slice(-(1 << 19));
    }
  };
  const drained = Promise.all([drain(process.stdout), drain(process.stderr)]);
  const status = process.status.then((s) => {
    exited = true;
    return s;
  });
  const guest: Guest = {
    qmp,
    mem,
    size: memMiB << 20,
    spec: `qemu:${qmp}?mem=${mem}`,
    process,
    console: () => text,
    async stop() {
      if (!exited) {
        try {
          process.kill("SIGKILL");
        } catch {
          // already gone
        }
      }
      await status;
      await drained.catch(() => {});
    },
  };
  const deadline = Date.now() + (options.bootTimeoutMs ?? 120_000);
  while (!text.includes("patchwire-guest: ready")) {
    if (exited) {
      await drained.catch(() => {});
      throw new Error(`QEMU exited while booting:\n${text.slice(-2000)}`);
    }
    if (Date.now() > deadline) {
      await guest.stop();
      throw new Error(
        `the guest did not come up within ${
          options.bootTimeoutMs ?? 120_000
        } ms:\n${text.slice(-2000)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return guest;
}

const HELP = `guest — boot a small QEMU guest to replicate

Usage:
  deno run -A tools/guest.ts --dir DIR [--mem MIB] [--accel tcg|kvm]

Boots the host's kernel (/boot/vmlinuz-*) with a busybox initramfs whose
/init keeps changing memory. The guest's RAM is DIR/ram (a shared
memory-backend-file) and its QMP socket DIR/qmp.sock; the line printed once it
is up is the --source spec for the primary. Runs until interrupted.

Options:
  --dir DIR        where the socket, RAM file and initramfs go (created)
  --mem MIB        guest RAM in MiB (default 128)
  --accel A        tcg (default) or kvm
  --help           this text
`;

if (import.meta.main) {
  await runMain(HELP, async () => {
    const args = parseArgs(Deno.args, ["dir", "mem", "accel"], ["help"]);
    if (args.options.has("help")) {
      console.log(HELP);
      return;
    }
    const dir = args.options.get("dir")?.at(-1);
    if (!dir) throw new UsageError("--dir is required");
    const memMiB = intOption(
      args.options.get("mem")?.at(-1) ?? "128",
      "mem",
      32,
    );
    const accel = args.options.get("accel")?.at(-1) ?? "tcg";
    if (accel !== "tcg" && accel !== "kvm") {
      throw new UsageError(`--accel ${accel}: expected tcg or kvm`);
    }
    const guest = await startGuest({ dir, memMiB, accel });
    console.log(`guest up: --source "${guest.spec}"`);
    const stop = () => guest.stop().then(() => Deno.exit(0));
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
    await guest.process.status;
  });
}
