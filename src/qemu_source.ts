/**
 * `qemu:QMP_SOCKET?mem=PATH`: a live QEMU guest whose RAM is a shared file.
 *
 * QEMU must run with its RAM in a file it shares, and a QMP socket:
 *
 * ```text
 * -object memory-backend-file,id=m,size=256M,mem-path=PATH,share=on
 * -machine memory-backend=m -qmp unix:QMP_SOCKET,server,nowait
 * ```
 *
 * Each capture pauses the guest (QMP `stop`), copies its RAM, and resumes it
 * (`cont`): the pause is exactly one memory copy plus two QMP round trips,
 * and hashing, matching and encoding run afterwards, on the copy. A guest its
 * operator paused is captured and left paused (the pause is then 0: we
 * caused none). Options after `?`: `mem=PATH` (required), `id=NAME` (the
 * image id; default the RAM file's name), `timeout=MS` (QMP replies;
 * default 5000).
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

/** A live QEMU guest, captured with stop/copy/cont. */
export class QemuSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  readonly #qmp: QmpClient;
  readonly #mem: string;
  readonly #map: MappedFile | null;
  #closed = false;

  private constructor(
    spec: string,
    qmp: QmpClient,
    mem: string,
    image: ImageSpec,
    map: MappedFile | null,
  ) {
    this.name = spec;
    this.#qmp = qmp;
    this.#mem = mem;
    this.images = [image];
    this.#map = map;
  }

  /**
   * Opens `qemu:QMP_SOCKET?mem=PATH[&id=NAME]`: connects to QMP, checks
   * that the guest is alive and that PATH is the file of one of its
   * memory backends, of the same size.
   */
  static async open(spec: string): Promise<QemuSource> {
    const { target: socket, params, fail } = parseSourceSpec(spec, {
      mem: "PATH",
      id: "NAME",
      timeout: "MS",
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
          `the memory backend of ${mem} has share=off: QEMU keeps the guest's RAM private; expected share=on`,
        );
      }
      if (mine!.size !== size) {
        fail(`mem=${mem} is ${size} bytes, the backend ${mine!.size}`);
      }
      const id = params.get("id") ?? imageIdFor(real);
      return new QemuSource(
        spec,
        qmp,
        real,
        { id, size },
        mapFile(real, size, { readOnly: true }),
      );
    } catch (e) {
      qmp.close();
      if (e instanceof SourceError) throw e;
      return fail((e as Error).message);
    }
  }

  /**
   * Pauses the guest if it runs, copies its RAM into `into[0]`, resumes it.
   * Fails (and captures nothing) if the guest exited or QMP fails; a guest
   * this call paused is always resumed.
   */
  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    if (this.#closed) throw new SourceError(`${this.name}: closed`);
    const buf = into[0];
    try {
      const status = await this.#qmp.status();
      if (!CAPTURABLE.has(status.status)) {
        throw new SourceError(
          `${this.name}: the guest is in state "${status.status}"; nothing captured`,
        );
      }
      let pausedAt = -1;
      if (status.running) {
        pausedAt = performance.now();
        await this.#qmp.execute("stop");
      }
      let copyError: unknown = null;
      try {
        this.#copy(buf);
      } catch (e) {
        copyError = e;
      }
      let pauseMs = 0;
      if (pausedAt >= 0) {
        await this.#qmp.execute("cont");
        pauseMs = performance.now() - pausedAt;
      }
      if (copyError) throw copyError;
      return { pauseMs };
    } catch (e) {
      if (e instanceof SourceError) throw e;
      throw new SourceError(
        `${this.name}: ${
          e instanceof QmpError ? e.message : `capture failed: ${e}`
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

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#qmp.close();
      this.#map?.close();
    }
    return Promise.resolve();
  }
}

/** The guest's memory-backend-file objects: path (resolved), size, share. */
async function memoryBackends(
  qmp: QmpClient,
): Promise<{ path: string; size: number; share: boolean }[]> {
  const objects = await qmp.execute<{ name: string; type: string }[]>(
    "qom-list",
    { path: "/objects" },
  );
  const out = [];
  for (const o of objects) {
    if (o.type !== "child<memory-backend-file>") continue;
    const at = `/objects/${o.name}`;
    const path = await qmp.execute<string>("qom-get", {
      path: at,
      property: "mem-path",
    });
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
      real = Deno.realPathSync(path);
    } catch {
      // a path we cannot see: compare as given
    }
    out.push({ path: real, size, share });
  }
  return out;
}
