/**
 * `qemu:QMP_SOCKET?mem=PATH`: a live QEMU guest, captured whole.
 *
 * QEMU must run with its RAM in a file it shares, and a QMP socket:
 *
 * ```text
 * -object memory-backend-file,id=m,size=256M,mem-path=PATH,share=on
 * -machine memory-backend=m -qmp unix:QMP_SOCKET,server,nowait
 * ```
 *
 * Each checkpoint is one stop window (QMP `stop` … `cont`) in which the
 * source copies the guest's RAM and, at the same time, has QEMU save the
 * CPU and device state (`qemu_device_state.ts`), so the three images of a
 * checkpoint are of one instant and are committed as one epoch:
 *
 * - `ID` — the RAM (the shared file's contents);
 * - `ID.state` — the device state, a sized image: its length changes between
 *   checkpoints and is committed with each;
 * - `ID.machine` — what a backup needs to start the same machine: the QEMU
 *   binary and command line (`qemu_machine.ts`), a sized image.
 *
 * Hashing, matching and encoding run after `cont`, on the copies. A guest its
 * operator paused is captured and left paused (the pause is then 0: we
 * caused none). With `hold=`, the guest's network output of each epoch is
 * held until that epoch is committed (`qemu_output_hold.ts`).
 *
 * Options after `?`: `mem=PATH` (required), `id=NAME` (the image id;
 * default the RAM file's name), `timeout=MS` (QMP replies; default 5000),
 * `state=on|off` (off: RAM only, as before, and such checkpoints cannot be
 * resumed), `state-size=SIZE` (capacity of the device-state image; default
 * four times the first save, rounded up to a power of two, at least 4 MiB),
 * `hold=NETDEV[,NETDEV…]|all`, `pid=PID` (the QEMU process, where it cannot
 * be found through the QMP socket).
 * @module
 */

import { QmpClient, QmpError } from "./qmp.ts";
import { mapFile, type MappedFile } from "./_mmap.ts";
import type { ImageSpec } from "./encoder.ts";
import {
  type CaptureResult,
  checkInto,
  imageIdFor,
  parseSourceSpec,
  type Source,
  SourceError,
} from "./source.ts";
import { readFileInto } from "./_read_file.ts";
import {
  checkNotMigrating,
  DeviceStateChannel,
  ignoreSharedRam,
} from "./qemu_device_state.ts";
import {
  encodeMachine,
  findSocketOwner,
  MACHINE_FORMAT,
  MACHINE_IMAGE_BYTES,
  netdevIds,
  type QemuMachine,
  readCommandLine,
} from "./qemu_machine.ts";
import { OutputHold } from "./qemu_output_hold.ts";
import { parseSize } from "./synthetic.ts";
/** Run states in which the guest's RAM is a consistent image to capture. */
const CAPTURABLE = new Set([
  "running",
  "paused",
  "suspended",
  "prelaunch",
  "debug",
  "io-error",
  "watchdog",
  "save-vm",
  "restore-vm",
  "finish-migrate",
  "postmigrate",
]);

/** Smallest default capacity of the device-state image. */
const MIN_STATE_BYTES = 4 << 20;

/** The images of a guest captured whole: RAM, device state, machine. */
export function qemuImageIds(id: string): {
  ram: string;
  state: string;
  machine: string;
} {
  return { ram: id, state: `${id}.state`, machine: `${id}.machine` };
}

