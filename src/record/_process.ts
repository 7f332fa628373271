/**
 * A process seen through `/proc/PID`: its run state, signals, and errors
 * that name what went wrong (gone, not permitted, needs `-A`). Shared by the
 * recorder and the `proc:` source.
 *
 * Deno treats `/proc/PID/*` as privileged: callers need `--allow-all` (`-A`).
 * @module
 */

import { processVmRead } from "./_vm_read.ts";

/** A live process by PID. */
export class ProcessHandle {
  constructor(readonly pid: number, readonly stopTimeoutMs = 5000) {}

  /** Sends `sig`; throws `process PID exited` if it is gone. */
  signal(sig: Deno.Signal): void {
    try {
      Deno.kill(this.pid, sig);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw this.exited();
      throw e;
    }
  }

  /** The error for a process that is gone. */
  exited(): Error {
    return new Error(`process ${this.pid} exited`);
  }

  /** Opens `/proc/PID/FILE` for reading. */
  async openProc(file: string): Promise<Deno.FsFile> {
    try {
      return await Deno.open(`/proc/${this.pid}/${file}`, { read: true });
    } catch (e) {
      throw this.procError(e, file);
    }
  }

  /** Reads `/proc/PID/FILE` as text. */
  async readProc(file: string): Promise<string> {
    try {
      return await Deno.readTextFile(`/proc/${this.pid}/${file}`);
    } catch (e) {
      throw this.procError(e, file);
    }
  }

  /** Turns a failed /proc access into an error that says why and what is needed. */
  procError(e: unknown, file: string): Error {
    if (e instanceof Deno.errors.NotFound) return this.exited();
    if (e instanceof Deno.errors.NotCapable) {
      return new Error(
        `reading /proc/${this.pid}/${file} needs --allow-all (-A): Deno treats /proc/PID files as privileged`,
      );
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      return new Error(
        `/proc/${this.pid}/${file}: permission denied; expected ptrace access to the process (run as its owner or root)`,
      );
    }
    return e as Error;
  }

  /** State letter of the main thread; throws `process PID exited` if gone. */
  async state(): Promise<string> {
    const s = stateOf(await this.readProc("stat"));
    if (s === "Z" || s === "X" || s === "x") throw this.exited();
    return s;
  }

  /** Resolves once every thread is stopped (after SIGSTOP); throws after the timeout. */
  async waitStopped(): Promise<void> {
    const deadline = performance.now() + this.stopTimeoutMs;
    for (;;) {
      let all = true;
      let tids: string[];
      try {
        tids = [];
        for await (const e of Deno.readDir(`/proc/${this.pid}/task`)) {
          tids.push(e.name);
        }
      } catch (e) {
        throw this.procError(e, "task");
      }
      for (const tid of tids) {
        let st: string;
        try {
          st = stateOf(
            await Deno.readTextFile(`/proc/${this.pid}/task/${tid}/stat`),
          );
        } catch (e) {
          if (e instanceof Deno.errors.NotFound) continue; // thread ended
          throw this.procError(e, `task/${tid}/stat`);
        }
        if (st === "Z" || st === "X" || st === "x") {
          if (tid === String(this.pid) && tids.length === 1) {
            throw this.exited();
          }
          continue;
        }
        if (st !== "T" && st !== "t") all = false;
      }
      if (all) return;
      if (performance.now() > deadline) {
        throw new Error(
          `process ${this.pid} did not stop within ${this.stopTimeoutMs} ms of SIGSTOP`,
        );
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }
}

/** The state letter in a `/proc/PID/stat` line. */
export function stateOf(stat: string): string {
  const i = stat.lastIndexOf(")");
  return stat.charAt(i + 2);
}

/** Bytes per read from /proc/PID/mem. */
const MEM_READ_BYTES = 16 << 20;

/**
 * Reads `dst.length` bytes at address `addr` of process `pid`, synchronously
 * (the process is stopped, so per-call latency matters more than keeping the
 * event loop free): with `process_vm_readv` where it works, then from the
 * open `/proc/PID/mem` for whatever it did not copy, which also throws the
 * precise error for memory that cannot be read.
 */
export function readMemory(
  mem: Deno.FsFile,
  pid: number,
  addr: number,
  dst: Uint8Array,
): void {
  for (let done = processVmRead(pid, addr, dst); done < dst.length;) {
    mem.seekSync(addr + done, Deno.SeekMode.Start);
    const n = mem.readSync(
      dst.subarray(done, Math.min(dst.length, done + MEM_READ_BYTES)),
    );
    if (n === null || n === 0) {
      throw new Error(`end of file at ${(addr + done).toString(16)}`);
    }
    done += n;
  }
}
