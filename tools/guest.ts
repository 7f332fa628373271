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
 * With `net`, the guest also gets a virtio NIC on QEMU user networking
 * (slirp): it is 10.0.2.15/24 and reaches the host's loopback at 10.0.2.2.
 * {@linkcode counterWorkload} is a workload for output-commit tests: a counter
 * in guest RAM, printed on the console and sent to the host over UDP.
 *
 * ```sh
 * deno run -A tools/guest.ts --dir /tmp/vm0 --mem 256 [--accel tcg|kvm]
 * # prints the QMP socket and RAM file, then runs until interrupted
 * deno task primary --source "qemu:/tmp/vm0/qmp.sock?mem=/tmp/vm0/ram" --to tcp://...
 * ```
 *
 * Needs `qemu-system-x86_64`, a kernel in /boot (Debian: linux-image-cloud-amd64),
 * a static busybox (busybox-static) and cpio; with `net`, the kernel's
 * modules in /lib/modules/VERSION (Debian: the same linux-image-VERSION).
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
  /** QEMU's process id. */
  pid: number;
  /**
   * The exact QEMU command line after the binary name
   * (`qemu-system-x86_64 ...args`). The RAM's memory backend id is `m`.
   */
  args: string[];
  /** Serial console output so far (the last 512 KiB to 1 MiB of it). */
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
   * It may use busybox applets. Default {@linkcode DEFAULT_WORKLOAD}, or
   * with `net` {@linkcode counterWorkload}`(net.udpPort)`.
   */
  workload?: string;
  /** How long to wait for the guest to come up. Default 120 s. */
  bootTimeoutMs?: number;
  /**
   * Adds a virtio NIC on QEMU user networking (`-netdev user`): /init loads
   * the kernel's virtio network modules and brings eth0 up as 10.0.2.15/24
   * with a default route via 10.0.2.2, which is the host's loopback, before
   * the workload starts (and before {@linkcode startGuest} resolves).
   * `udpPort` is the host port the workload sends to: without a
   * `workload`, the workload is {@linkcode counterWorkload}`(udpPort)`.
   * Default: no network.
   */
  net?: { udpPort: number };
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

/**
 * A workload for output-commit tests: every ~50 ms it increments a counter
 * (a shell variable, so it lives only in guest RAM and a restored checkpoint
 * continues from it; the first value is 1), prints `count N` on the serial
 * console and sends one UDP datagram with it to 10.0.2.2:`udpPort` (the
 * host's 127.0.0.1:`udpPort`). Needs {@linkcode GuestOptions.net}.
 *
 * The datagrams come from busybox `syslogd -R`, which forwards every message
 * it gets from `logger` as one datagram, as received plus a newline:
 * `<13>Dec  3 10:22:01 pw: count 42\n` (priority user.notice, tag `pw`).
 * tests/_counter_guest.ts parses both outputs.
 */
export function counterWorkload(udpPort: number): string {
  if (!Number.isInteger(udpPort) || udpPort < 1 || udpPort > 65535) {
    throw new RangeError(`counterWorkload: bad UDP port ${udpPort}`);
  }
  return `
syslogd -R 10.0.2.2:${udpPort}
n=0
while [ ! -S /dev/log ]; do
  n=$((n+1))
  if [ $n -gt 500 ]; then echo "patchwire-guest: syslogd did not start"; break; fi
  usleep 10000
done
pwcounter=0
while true; do
  pwcounter=$((pwcounter+1))
  echo "count $pwcounter"
  logger -t pw "count $pwcounter"
  usleep 50000
done`;
}

/**
 * The counter in one datagram of {@linkcode counterWorkload}, e.g.
 * `<13>Dec  3 10:22:01 pw: count 42\n` gives 42; null if there is none.
 */
export function datagramCounter(text: string): number | null {
  const m = text.match(/\bcount (\d+)\s*$/);
  return m ? Number(m[1]) : null;
}

/** The counters in the serial console output of {@linkcode counterWorkload}: every whole `count N` line, in order. */
export function consoleCounters(text: string): number[] {
  return [...text.matchAll(/^count (\d+)\r?\n/gm)].map((m) => Number(m[1]));
}

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

