/**
 * What a backup needs to start the same machine as a replicated QEMU guest:
 * its QEMU binary and command line, where its RAM file was and the id of its
 * memory backend. The `qemu:` source stores it as a small sized image
 * (`ID.machine`, JSON) beside the RAM (`ID`) and the device state
 * (`ID.state`), so that it is committed, stored and resumed with them.
 *
 * The command line is read from `/proc/PID/cmdline` of the QEMU process,
 * found as the process that holds the listening end of the QMP socket.
 * @module
 */

/** The JSON format tag of a machine image. */
export const MACHINE_FORMAT = "patchwire-qemu-machine/1";

/** The machine image's contents. */
export interface QemuMachine {
  format: typeof MACHINE_FORMAT;
  /** The QEMU binary the guest ran under (`/proc/PID/exe`). */
  binary: string;
  /** Its arguments, after the binary, as given. */
  args: string[];
  /** The RAM file (mem-path of the memory backend), as the primary saw it. */
  memPath: string;
  /** The id of that memory-backend-file object. */
  memBackendId: string;
  /** RAM size in bytes. */
  ramSize: number;
  /** QEMU's version, e.g. "7.2.22". */
  qemuVersion: string;
  /** Netdevs whose output the primary held (`hold=`), for information. */
  held: string[];
}

/** Capacity of the machine image: a command line of up to this many bytes of JSON. */
export const MACHINE_IMAGE_BYTES = 64 << 10;

/**
 * The PID of the process listening on the Unix socket `path`: its inode
 * from `/proc/net/unix`, then the process with that socket among its file
 * descriptors. null if none is found (another network namespace, or no
 * permission).
 */
export function findSocketOwner(path: string): number | null {
  let table: string;
  try {
    table = Deno.readTextFileSync("/proc/net/unix");
  } catch (e) {
    if (e instanceof Deno.errors.NotCapable) throw procPermission(e);
    return null;
  }
  const inodes = new Set<string>();
  for (const line of table.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening
    if (f.length >= 8 && f[7] === path && (parseInt(f[3], 16) & 0x10000)) {
      inodes.add(f[6]);
    }
  }
  if (inodes.size === 0) return null;
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      for (const fd of Deno.readDirSync(`/proc/${e.name}/fd`)) {
        const link = Deno.readLinkSync(`/proc/${e.name}/fd/${fd.name}`);
        const m = /^socket:\[(\d+)\]$/.exec(link);
        if (m && inodes.has(m[1])) return Number(e.name);
      }
    } catch {
      // gone, or not ours to read
    }
  }
  return null;
}

function procPermission(e: Error): Error {
  return new Error(
    `reading QEMU's command line from /proc needs -A (Deno treats /proc as privileged; deno task primary passes it): ${e.message}`,
  );
}

/** The binary and arguments of process `pid`. */
export function readCommandLine(
  pid: number,
): { binary: string; args: string[] } {
  let raw: Uint8Array;
  try {
    raw = Deno.readFileSync(`/proc/${pid}/cmdline`);
  } catch (e) {
    if (e instanceof Deno.errors.NotCapable) throw procPermission(e);
    throw e;
  }
  const parts = new TextDecoder().decode(raw).split("\0");
  if (parts.at(-1) === "") parts.pop();
  let binary = parts[0] ?? "";
  try {
    binary = Deno.readLinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, "");
  } catch {
    // keep argv[0]
  }
  return { binary, args: parts.slice(1) };
}

/** Encodes a machine record as the bytes of its image. */
export function encodeMachine(m: QemuMachine): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(m));
}

/** Decodes a machine image's contents (its first `length` bytes). */
export function decodeMachine(bytes: Uint8Array): QemuMachine {
  let m: QemuMachine;
  try {
    m = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new Error(`not a QEMU machine image: ${(e as Error).message}`);
  }
  if (
    m?.format !== MACHINE_FORMAT || !Array.isArray(m.args) ||
    typeof m.binary !== "string" || typeof m.memBackendId !== "string"
  ) {
    throw new Error(
      `not a QEMU machine image: format ${
        JSON.stringify(m?.format)
      }, expected "${MACHINE_FORMAT}"`,
    );
  }
  return m;
}

/** `key=value` options of one QEMU option argument (`type,key=value,...`), in order. */
export function parseOptionList(text: string): [string, string | null][] {
  // QEMU's option syntax: commas separate, ",," is a literal comma.
  const out: [string, string | null][] = [];
  let cur = "";
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ",") {
      if (text[i + 1] === ",") {
        cur += ",";
        i++;
        continue;
      }
      out.push(splitPair(cur));
      cur = "";
    } else cur += text[i];
  }
  out.push(splitPair(cur));
  return out;
}

