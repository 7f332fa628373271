/**
 * A role (or tool) of this project as a real process, its output kept line by
 * line: how the VM failover test and demo run primaries, relays and backups
 * exactly as users do (`deno task ROLE`, same flags).
 * @module
 */

import { rolePermissions, type RoleTool } from "./_role_permissions.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** A running role process. */
export class RoleProcess {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  /** When each line arrived (performance.now()), by index. */
  readonly times: number[] = [];
  readonly done: Promise<Deno.CommandStatus>;
  exited = false;

  constructor(
    readonly tool: RoleTool,
    args: string[],
    env: Record<string, string> = {},
  ) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...rolePermissions(tool),
        `${ROOT}tools/${tool}.ts`,
        ...args,
      ],
      cwd: ROOT,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const read = async (s: ReadableStream<Uint8Array>) => {
      let buf = "";
      for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          this.lines.push(buf.slice(0, nl));
          this.times.push(performance.now());
          buf = buf.slice(nl + 1);
        }
      }
      if (buf) {
        this.lines.push(buf);
        this.times.push(performance.now());
      }
    };
    const readers = Promise.all([
      read(this.child.stdout),
      read(this.child.stderr),
    ]);
    this.done = this.child.status.then(async (s) => {
      await readers.catch(() => {});
      this.exited = true;
      return s;
    });
  }

  /**
   * Resolves once a line matches `re` (e.g. a role's "listening on"), or
   * rejects with the output if the process exits or `ms` pass first.
   */
  async waitLine(re: RegExp, ms = 30_000): Promise<string> {
    const end = Date.now() + ms;
    for (;;) {
      const line = this.lines.find((l) => re.test(l));
      if (line !== undefined) return line;
      if (this.exited || Date.now() > end) {
        throw new Error(
          `${this.tool} ${
            this.exited ? "exited" : "timed out"
          } before printing ${re}:\n${this.tail()}`,
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** When the first line matching `re` arrived (performance.now()), or null. */
  timeOf(re: RegExp): number | null {
    const i = this.lines.findIndex((l) => re.test(l));
    return i < 0 ? null : this.times[i];
  }

  /** Epochs a primary reported committed (`epoch N committed` lines). */
  commits(): number[] {
    return this.lines.flatMap((l) => {
      const m = /^epoch (\d+) committed/.exec(l);
      return m ? [Number(m[1])] : [];
    });
  }

  kill(signal: Deno.Signal): void {
    try {
      this.child.kill(signal);
    } catch {
      // gone
    }
  }

  /** The last lines, prefixed with the tool's name, for error messages. */
  tail(n = 15): string {
    return this.lines.slice(-n).map((l) => `  ${this.tool}| ${l}`).join("\n");
  }
}

/** A role's `GET /status` on its control plane at `HOST:PORT` (no token). */
export async function roleStatus(
  http: string,
): Promise<Record<string, unknown>> {
  const res = await fetch(`http://${http}/status`);
  return await res.json();
}

/** The next port any {@linkcode PortRange} of this process hands out. */
let nextPort = 21000 + (Deno.pid % 400) * 20;

/**
 * Loopback ports handed out in order, each checked free when taken, from one
 * cursor shared by every range of this process: distinct by construction,
 * and below the kernel's ephemeral range (32768+), so no outgoing connection
 * takes one meanwhile.
 */
export class PortRange {
  take(): number {
    for (let i = 0; i < 2000; i++) {
      const port = nextPort++;
      if (nextPort > 31999) nextPort = 21000;
      try {
        Deno.listen({ hostname: "127.0.0.1", port }).close();
        return port;
      } catch {
        // taken: the next one
      }
    }
    throw new Error("no free loopback port in 21000-31999");
  }
}

/** Runs `tools/TOOL.ts` to completion (with its task's flags, or `permissions`); its exit code and output. */
export async function runToolProcess(
  tool: string,
  args: string[],
  permissions: string[] = rolePermissions(tool as RoleTool),
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, `${ROOT}tools/${tool}.ts`, ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** True once process `pid` is gone (or a zombie waiting for its parent). */
export async function processGone(pid: number): Promise<boolean> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    return stat.split(" ")[2] === "Z";
  } catch {
    return true;
  }
}
