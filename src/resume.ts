/**
 * Resume: turns a backup store's last committed checkpoint of a QEMU guest
 * back into a running guest. The checkpoint's RAM goes into the memory
 * file of the QEMU command, QEMU starts with `-incoming defer`, loads the
 * checkpoint's device state (`qemu_device_state.ts`) and is `cont`ed: the
 * guest goes on from the instant of that checkpoint.
 *
 * The store is only read (under its lock, so no backup role can change it
 * meanwhile); a QEMU that refuses the state is killed and its reason
 * reported.
 *
 * @example
 * ```ts ignore
 * import { resumeGuest } from "./resume.ts";
 * const r = await resumeGuest({ store: "/var/lib/patchwire/vm0" });
 * console.log(`guest of epoch ${r.epoch} runs as pid ${r.pid}, QMP ${r.qmp}`);
 * ```
 * @module
 */

import { BackupStore, type StoredImage, StoreError } from "./backup_store.ts";
import { QmpClient } from "./qmp.ts";
import { ignoreSharedRam, loadDeviceState } from "./qemu_device_state.ts";
import {
  decodeMachine,
  memoryBackendPath,
  type QemuMachine,
  rewriteForResume,
} from "./qemu_machine.ts";

/** Options of {@linkcode resumeGuest}. */
export interface ResumeOptions {
  /** The backup store's directory, or the open store (a backup being promoted). */
  store: string | BackupStore;
  /** Refuse unless the store's checkpoint is this epoch. */
  epoch?: number;
  /** The guest's RAM image id, where the store holds several guests. */
  image?: string;
  /**
   * The QEMU command (binary first; or only arguments, and the stored binary
   * is used), passed as given. Default: the stored command line, rewritten
   * for this host.
   */
  command?: string[];
  /** Where the QMP socket of the resumed QEMU goes. Default `DIR/qmp.sock`. */
  qmp?: string;
  /** Directory for sockets, logs and (with the stored command) the RAM file. Default: a new temporary directory. */
  dir?: string;
  /** With the stored command: the RAM file to use. Default `DIR/ram`. */
  mem?: string;
  /** QMP and migration time limit, ms. Default 30000. */
  timeoutMs?: number;
}

/** A resumed guest. */
export interface ResumedGuest {
  epoch: number;
  /** The guest's RAM image id. */
  image: string;
  pid: number;
  qmp: string;
  /** The RAM file QEMU runs on. */
  mem: string;
  /** QEMU's standard output and error. */
  log: string;
  /** The command QEMU was started with (binary first). */
  command: string[];
  /** The `qemu:` source spec that protects the resumed guest in turn. */
  spec: string;
  times: {
    ramCopyMs: number;
    startMs: number;
    loadMs: number;
    totalMs: number;
  };
  /** The checkpoint's machine record. */
  machine: QemuMachine;
}

/** Why a resume could not be done; nothing was changed. */
export class ResumeError extends Error {
  override name = "ResumeError";
}

/** The store's checkpoint of one guest: its three images. */
interface GuestImages {
  ram: StoredImage & { slot: number };
  state: StoredImage & { slot: number };
  machine: StoredImage & { slot: number };
}

/**
 * True if a store's images include a guest that can be resumed: a RAM
 * image `ID` with its device state `ID.state` and machine `ID.machine`
 * beside it (a `qemu:` primary's checkpoints). An elected backup resumes it.
 */
export function holdsGuest(images: { id: string }[]): boolean {
  const ids = new Set(images.map((i) => i.id));
  return images.some((i) =>
    ids.has(`${i.id}.state`) && ids.has(`${i.id}.machine`)
  );
}

function findGuest(
  images: StoredImage[],
  want: string | undefined,
  dir: string,
): GuestImages {
  const slotted = images.map((i, slot) => ({ ...i, slot }));
  const byId = new Map(slotted.map((i) => [i.id, i]));
  const guests = slotted.filter((i) =>
    byId.has(`${i.id}.state`) && byId.has(`${i.id}.machine`)
  );
  if (want !== undefined) {
    const g = guests.find((i) => i.id === want);
    if (!g) {
      throw new ResumeError(
        byId.has(want)
          ? `store ${dir}: image "${want}" has no device state (${want}.state) and machine (${want}.machine) beside it: its primary ran with state=off or before checkpoints held them, so it is RAM alone and cannot be resumed`
          : `store ${dir} has no image "${want}"; it holds ${
            images.map((i) => i.id).join(", ") || "none"
          }`,
      );
    }
    return {
      ram: g,
      state: byId.get(`${g.id}.state`)!,
      machine: byId.get(`${g.id}.machine`)!,
    };
  }
  if (guests.length === 0) {
    throw new ResumeError(
      `store ${dir} holds no guest that can be resumed: its images (${
        images.map((i) => i.id).join(", ") || "none"
      }) include no device state (ID.state) with a machine (ID.machine). A checkpoint of RAM alone (qemu: with state=off, or an older primary) cannot be resumed: QEMU needs the CPU and device state of the same instant`,
    );
  }
  if (guests.length > 1) {
    throw new ResumeError(
      `store ${dir} holds ${guests.length} guests (${
        guests.map((g) => g.id).join(", ")
      }): give --image ID`,
    );
  }
  const g = guests[0];
  return {
    ram: g,
    state: byId.get(`${g.id}.state`)!,
    machine: byId.get(`${g.id}.machine`)!,
  };
}