/** A live QEMU guest, captured with stop / copy RAM + save device state / cont. */
export class QemuSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  readonly held?: OutputHold;
  readonly notice?: string;
  readonly #qmp: QmpClient;
  readonly #mem: string;
  readonly #map: MappedFile | null;
  readonly #channel: DeviceStateChannel | null;
  readonly #machine: Uint8Array | null;
  readonly #timeoutMs: number;
  #stateLength = 0;
  /** A device state of ours is in the capture buffer. */
  #saved = false;
  /** The state saved at open, while the guest has not run since. */
  #opened: Uint8Array | null = null;
  #closed = false;

  private constructor(
    spec: string,
    qmp: QmpClient,
    mem: string,
    images: ImageSpec[],
    map: MappedFile | null,
    timeoutMs: number,
    channel: DeviceStateChannel | null,
    machine: Uint8Array | null,
    held: OutputHold | null,
    opened: Uint8Array | null = null,
  ) {
    this.name = spec;
    this.#qmp = qmp;
    this.#mem = mem;
    this.images = images;
    this.#map = map;
    this.#timeoutMs = timeoutMs;
    this.#channel = channel;
    this.#machine = machine;
    if (held) this.held = held;
    this.#opened = opened;
    if (!channel) {
      this.notice =
        `${spec}: state=off: RAM only, without the CPU and device state — these checkpoints cannot be resumed`;
    }
  }

  /**
   * Opens the guest: connects to QMP, checks that the guest is alive, that
   * PATH is the shared file of its one memory backend, and (with the device
   * state) that x-ignore-shared works and no migration is under way; reads
   * its command line; saves its device state once to size that image; with
   * `hold=`, installs the output buffers. The guest is paused for that one
   * save (a few ms).
   */
  static async open(
    spec: string,
    options: {
      /** The QEMU command (binary first), when the caller started QEMU itself: /proc is then not read. */
      command?: string[];
    } = {},
  ): Promise<QemuSource> {
    const { target: socket, params, fail } = parseSourceSpec(spec, {
      mem: "PATH",
      id: "NAME",
      timeout: "MS",
      state: "on|off",
      "state-size": "SIZE",
      hold: "NETDEV[,NETDEV...]|all",
      pid: "PID",
    });
    if (!socket) fail("expected qemu:QMP_SOCKET?mem=PATH");
    const mem = params.get("mem");
    if (!mem) {
      fail(
        "mem=PATH is missing: expected the file QEMU's memory-backend-file uses (mem-path=PATH,share=on)",
      );
    }
    const timeoutMs = Number(params.get("timeout") ?? 5000);
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      fail(`timeout=${params.get("timeout")}: expected milliseconds`);
    }
    const stateMode = params.get("state") ?? "on";
    if (stateMode !== "on" && stateMode !== "off") {
      fail(`state=${stateMode}: expected on or off`);
    }
    const withState = stateMode === "on";
    let stateSize: number | null = null;
    if (params.has("state-size")) {
      if (!withState) fail("state-size= needs state=on");
      try {
        stateSize = parseSize(params.get("state-size")!, "state-size");
      } catch (e) {
        fail((e as Error).message);
      }
      if (stateSize! < 4096) fail("state-size= must be at least 4K");
    }
    const holdSpec = params.get("hold");
    if (holdSpec !== null && !withState) {
      fail(
        "hold= needs state=on: checkpoints without the device state cannot be resumed, so holding output for them protects nothing",
      );
    }
    const pidParam = params.get("pid");
    if (pidParam !== null && !/^\d+$/.test(pidParam)) {
      fail(`pid=${pidParam}: expected a process id`);
    }
    let real: string;
    let size: number;
    try {
      real = Deno.realPathSync(mem!);
      const info = Deno.statSync(real);
      if (!info.isFile) fail(`mem=${mem} is not a file`);
      size = info.size;
    } catch (e) {
      if (e instanceof SourceError) throw e;
      return fail(`mem=${mem}: ${(e as Error).message}`);
    }
    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(socket, timeoutMs);
    } catch (e) {
      return fail((e as Error).message);
    }
    let channel: DeviceStateChannel | null = null;
    let held: OutputHold | null = null;
    let stopped = false;
    try {
      const status = await qmp.status();
      if (!CAPTURABLE.has(status.status)) {
        fail(
          `the guest is in state "${status.status}"; expected running or paused`,
        );
      }
      const backends = await memoryBackends(qmp);
      const mine = backends.find((b) => b.path === real);
      if (!mine) {
        fail(
          `mem=${mem} is not this guest's RAM: its memory-backend-file paths are ${
            backends.length
              ? backends.map((b) => b.path).join(", ")
              : "none (start QEMU with -object memory-backend-file,...,share=on)"
          }`,
        );
      }
      if (!mine!.share) {
        fail(
          `the memory backend of ${mem} has share=off: QEMU keeps the guest's RAM private${
            withState
              ? " and would put all of it into every device-state save"
              : ""
          }; expected share=on`,
        );
      }
      if (mine!.size !== size) {
        fail(`mem=${mem} is ${size} bytes, the backend ${mine!.size}`);
      }
      const id = params.get("id") ?? imageIdFor(real);
      const ram: ImageSpec = { id, size };
      if (!withState) {
        return new QemuSource(
          spec,
          qmp,
          real,
          [ram],
          mapFile(real, size, { readOnly: true }),
          timeoutMs,
          null,
          null,
          null,
        );
      }
      // Whole-guest checkpoints: every byte of RAM must be in the one file we copy.
      const main = await qmp.execute<string>("qom-get", {
        path: "/machine",
        property: "memory-backend",
      }).catch(() => "");
      if (main !== `/objects/${mine!.id}`) {
        fail(
          `the guest's RAM is not the backend of mem=${mem} (the machine's memory-backend is ${
            JSON.stringify(main)
          }): start QEMU with -machine memory-backend=${
            mine!.id
          }, or give state=off`,
        );
      }
      const others = backends.filter((b) => b !== mine);
      if (others.length) {
        fail(
          `the guest has more memory backends than mem=${mem} (${
            others.map((b) => b.id).join(", ")
          }): only one is captured, so its checkpoints could not be resumed; give state=off for RAM-only checkpoints`,
        );
      }
      await checkNotMigrating(qmp, spec);
      await ignoreSharedRam(qmp);
      let cmd: { binary: string; args: string[] };
      if (options.command) {
        cmd = { binary: options.command[0], args: options.command.slice(1) };
      } else {
        const pid = pidParam !== null
          ? Number(pidParam)
          : findSocketOwner(Deno.realPathSync(socket));
        if (pid === null) {
          fail(
            `cannot find the QEMU process behind ${socket} to read its command line (another namespace?): give pid=PID`,
          );
        }
        try {
          cmd = readCommandLine(pid!);
        } catch (e) {
          return fail(
            `cannot read the command line of QEMU (pid ${pid}): ${
              (e as Error).message
            }`,
          );
        }
      }
      let holdIds: string[] = [];
      if (holdSpec !== null) {
        holdIds = holdSpec === "all"
          ? netdevIds(cmd.args)
          : holdSpec.split(",").filter(Boolean);
        if (holdIds.length === 0) {
          fail(
            holdSpec === "all"
              ? "hold=all: the guest has no -netdev, so there is no output to hold"
              : "hold= names no netdev; expected hold=NETDEV[,NETDEV...] or hold=all",
          );
        }
      }
      const machine: QemuMachine = {
        format: MACHINE_FORMAT,
        binary: cmd.binary,
        args: cmd.args,
        memPath: real,
        memBackendId: mine!.id,
        ramSize: size,
        qemuVersion: qmp.version,
        held: holdIds,
      };
      const machineBytes = encodeMachine(machine);
      if (machineBytes.length > MACHINE_IMAGE_BYTES) {
        fail(
          `the QEMU command line takes ${machineBytes.length} bytes, more than the ${MACHINE_IMAGE_BYTES} a checkpoint stores`,
        );
      }
      // One save now, with the guest stopped: it proves the state can be
      // saved and sizes its image. The output hold starts in the same stop.
      channel = await DeviceStateChannel.open();
      if (status.running) {
        await qmp.execute("stop");
        stopped = true;
      }
      const probe = new Uint8Array(stateSize ?? 256 << 20);
      const first = await channel.save(
        qmp,
        probe,
        timeoutMs,
        (n) =>
          stateSize !== null
            ? `the device state is ${n} bytes, more than state-size=${stateSize}: give a larger state-size=`
            : `the device state is ${n} bytes: is the guest's RAM really in mem=${mem}?`,
      );
      if (holdIds.length) held = await OutputHold.open(qmp, holdIds);
      if (stopped) {
        await qmp.execute("cont");
        stopped = false;
      }
      const capacity = stateSize ?? Math.max(MIN_STATE_BYTES, pow2(first * 4));
      const ids = qemuImageIds(id);
      return new QemuSource(
        spec,
        qmp,
        real,
        [
          ram,
          { id: ids.state, size: capacity, sized: true },
          { id: ids.machine, size: MACHINE_IMAGE_BYTES, sized: true },
        ],
        mapFile(real, size, { readOnly: true }),
        timeoutMs,
        channel,
        machineBytes,
        held,
        status.running ? null : probe.slice(0, first),
      );
    } catch (e) {
      if (held) await held.close();
      if (stopped) await qmp.execute("cont").catch(() => {});
      channel?.close();
      qmp.close();
      if (e instanceof SourceError) throw e;
      return fail((e as Error).message);
    }
  }

  /**
   * Pauses the guest if it runs; copies its RAM while QEMU saves its device
   * state; with `hold=`, starts the next epoch's output buffer; resumes it.
   * Fails (and captures nothing) if the guest exited or QMP fails; a guest
   * this call paused is resumed, except when its output could not be held
   * from here on: then it is left paused, since running it would send
   * packets no commit guards.
   */
  async capture(into: Uint8Array[], epoch?: number): Promise<CaptureResult> {
    checkInto(this.images, into);
    if (this.#closed) throw new SourceError(`${this.name}: closed`);
    const buf = into[0];
    let pausedAt = -1;
    let keepPaused = false;
    try {
      const status = await this.#qmp.status();
      if (!CAPTURABLE.has(status.status)) {
        throw new SourceError(
          `${this.name}: the guest is in state "${status.status}"; nothing captured`,
        );
      }
      if (status.running) {
        pausedAt = performance.now();
        await this.#qmp.execute("stop");
      }
      // A guest still in postmigrate has not run since our last save (a
      // `cont` would have left that state), and QEMU refuses to migrate it
      // again: its device state is the one already in `into[1]`.
      if (status.status === "postmigrate" && this.#opened && !this.#saved) {
        // Stopped since the save at open: that is its state.
        into[1].fill(0, 0, this.#stateLength);
        into[1].set(this.#opened);
        this.#stateLength = this.#opened.length;
        this.#saved = true;
      }
      this.#opened = null;
      const unchanged = status.status === "postmigrate" && this.#saved;
      if (status.status === "postmigrate" && this.#channel && !this.#saved) {
        throw new SourceError(
          `${this.name}: the guest is stopped after a migration that was not ours (state "postmigrate"); QEMU cannot save its device state again until it runs: cont it first`,
        );
      }
      // The next epoch's output buffer is added first (QMP runs commands in
      // order): it and the device-state save then both overlap the RAM copy.
      const holding = this.held?.checkpoint(epoch ?? 0);
      holding?.catch(() => {});
      const saving = unchanged
        ? Promise.resolve(this.#stateLength)
        : this.#channel?.save(
          this.#qmp,
          into[1],
          this.#timeoutMs,
          (n) =>
            `${this.name}: the device state grew to ${n} bytes, more than its ${
              into[1].length
            }-byte image: restart the primary with state-size= of at least ${
              pow2(n * 2)
            }`,
        );
      saving?.catch(() => {});
      let copyError: unknown = null;
      try {
        this.#copy(buf);
      } catch (e) {
        copyError = e;
      }
      let lengths: (number | undefined)[] | undefined;
      let stateError: unknown = null;
      if (saving) {
        try {
          const n = await saving;
          // What the last state had past this one's end: zero it (the image's contents are `n` bytes).
          if (this.#stateLength > n) into[1].fill(0, n, this.#stateLength);
          this.#stateLength = n;
          this.#saved = true;
          const machine = this.#machine!;
          into[2].set(machine);
          lengths = [undefined, n, machine.length];
        } catch (e) {
          stateError = e;
          // A failed save may have written anywhere in the image: the next
          // one zeroes all past its own end, and none reuses this one.
          this.#stateLength = into[1].length;
          this.#saved = false;
        }
      }
      if (holding) {
        try {
          await holding;
        } catch (e) {
          keepPaused = pausedAt >= 0;
          throw new SourceError(
            `${this.name}: the next epoch's output buffer could not be added (${
              (e as Error).message
            }); the guest is left paused so that nothing it sends goes out unheld`,
          );
        }
      }
      let pauseMs = 0;
      if (pausedAt >= 0) {
        await this.#qmp.execute("cont");
        pauseMs = performance.now() - pausedAt;
      }
      if (copyError) throw copyError;
      if (stateError) throw stateError;
      return { pauseMs, lengths };
    } catch (e) {
      if (pausedAt >= 0 && !keepPaused) {
        await this.#qmp.execute("cont").catch(() => {});
      }
      if (e instanceof SourceError) throw e;
      throw new SourceError(
        `${this.name}: ${
          e instanceof QmpError
            ? e.message
            : `capture failed: ${(e as Error).message ?? e}`
        }`,
      );
    }
  }

  /** Copies the RAM file: one memcpy from the mapping, or reads where mapping is unavailable. */
  #copy(buf: Uint8Array): void {
    const size = Deno.statSync(this.#mem).size;
    if (size !== buf.length) {
      // A mapping past the file's end would fault (SIGBUS): never touch it.
      throw new SourceError(
        `${this.name}: the RAM file is now ${size} bytes, expected ${buf.length}`,
      );
    }
    if (this.#map) buf.set(this.#map.bytes);
    else readFileInto(this.#mem, buf);
  }

  /** Pauses the guest for good; its held output stays held (see `qemu_output_hold.ts`). */
  async halt(): Promise<void> {
    if (!this.#closed) await this.#qmp.execute("stop");
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      await this.held?.close();
      this.#channel?.close();
      this.#qmp.close();
      this.#map?.close();
    }
  }
}

/** The smallest power of two ≥ n. */
function pow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** The guest's memory-backend-file objects: path (resolved), size, share. */
async function memoryBackends(
  qmp: QmpClient,
): Promise<{ id: string; path: string; size: number; share: boolean }[]> {
  const objects = await qmp.execute<{ name: string; type: string }[]>(
    "qom-list",
    { path: "/objects" },
  );
  const out = [];
  for (const o of objects) {
    if (!o.type.startsWith("child<memory-backend")) continue;
    const at = `/objects/${o.name}`;
    // memory-backend-ram and -memfd have no mem-path.
    const path = await qmp.execute<string>("qom-get", {
      path: at,
      property: "mem-path",
    }).catch(() => "");
    const size = await qmp.execute<number>("qom-get", {
      path: at,
      property: "size",
    });
    const share = await qmp.execute<boolean>("qom-get", {
      path: at,
      property: "share",
    });
    let real = path;
    try {
      if (path) real = Deno.realPathSync(path);
    } catch {
      // a path we cannot see: compare as given
    }
    out.push({ id: o.name, path: real, size, share });
  }
  return out;
}