/** A kernel module for the initramfs. */
export interface KernelModule {
  /** Its name as the kernel knows it, e.g. `virtio_net`. */
  name: string;
  /** Its file on the host (`.ko`, or `.ko.xz`, `.ko.gz`, `.ko.zst`). */
  path: string;
}

/** What the guest's NIC needs: virtio PCI transport and virtio-net. */
const NET_MODULES = ["virtio_pci", "virtio_net"];

/** The release of a kernel image path: `/boot/vmlinuz-6.1.0-9-amd64` -> `6.1.0-9-amd64`. */
export function kernelRelease(kernel: string): string {
  const base = kernel.slice(kernel.lastIndexOf("/") + 1);
  if (!base.startsWith("vmlinuz-") || base.length === "vmlinuz-".length) {
    throw new Error(
      `cannot tell the kernel release of ${kernel} (expected .../vmlinuz-RELEASE)`,
    );
  }
  return base.slice("vmlinuz-".length);
}

function moduleName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1).replace(/\.ko(\.\w+)?$/, "")
    .replaceAll("-", "_");
}

/**
 * The modules the guest's virtio NIC needs with `kernel`, dependencies
 * first (the order to insmod them), from /lib/modules/RELEASE/modules.dep.
 * Modules built into the kernel (modules.builtin) are left out.
 */
export function netModules(
  kernel: string,
  modulesDir = "/lib/modules",
): KernelModule[] {
  const release = kernelRelease(kernel);
  const base = `${modulesDir}/${release}`;
  const pkg = `apt-get install linux-image-${release}`;
  let depText: string;
  try {
    depText = Deno.readTextFileSync(`${base}/modules.dep`);
  } catch (e) {
    throw new Error(
      `the guest's network needs the modules of kernel ${release}, but ${base}/modules.dep cannot be read (${pkg}): ${
        (e as Error).message
      }`,
    );
  }
  let builtin = "";
  try {
    builtin = Deno.readTextFileSync(`${base}/modules.builtin`);
  } catch {
    // none built in, or not listed
  }
  const builtins = new Set(
    builtin.split("\n").filter((l) => l).map(moduleName),
  );
  const deps = new Map<string, { path: string; deps: string[] }>();
  for (const line of depText.split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const path = line.slice(0, colon).trim();
    const list = line.slice(colon + 1).trim().split(/\s+/).filter((d) => d);
    deps.set(moduleName(path), { path, deps: list.map(moduleName) });
  }
  const order: KernelModule[] = [];
  const seen = new Set<string>();
  const visit = (name: string, from: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    const entry = deps.get(name);
    if (!entry) {
      if (builtins.has(name)) return;
      throw new Error(
        `the guest's network needs kernel module ${name}${
          from ? ` (for ${from})` : ""
        }, which is neither in ${base}/modules.dep nor built into kernel ${release} (${pkg})`,
      );
    }
    // modules.dep lists every dependency, the deepest last
    for (const d of [...entry.deps].reverse()) visit(d, name);
    const path = entry.path.startsWith("/")
      ? entry.path
      : `${base}/${entry.path}`;
    try {
      Deno.statSync(path);
    } catch {
      throw new Error(
        `kernel module ${name} is listed in ${base}/modules.dep but ${path} is missing (${pkg})`,
      );
    }
    order.push({ name, path });
  };
  for (const name of NET_MODULES) visit(name, "");
  return order;
}