/**
 * Resumes the guest of a store's last committed checkpoint; see the module
 * doc. Throws a {@linkcode ResumeError} (or the QEMU's own message) if it
 * cannot, with the store unchanged and no QEMU left running.
 */
export async function resumeGuest(
  options: ResumeOptions,
): Promise<ResumedGuest> {
  const t0 = performance.now();
  const timeoutMs = options.timeoutMs ?? 30_000;
  let store: BackupStore;
  const owned = typeof options.store === "string";
  if (typeof options.store === "string") {
    try {
      Deno.statSync(`${options.store}/state.json`);
    } catch {
      throw new ResumeError(
        `${options.store} is not a backup store (it has no state.json): give the --store of a backup`,
      );
    }
    try {
      store = BackupStore.open(options.store);
    } catch (e) {
      if (e instanceof StoreError && /already open/.test(e.message)) {
        throw new ResumeError(
          `store ${options.store} is in use by a running backup role: stop it, or promote it (POST /promote with "resume"), before resuming from its store`,
        );
      }
      throw new ResumeError((e as Error).message);
    }
  } else store = options.store;
  const dirName = store.dir;
  let child: Deno.ChildProcess | null = null;
  let qmp: QmpClient | null = null;
  let madeDir: string | null = null;
  try {
    const state = store.state;
    if (!state) {
      throw new ResumeError(
        `store ${dirName} is empty: no checkpoint to resume`,
      );
    }
    if (options.epoch !== undefined && options.epoch !== state.epoch) {
      throw new ResumeError(
        `store ${dirName} holds epoch ${state.epoch}, not ${options.epoch}: a store keeps only its last committed checkpoint`,
      );
    }
    const g = findGuest(state.images, options.image, dirName);
    const read = (im: StoredImage & { slot: number }) => {
      const bytes = new Uint8Array(im.size);
      store.readImage(im.slot, bytes);
      return bytes.subarray(0, im.length ?? im.size);
    };
    const deviceState = read(g.state);
    if (deviceState.length === 0) {
      throw new ResumeError(
        `store ${dirName}: the device state of "${g.ram.id}" at epoch ${state.epoch} is empty`,
      );
    }
    const machine = decodeMachine(read(g.machine));
    const dir = options.dir ??
      (madeDir = await Deno.makeTempDir({ prefix: "patchwire-resume-" }));
    await Deno.mkdir(dir, { recursive: true });
    const log = `${dir}/qemu.log`;
    let binary = machine.binary;
    let args: string[];
    if (options.command && options.command.length) {
      const c = options.command;
      if (c[0].startsWith("-")) args = c;
      else {
        binary = c[0];
        args = c.slice(1);
      }
    } else {
      args = rewriteForResume(
        machine,
        options.mem ?? `${dir}/ram`,
        `${dir}/console.log`,
        dir,
      );
    }
    const backend = memoryBackendPath(args, machine.memBackendId);
    if (!backend) {
      throw new ResumeError(
        `the QEMU command has no -object memory-backend-file,id=${machine.memBackendId},mem-path=PATH: the checkpoint's RAM belongs to that backend, so the command must name it (with share=on and size ${machine.ramSize})`,
      );
    }
    if (args.some((a) => a === "-incoming" || a === "--incoming")) {
      throw new ResumeError(
        "the QEMU command already has -incoming: resume adds -incoming defer itself",
      );
    }
    const qmpPath = options.qmp ?? `${dir}/qmp.sock`;
    await Deno.remove(qmpPath).catch(() => {});
    const incoming = `${dir}/incoming.sock`;
    await Deno.remove(incoming).catch(() => {});

    // RAM: the checkpoint's image file, copied whole into the backend's file.
    const tRam = performance.now();
    const ramFile = `${dirName}/${g.ram.id}.img`;
    await Deno.copyFile(ramFile, backend.path);
    const ramCopyMs = performance.now() - tRam;
    if (owned) store.close();

    const tStart = performance.now();
    const command = [
      binary,
      ...args,
      "-qmp",
      `unix:${qmpPath},server=on,wait=off`,
      "-incoming",
      "defer",
    ];
    try {
      // Through sh: QEMU's output goes to a file that outlives this process.
      child = new Deno.Command("sh", {
        args: ["-c", 'exec "$@" >"$PATCHWIRE_LOG" 2>&1', "sh", ...command],
        env: { PATCHWIRE_LOG: log },
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
    } catch (e) {
      throw new ResumeError(`cannot start ${binary}: ${(e as Error).message}`);
    }
    let exited: Deno.CommandStatus | null = null;
    child.status.then((s) => exited = s);
    const qemuSaid = () => {
      try {
        return Deno.readTextFileSync(log).trim().split("\n").slice(-8).join(
          "\n",
        );
      } catch {
        return "";
      }
    };
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (exited) {
        throw new ResumeError(
          `QEMU exited (code ${
            (exited as Deno.CommandStatus).code
          }) before its QMP socket was up: ${qemuSaid() || "no output"}`,
        );
      }
      try {
        qmp = await QmpClient.connect(qmpPath, 2000);
        break;
      } catch {
        if (performance.now() > deadline) {
          throw new ResumeError(
            `QEMU's QMP socket ${qmpPath} did not come up: ${qemuSaid()}`,
          );
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    const startMs = performance.now() - tStart;
    const tLoad = performance.now();
    try {
      await ignoreSharedRam(qmp);
      await loadDeviceState(qmp, incoming, deviceState, timeoutMs);
    } catch (e) {
      // Give QEMU a moment to print why it refused, then report it.
      await Promise.race([
        child.status,
        new Promise((r) => setTimeout(r, 200)),
      ]);
      throw new ResumeError(
        `QEMU refused the checkpoint's device state: ${(e as Error).message}${
          qemuSaid() ? `\nQEMU said: ${qemuSaid()}` : ""
        }`,
      );
    }
    await qmp.execute("cont");
    const loadMs = performance.now() - tLoad;
    qmp.close();
    child.unref();
    const pid = child.pid;
    return {
      epoch: state.epoch,
      image: g.ram.id,
      pid,
      qmp: qmpPath,
      mem: backend.path,
      log,
      command,
      spec:
        `qemu:${qmpPath}?mem=${backend.path}&id=${g.ram.id}&state-size=${g.state.size}`,
      times: {
        ramCopyMs,
        startMs,
        loadMs,
        totalMs: performance.now() - t0,
      },
      machine,
    };
  } catch (e) {
    qmp?.close();
    if (child) {
      try {
        child.kill("SIGKILL");
      } catch {
        // gone
      }
      await child.status.catch(() => {});
    }
    if (madeDir) {
      await Deno.remove(madeDir, { recursive: true }).catch(() => {});
    }
    throw e;
  } finally {
    if (owned) {
      try {
        store.close();
      } catch {
        // closed above
      }
    }
  }
}

/** What a primary starts from to continue a store's checkpoint: see {@linkcode checkpointSeed}. */
export interface CheckpointSeed {
  epoch: number;
  contents: Uint8Array[];
  lengths: number[];
}

/**
 * The checkpoint in store `dir` as the starting point of a primary whose
 * source has `images` (the host that resumed a guest protecting it in
 * turn): backups that hold the same checkpoint then continue from it
 * incrementally, without a base sync. The source's images must be the
 * store's, by id and size, in order; the message names the first that is
 * not.
 */
export function checkpointSeed(
  store: string | BackupStore,
  images: { id: string; size: number }[],
): CheckpointSeed {
  let s: BackupStore;
  try {
    s = typeof store === "string" ? BackupStore.open(store) : store;
  } catch (e) {
    if (e instanceof StoreError && /already open/.test(e.message)) {
      throw new ResumeError(
        `store ${store} is in use by a running backup role: stop it first (or promote it with "resume")`,
      );
    }
    throw e;
  }
  try {
    const state = s.state;
    if (!state) throw new ResumeError(`store ${s.dir} is empty`);
    const have = state.images.map((i) => `${i.id} (${i.size} bytes)`);
    const want = images.map((i) => `${i.id} (${i.size} bytes)`);
    if (have.join() !== want.join()) {
      throw new ResumeError(
        `--from-store ${s.dir}: its checkpoint holds ${
          have.join(", ")
        }; the sources give ${
          want.join(", ")
        }. Give the sources the resume printed (the same image ids and sizes)`,
      );
    }
    return {
      epoch: state.epoch,
      contents: state.images.map((im, slot) => {
        const bytes = new Uint8Array(im.size);
        s.readImage(slot, bytes);
        return bytes;
      }),
      lengths: state.images.map((im) => im.length ?? im.size),
    };
  } finally {
    if (typeof store === "string") s.close();
  }
}