function basename(path: string): string {
  return path.split("/").filter(Boolean).at(-1) ?? "socket";
}

function splitPair(s: string): [string, string | null] {
  const eq = s.indexOf("=");
  return eq < 0 ? [s, null] : [s.slice(0, eq), s.slice(eq + 1)];
}

function joinOptionList(list: [string, string | null][]): string {
  return list.map(([k, v]) =>
    (v === null ? k : `${k}=${v}`).replaceAll(",", ",,")
  ).join(",");
}

/** An option's value in a QEMU command line: e.g. every `-netdev`'s argument. */
function optionArgs(args: string[], name: string): number[] {
  const at: number[] = [];
  for (let i = 0; i < args.length - 1; i++) {
    if (args[i] === name || args[i] === `-${name}`) at.push(i + 1);
  }
  return at;
}

/** The ids of every `-netdev` of a command line. */
export function netdevIds(args: string[]): string[] {
  return optionArgs(args, "-netdev").flatMap((i) => {
    const id = parseOptionList(args[i]).find(([k]) => k === "id")?.[1];
    return id ? [id] : [];
  });
}

/**
 * The mem-path of the memory-backend-file `id` in a command line, and where
 * it is; null if the command line has no such object.
 */
export function memoryBackendPath(
  args: string[],
  id: string,
): { path: string; size: string | null } | null {
  for (const i of optionArgs(args, "-object")) {
    const opts = parseOptionList(args[i]);
    const type = opts[0]?.[1] === null
      ? opts[0][0]
      : opts.find(([k]) => k === "qom-type")?.[1];
    if (type !== "memory-backend-file") continue;
    if (opts.find(([k]) => k === "id")?.[1] !== id) continue;
    const path = opts.find(([k]) => k === "mem-path")?.[1];
    if (!path) return null;
    return { path, size: opts.find(([k]) => k === "size")?.[1] ?? null };
  }
  return null;
}

/**
 * The stored command line made ready to resume on this host: the memory
 * backend `memBackendId` on `memPath`, no QMP monitor, pid file or incoming
 * option of the old host (the resume adds its own), no `-daemonize`, the
 * serial console on `stdio` moved to `consolePath`, and the Unix sockets of
 * `-chardev socket,path=…` moved into `socketDir`.
 */
export function rewriteForResume(
  m: QemuMachine,
  memPath: string,
  consolePath: string,
  socketDir?: string,
): string[] {
  const out: string[] = [];
  const args = m.args;
  for (let i = 0; i < args.length; i++) {
    const a = args[i].replace(/^--/, "-");
    const v = args[i + 1];
    if (a === "-qmp" || a === "-incoming" || a === "-pidfile") {
      i++;
      continue;
    }
    if (a === "-daemonize") continue;
    if (a === "-mon" && v !== undefined) {
      // A QMP monitor of the old host: resume adds its own.
      if (
        parseOptionList(v).some(([k, x]) => k === "mode" && x === "control")
      ) {
        i++;
        continue;
      }
    }
    if (a === "-chardev" && v !== undefined && socketDir !== undefined) {
      // A Unix socket of the old host's: the same name in this host's directory.
      const opts = parseOptionList(v);
      if (opts[0]?.[0] === "socket" && opts.some(([k]) => k === "path")) {
        out.push(
          "-chardev",
          joinOptionList(
            opts.map(([k, x]) =>
              k === "path" && x ? [k, `${socketDir}/${basename(x)}`] : [k, x]
            ),
          ),
        );
        i++;
        continue;
      }
    }
    if (a === "-serial" && v === "stdio") {
      out.push("-serial", `file:${consolePath}`);
      i++;
      continue;
    }
    if (a === "-object" && v !== undefined) {
      const opts = parseOptionList(v);
      const isBackend =
        (opts[0]?.[0] === "memory-backend-file" && opts[0][1] === null) &&
        opts.some(([k, x]) => k === "id" && x === m.memBackendId);
      if (isBackend) {
        out.push(
          "-object",
          joinOptionList(
            opts.map(([k, x]) => k === "mem-path" ? [k, memPath] : [k, x]),
          ),
        );
        i++;
        continue;
      }
    }
    out.push(args[i]);
  }
  return out;
}