/** Copies a module into `dest` as a plain `.ko`, decompressing it if needed. */
async function copyModule(m: KernelModule, dest: string): Promise<void> {
  const tool = m.path.endsWith(".xz")
    ? ["/bin/busybox", "xzcat"]
    : m.path.endsWith(".gz")
    ? ["/bin/busybox", "zcat"]
    : m.path.endsWith(".zst")
    ? ["zstd", "-dcq"]
    : null;
  if (!tool) return await Deno.copyFile(m.path, dest);
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(tool[0], {
      args: [...tool.slice(1), m.path],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new Error(
      `cannot decompress ${m.path}: cannot run ${tool[0]}${
        tool[0] === "zstd" ? " (apt-get install zstd)" : ""
      }: ${(e as Error).message}`,
    );
  }
  if (!out.success) {
    throw new Error(
      `cannot decompress ${m.path}: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  await Deno.writeFile(dest, out.stdout);
}

/** /init lines that load `modules` and bring eth0 up, or print why not. */
function netSetup(modules: KernelModule[]): string {
  const fail = "patchwire-guest: network setup failed:";
  return `
net_ok=1
for m in ${modules.map((m) => m.name).join(" ")}; do
  insmod /lib/modules/$m.ko || { echo "${fail} insmod $m"; net_ok=0; }
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 200 ]; do
  n=$((n+1))
  usleep 25000
done
ip link set lo up
if [ $net_ok = 1 ]; then
  if [ ! -e /sys/class/net/eth0 ]; then
    echo "${fail} no eth0"; net_ok=0
  elif ! ip link set eth0 up || ! ip addr add 10.0.2.15/24 dev eth0 ||
    ! ip route add default via 10.0.2.2; then
    echo "${fail} ip"; net_ok=0
  fi
fi
# never "ready" without the network: startGuest reports the line above
if [ $net_ok = 0 ]; then while true; do sleep 3600; done; fi`;
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

/**
 * Builds `DIR/initramfs.gz`: busybox and an /init that runs `workload`.
 * With `netModules` (see {@linkcode netModules}), /init first loads them and
 * configures eth0 (10.0.2.15/24, default route via 10.0.2.2).
 */
export async function buildInitramfs(
  dir: string,
  workload = DEFAULT_WORKLOAD,
  netModules?: KernelModule[],
): Promise<string> {
  const root = `${dir}/initramfs`;
  await Deno.remove(root, { recursive: true }).catch(() => {});
  for (const d of ["bin", "proc", "sys", "dev", "tmp", "lib/modules"]) {
    await Deno.mkdir(`${root}/${d}`, { recursive: true });
  }
  for (const m of netModules ?? []) {
    await copyModule(m, `${root}/lib/modules/${m.name}.ko`);
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
${netModules ? netSetup(netModules) : ""}
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
  const net = options.net;
  if (
    net &&
    (!Number.isInteger(net.udpPort) || net.udpPort < 1 ||
      net.udpPort > 65535)
  ) {
    throw new RangeError(`startGuest: bad net.udpPort ${net.udpPort}`);
  }
  const initrd = await buildInitramfs(
    dir,
    options.workload ?? (net ? counterWorkload(net.udpPort) : undefined),
    net ? netModules(kernel) : undefined,
  );
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
  if (net) {
    // romfile= : no option ROM, so no PXE firmware file is needed
    args.push(
      "-netdev",
      "user,id=n0",
      "-device",
      "virtio-net-pci,netdev=n0,romfile=",
    );
  }
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
    pid: process.pid,
    args,
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
    const netFailed = text.match(/patchwire-guest: network setup failed:.*/);
    if (netFailed) {
      await guest.stop();
      throw new Error(
        `the guest's network did not come up (${netFailed[0]}):\n${
          text.slice(-2000)
        }`,
      );
    }
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
  deno run -A tools/guest.ts --dir DIR [--mem MIB] [--accel tcg|kvm] [--udp PORT]

Boots the host's kernel (/boot/vmlinuz-*) with a busybox initramfs whose
/init keeps changing memory. The guest's RAM is DIR/ram (a shared
memory-backend-file) and its QMP socket DIR/qmp.sock; the line printed once it
is up is the --source spec for the primary. Runs until interrupted.

Options:
  --dir DIR        where the socket, RAM file and initramfs go (created)
  --mem MIB        guest RAM in MiB (default 128)
  --accel A        tcg (default) or kvm
  --udp PORT       add a NIC (QEMU user networking) and run the counter
                   workload instead: "count N" on the console and one UDP
                   datagram per count to the host's 127.0.0.1:PORT
  --help           this text
`;

if (import.meta.main) {
  await runMain(HELP, async () => {
    const args = parseArgs(Deno.args, ["dir", "mem", "accel", "udp"], [
      "help",
    ]);
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
    const udp = args.options.get("udp")?.at(-1);
    const net = udp === undefined
      ? undefined
      : { udpPort: intOption(udp, "udp", 1) };
    if (net && net.udpPort > 65535) {
      throw new UsageError(`--udp ${udp}: expected a port, 1 to 65535`);
    }
    const guest = await startGuest({ dir, memMiB, accel, net });
    console.log(`guest up: --source "${guest.spec}"`);
    const stop = () => guest.stop().then(() => Deno.exit(0));
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
    await guest.process.status;
  });
}
