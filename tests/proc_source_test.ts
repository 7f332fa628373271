/**
 * The `proc:` source against live python3 child processes. The scenarios
 * that replicate a churning process run in tests/_proc_scenario.ts as their
 * own `deno run -A` process and report figures. The soft-dirty path runs
 * here, against a child that maps and writes memory when told to and a
 * simulated kernel dirty page log (this kernel may keep no soft-dirty bits):
 * Deno treats /proc/PID as privileged, so these need the test task's `-A`.
 */

import {
  assert,
  assertEquals,
  assertRejects,
  assertThrows,
} from "./_assert.ts";
import {
  KernelSoftDirtyLog,
  parseProcLayout,
  ProcSource,
  rebuildProcMemory,
  type SoftDirtyLog,
} from "../src/proc_source.ts";
import { type CaptureResult, SourceError } from "../src/source.ts";
import { parseMaps, writableRanges } from "../src/record/_maps.ts";
import { stateOf } from "../src/record/_process.ts";
import { Primary } from "../src/primary.ts";
import { Backup } from "../src/backup.ts";
import { AckLevel } from "../src/protocol.ts";

const SCENARIO = new URL("./_proc_scenario.ts", import.meta.url).pathname;

// deno-lint-ignore no-explicit-any
async function scenario(mode: string): Promise<any> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCENARIO, mode],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert(out.success, `scenario ${mode} failed:\n${stderr}\n${stdout}`);
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

Deno.test("proc: a process that maps, writes, frees and grows memory: at every committed epoch the backup rebuilds its exact layout and contents", async () => {
  const r = await scenario("churn");
  assertEquals(r.checked, 10, "ten epochs compared with the process's memory");
  assert(
    r.layoutChanges >= 3,
    `mappings appeared, grew, shrank or vanished between epochs (${r.layoutChanges} of 9 changed)`,
  );
  assertEquals(r.notes, []);
});

Deno.test("proc: a mapping that cannot be read is replicated as zeros, marked in the layout and reported", async () => {
  const r = await scenario("unreadable");
  assertEquals(r.unreadable.length, 1, JSON.stringify(r));
  assert(/Input\/output error/.test(r.unreadable[0]), r.unreadable[0]);
  assertEquals(r.notes.length, 1, "reported once, not at every epoch");
  assert(/cannot be read .* marked unreadable/.test(r.notes[0]), r.notes[0]);
});

Deno.test("proc: a process that exits mid-run fails the capture clearly and makes no epoch", async () => {
  const r = await scenario("exit");
  assert(/process \d+ exited/.test(r.message), r.message);
  assertEquals(r.after, r.before, "no partial epoch");
});

Deno.test("proc: a process that outgrows its arena fails the capture, naming the size to use, and keeps running", async () => {
  const r = await scenario("overflow");
  assert(
    new RegExp(
      `no longer fit the ${r.size}-byte image; restart the primary with proc:\\d+\\?size=\\d+`,
    ).test(r.message),
    r.message,
  );
  assert(r.stateAfter !== "T", `the process was resumed (${r.stateAfter})`);
});

Deno.test("proc: bad specs name what is wrong", async () => {
  const { messages } = await scenario("bad");
  assert(/does not exist/.test(messages[0]), messages[0]);
  assert(
    /"abc" is not a process id; expected proc:PID/.test(messages[1]),
    messages[1],
  );
  assert(
    /size=4K is smaller than the process's \d+ bytes/.test(messages[2]),
    messages[2],
  );
  assert(/unknown option "colour"/.test(messages[3]), messages[3]);
  assert(
    /dirty=sometimes: expected dirty=auto or dirty=scan/.test(messages[4]),
    messages[4],
  );
});

// ---------------------------------------------------------------------------
// The soft-dirty path, against a simulated kernel log

const PAGE = 4096;
const SOFT_DIRTY = 1n << 55n;
const PRESENT = 1n << 63n;

/**
 * A python3 child that maps, writes, moves, resizes and unmaps private
 * anonymous memory when told to on stdin, answering each command with an
 * address. Its mappings sit between PROT_NONE pages (with room to grow), so
 * the kernel never merges them with a neighbour.
 */
const PUPPET = `
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
P, NONE, RW, PRIVATE_ANON, FIXED = 4096, 0, 3, 0x22, 0x10

def mmap(addr, pages, prot, flags):
    r = libc.mmap(addr, pages * P, prot, flags, -1, 0)
    if r is None or r == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "mmap")
    return r

def region(pages):
    base = mmap(None, 2 * pages + 2, NONE, PRIVATE_ANON)
    return mmap(base + P, pages, RW, PRIVATE_ANON | FIXED)

def unmap(addr, pages):
    if libc.munmap(addr, pages * P) != 0:
        raise OSError(ctypes.get_errno(), "munmap")

print("ready", flush=True)
for line in sys.stdin:
    op, *a = line.split()
    a = [int(x, 0) for x in a]
    if op == "map":  # PAGES BYTE: a new mapping filled with BYTE
        r = region(a[0])
        ctypes.memset(r, a[1], a[0] * P)
    elif op == "write":  # ADDR BYTE LENGTH
        r = a[0]
        ctypes.memset(a[0], a[1], a[2])
    elif op == "move":  # ADDR PAGES: the same contents at a new address
        r = region(a[1])
        ctypes.memmove(r, a[0], a[1] * P)
        unmap(a[0], a[1])
    elif op == "resize":  # ADDR PAGES NEW_PAGES: shrink, or grow in place (new pages 0x5a)
        r = a[0]
        if a[2] < a[1]:
            unmap(a[0] + a[2] * P, a[1] - a[2])
        else:
            mmap(a[0] + a[1] * P, a[2] - a[1], RW, PRIVATE_ANON | FIXED)
            ctypes.memset(a[0] + a[1] * P, 0x5a, (a[2] - a[1]) * P)
    elif op == "unmap":  # ADDR PAGES
        r = a[0]
        unmap(a[0], a[1])
    print(hex(r), flush=True)
`;

function hex(n: number): string {
  return n.toString(16);
}

function state(pid: number): string {
  return stateOf(Deno.readTextFileSync(`/proc/${pid}/stat`));
}

/** Reads `length` bytes of process `pid` at `start` ourselves. */
function readMem(pid: number, start: number, length: number): Uint8Array {
  const f = Deno.openSync(`/proc/${pid}/mem`, { read: true });
  try {
    const out = new Uint8Array(length);
    for (let done = 0; done < length;) {
      f.seekSync(start + done, Deno.SeekMode.Start);
      const n = f.readSync(out.subarray(done));
      if (!n) throw new Error(`short read at ${hex(start + done)}`);
      done += n;
    }
    return out;
  } finally {
    f.close();
  }
}

function samePage(a: Uint8Array, b: Uint8Array): boolean {
  const x = new Uint32Array(a.buffer, a.byteOffset, PAGE / 4);
  const y = new Uint32Array(b.buffer, b.byteOffset, PAGE / 4);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** The page indexes `i < pages` with `base + i * PAGE` in `addresses`. */
function pagesIn(addresses: Set<number>, base: number, pages: number) {
  const out: number[] = [];
  for (let i = 0; i < pages; i++) {
    if (addresses.has(base + i * PAGE)) out.push(i);
  }
  return out;
}

function range(n: number): number[] {
  return [...Array(n).keys()];
}

/** The child running {@linkcode PUPPET}. */
class Puppet {
  #buffered = "";

  private constructor(
    readonly process: Deno.ChildProcess,
    readonly writer: WritableStreamDefaultWriter<Uint8Array>,
    readonly reader: ReadableStreamDefaultReader<string>,
  ) {}

  get pid(): number {
    return this.process.pid;
  }

  static async start(): Promise<Puppet> {
    const process = new Deno.Command("python3", {
      args: ["-c", PUPPET],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const puppet = new Puppet(
      process,
      process.stdin.getWriter(),
      process.stdout.pipeThrough(new TextDecoderStream()).getReader(),
    );
    assertEquals(await puppet.#line(), "ready");
    return puppet;
  }

  async #line(): Promise<string> {
    for (;;) {
      const nl = this.#buffered.indexOf("\n");
      if (nl >= 0) {
        const line = this.#buffered.slice(0, nl);
        this.#buffered = this.#buffered.slice(nl + 1);
        return line;
      }
      const { value, done } = await this.reader.read();
      if (done) throw new Error("the child exited (its error is above)");
      this.#buffered += value;
    }
  }

  async #do(...words: (string | number)[]): Promise<number> {
    const line = words.map((w) => typeof w === "number" ? `0x${hex(w)}` : w)
      .join(" ");
    await this.writer.write(new TextEncoder().encode(line + "\n"));
    return parseInt(await this.#line(), 16);
  }

  /** A new mapping of `pages` pages filled with `byte`; its address. */
  map(pages: number, byte: number): Promise<number> {
    return this.#do("map", pages, byte);
  }

  async write(addr: number, byte: number, length: number): Promise<void> {
    await this.#do("write", addr, byte, length);
  }

  /** Moves a mapping to a new address; the new address. */
  move(addr: number, pages: number): Promise<number> {
    return this.#do("move", addr, pages);
  }

  async resize(addr: number, pages: number, newPages: number): Promise<void> {
    await this.#do("resize", addr, pages, newPages);
  }

  async unmap(addr: number, pages: number): Promise<void> {
    await this.#do("unmap", addr, pages);
  }

  /**
   * Runs `fn` with the child stopped, so its memory holds still (it goes on
   * running after it answers a command, until it blocks on the next read).
   */
  async stopped<T>(fn: () => Promise<T>): Promise<T> {
    Deno.kill(this.pid, "SIGSTOP");
    while (state(this.pid) !== "T") await new Promise((r) => setTimeout(r, 1));
    try {
      return await fn();
    } finally {
      Deno.kill(this.pid, "SIGCONT");
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.process.kill("SIGKILL");
    await this.writer.close().catch(() => {});
    await this.reader.cancel();
    await this.process.status;
  }
}

/**
 * The kernel's soft-dirty log, simulated on a real process: a page is
 * reported written when its contents differ from what they were at the
 * last clear (or it was not mapped then), which is what the kernel's bit
 * says for every page these tests write. It records how it is used, checks
 * that the process is stopped at every call, and can be told to miss
 * pages, to fail, or to read short.
 */
class SimulatedSoftDirtyLog implements SoftDirtyLog {
  /** Page address → its contents at the last clear. */
  #atClear = new Map<number, Uint8Array>();
  /** Pages it never reports, written or not. */
  readonly missed = new Set<number>();
  /** Every read fails: throws, or reads one entry short. */
  failReads: "error" | "short read" | null = null;
  failClears = false;
  /** The calls, in order: `read ADDR PAGES`, `clear`, `close`. */
  calls: string[] = [];
  /** The pages it reported written. */
  reported = new Set<number>();
  /** Calls made while the process was running. */
  readonly whileRunning: string[] = [];

  constructor(readonly pid: number) {}

  read(addr: number, entries: BigUint64Array): number {
    this.#called(`read ${hex(addr)} ${entries.length}`);
    if (this.failReads === "error") {
      throw new Error("pagemap: Input/output error");
    }
    const n = this.failReads === "short read"
      ? entries.length - 1
      : entries.length;
    const now = readMem(this.pid, addr, n * PAGE);
    for (let i = 0; i < n; i++) {
      const page = addr + i * PAGE;
      const then = this.#atClear.get(page);
      const written = !then ||
        !samePage(then, now.subarray(i * PAGE, (i + 1) * PAGE));
      const dirty = written && !this.missed.has(page);
      if (dirty) this.reported.add(page);
      // The other bits as the kernel sets them: present, a frame number.
      entries[i] = PRESENT | BigInt(0x1000 + i) | (dirty ? SOFT_DIRTY : 0n);
    }
    entries.fill(0n, n); // what a short read did not fill says "clean"
    return n;
  }

  clear(): void {
    this.#called("clear");
    if (this.failClears) throw new Error("clear_refs: Permission denied");
    this.#atClear.clear();
    const maps = writableRanges(
      parseMaps(Deno.readTextFileSync(`/proc/${this.pid}/maps`)),
    );
    for (const m of maps) {
      const bytes = readMem(this.pid, m.start, m.end - m.start);
      for (let off = 0; off < bytes.length; off += PAGE) {
        this.#atClear.set(m.start + off, bytes.subarray(off, off + PAGE));
      }
    }
  }

  close(): void {
    this.#called("close");
  }

  /** The ranges it was asked about. */
  get asked(): { addr: number; pages: number }[] {
    return this.calls.filter((c) => c.startsWith("read ")).map((c) => {
      const [, addr, pages] = c.split(" ");
      return { addr: parseInt(addr, 16), pages: Number(pages) };
    });
  }

  #called(what: string): void {
    this.calls.push(what);
    if (state(this.pid) !== "T") this.whileRunning.push(what);
  }
}

/** What one capture did. */
interface Capture {
  result: CaptureResult;
  /** Process addresses of the arena pages it hinted as written. */
  hinted: Set<number>;
  /** The log's calls during it. */
  calls: string[];
  /** Where its images differ from the process's memory ({@linkcode differences}). */
  differences: string[];
}

/** A puppet child, a `proc:` source on it with a simulated log, and buffers to capture into. */
class Rig {
  readonly into: Uint8Array[];

  private constructor(
    readonly puppet: Puppet,
    readonly log: SimulatedSoftDirtyLog,
    readonly source: ProcSource,
    /** What the source noted. */
    readonly notes: string[],
  ) {
    this.into = source.images.map((i) => new Uint8Array(i.size));
  }

  /** `query(pid)`: the spec's options, e.g. `?dirty=scan`. */
  static async start(query = (_pid: number) => ""): Promise<Rig> {
    const puppet = await Puppet.start();
    const log = new SimulatedSoftDirtyLog(puppet.pid);
    const notes: string[] = [];
    const source = await ProcSource.open(
      `proc:${puppet.pid}${query(puppet.pid)}`,
      (l) => notes.push(l),
      { dirtyLog: log },
    );
    return new Rig(puppet, log, source, notes);
  }

  /**
   * Captures with the child stopped (the source leaves it stopped), and
   * compares the images with its memory before it resumes.
   */
  capture(): Promise<Capture> {
    this.log.calls = [];
    this.log.reported = new Set();
    return this.puppet.stopped(async () => {
      const result = await this.source.capture(this.into);
      return {
        result,
        hinted: this.#hinted(result),
        calls: this.log.calls,
        differences: differences(this.puppet.pid, this.into),
      };
    });
  }

  #hinted(result: CaptureResult): Set<number> {
    const out = new Set<number>();
    const bits = result.dirtyPages?.[0];
    if (!bits) return out;
    const mappings = parseProcLayout(this.into[1]).mappings;
    for (let page = 0; page < bits.length * 32; page++) {
      if (!(bits[page >>> 5] & (1 << (page & 31)))) continue;
      const at = page * PAGE;
      const m = mappings.find((m) =>
        m.at <= at && at < m.at + parseInt(m.end, 16) - parseInt(m.start, 16)
      );
      if (m) out.add(parseInt(m.start, 16) + at - m.at);
    }
    return out;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.source.close();
    await this.puppet[Symbol.asyncDispose]();
  }
}

/**
 * Where images differ from process `pid`'s memory: the layout if its
 * mappings differ, else the addresses of the pages that differ, and arena
 * space that no mapping holds and is not zero.
 */
function differences(pid: number, [arena, layout]: Uint8Array[]): string[] {
  const live = writableRanges(
    parseMaps(Deno.readTextFileSync(`/proc/${pid}/maps`)),
  ).map((m) => `${hex(m.start)}-${hex(m.end)}`).join(" ");
  const mappings = rebuildProcMemory(layout, arena);
  const held = mappings.map((m) => `${m.start}-${m.end}`).join(" ");
  if (held !== live) return [`layout: ${held}; the process: ${live}`];
  const out: string[] = [];
  const words = new Uint32Array(
    arena.buffer,
    arena.byteOffset,
    arena.length / 4,
  );
  let free = 0;
  for (const m of [...mappings].sort((x, y) => x.at - y.at)) {
    for (let w = free / 4; w < m.at / 4; w++) {
      if (words[w] !== 0) {
        out.push(`free space at ${w * 4} is not zero`);
        break;
      }
    }
    free = m.at + m.bytes.length;
  }
  for (let w = free / 4; w < words.length; w++) {
    if (words[w] !== 0) {
      out.push(`free space at ${w * 4} is not zero`);
      break;
    }
  }
  for (const m of mappings) {
    const start = parseInt(m.start, 16);
    const want = readMem(pid, start, m.bytes.length);
    for (let off = 0; off < want.length; off += PAGE) {
      if (
        !samePage(want.subarray(off, off + PAGE), m.bytes.subarray(off))
      ) {
        out.push(hex(start + off));
      }
    }
  }
  return out;
}

/** The capture's hints and the log's report agree on the mappings it was asked about. */
function assertHintsAreTheReport(c: Capture, log: SimulatedSoftDirtyLog) {
  for (const page of log.reported) {
    assert(c.hinted.has(page), `reported page ${hex(page)} was not read`);
  }
  for (const { addr, pages } of log.asked) {
    for (let i = 0; i < pages; i++) {
      const page = addr + i * PAGE;
      assertEquals(
        c.hinted.has(page),
        log.reported.has(page),
        `page ${hex(page)}: read ${c.hinted.has(page)}, reported ${
          log.reported.has(page)
        }`,
      );
    }
  }
}

Deno.test("proc: with a dirty page log, the first capture reads every page without asking it, and every capture ends by clearing it while the process is stopped", async () => {
  await using rig = await Rig.start();
  assert(rig.source.softDirty, "the given log is used");
  const a = await rig.puppet.map(8, 0x11);

  const first = await rig.capture();
  assertEquals(
    first.result.dirtyPages,
    undefined,
    "no hints: the encoder scans",
  );
  assertEquals(first.calls, ["clear", "close"], "the log is only cleared");
  assertEquals(first.differences, []);

  for (let i = 1; i <= 3; i++) {
    await rig.puppet.write(a + i * PAGE, 0x20 + i, 100);
    const c = await rig.capture();
    assert(c.result.dirtyPages?.[0], `capture ${i + 1} hints the arena`);
    assertEquals(c.result.dirtyPages[1], null, "and scans the layout");
    assertEquals(
      c.calls.slice(-2),
      ["clear", "close"],
      "cleared after the reads, then released",
    );
    assert(
      c.calls.slice(0, -2).every((x) => x.startsWith("read ")),
      c.calls.join(),
    );
    assertEquals(c.differences, []);
  }

  // A running process: the source stops it around every use of the log.
  rig.log.calls = [];
  const running = await rig.source.capture(rig.into);
  assert(running.pauseMs > 0, "the source stopped the process");
  assertEquals(rig.log.calls.slice(-2), ["clear", "close"]);
  assertEquals(rig.log.whileRunning, [], "never used while the process runs");
  assert(state(rig.puppet.pid) !== "T", "and resumed it");
  assertEquals(rig.notes, []);
});

Deno.test("proc: a later capture reads only the pages the log reports written, and its images equal the process's memory", async () => {
  await using rig = await Rig.start();
  const a = await rig.puppet.map(16, 0x11);
  const b = await rig.puppet.map(4, 0x22);
  await rig.capture();

  await rig.puppet.write(a, 0x30, 1); // the first page
  await rig.puppet.write(a + 3 * PAGE, 0x33, PAGE);
  await rig.puppet.write(a + 4 * PAGE + 10, 0x34, 1);
  await rig.puppet.write(a + 9 * PAGE + 4000, 0x35, 200); // into page 10 too
  await rig.puppet.write(a + 16 * PAGE - 1, 0x3f, 1); // the last page
  const c = await rig.capture();

  const written = [0, 3, 4, 9, 10, 15];
  assertEquals(pagesIn(rig.log.reported, a, 16), written);
  assertEquals(pagesIn(c.hinted, a, 16), written, "the pages read");
  assertEquals(pagesIn(c.hinted, b, 4), [], "b was not written: not read");
  assert(
    rig.log.asked.some((x) => x.addr === a && x.pages === 16),
    "the log was asked about a",
  );
  assertHintsAreTheReport(c, rig.log);
  assertEquals(c.differences, []);
});

Deno.test("proc: a page written but missing from the log is not read again (the source trusts the kernel): the image keeps its previous contents", async () => {
  await using rig = await Rig.start();
  const a = await rig.puppet.map(4, 0x11);
  await rig.capture();

  rig.log.missed.add(a + PAGE);
  await rig.puppet.write(a + PAGE, 0x99, PAGE);
  await rig.puppet.write(a + 2 * PAGE, 0x98, 1);
  let c = await rig.capture();
  assertEquals(pagesIn(c.hinted, a, 4), [2]);
  assertEquals(c.differences, [hex(a + PAGE)], "only the missed page is stale");
  const [m] = rebuildProcMemory(rig.into[1], rig.into[0]).filter((m) =>
    m.start === hex(a)
  );
  assertEquals(m.bytes[PAGE], 0x11, "as it was at the first capture");

  // Once the log reports it, it is read.
  rig.log.missed.clear();
  await rig.puppet.write(a + PAGE, 0x97, 1);
  c = await rig.capture();
  assertEquals(pagesIn(c.hinted, a, 4), [1]);
  assertEquals(c.differences, []);
});

Deno.test("proc: a mapping that moved, shrank or grew is read whole, without asking the log", async () => {
  await using rig = await Rig.start();
  const a = await rig.puppet.map(8, 0x11);
  const b = await rig.puppet.map(8, 0x22);
  const c = await rig.puppet.map(4, 0x33);
  await rig.capture();

  const moved = await rig.puppet.move(a, 8);
  await rig.puppet.resize(b, 8, 5);
  await rig.puppet.resize(c, 4, 7);
  const r = await rig.capture();

  const layout = parseProcLayout(rig.into[1]).mappings.map((m) =>
    `${m.start}-${m.end}`
  );
  for (const [start, pages] of [[moved, 8], [b, 5], [c, 7]]) {
    const mapping = `${hex(start)}-${hex(start + pages * PAGE)}`;
    assert(layout.includes(mapping), `${mapping} in ${layout.join(" ")}`);
    assertEquals(pagesIn(r.hinted, start, pages), range(pages), mapping);
    assert(
      !rig.log.asked.some((x) => x.addr === start),
      `the log was not asked about ${mapping}`,
    );
  }
  assert(!layout.some((m) => m.startsWith(`${hex(a)}-`)), "a left its place");
  assertEquals(r.differences, []);
});

for (const failure of ["error", "short read"] as const) {
  Deno.test(`proc: a log that cannot be read (${failure}) makes the source read the mapping whole and say so once; the images stay exact`, async () => {
    await using rig = await Rig.start();
    const a = await rig.puppet.map(8, 0x11);
    await rig.capture();

    rig.log.failReads = failure;
    await rig.puppet.write(a + 2 * PAGE, 0x22, 1);
    let c = await rig.capture();
    assert(rig.log.asked.some((x) => x.addr === a), "the log was asked");
    assertEquals(pagesIn(c.hinted, a, 8), range(8), "then a was read whole");
    assertEquals(c.differences, []);
    await rig.puppet.write(a + 3 * PAGE, 0x23, 1);
    c = await rig.capture();
    assertEquals(c.differences, []);
    assertEquals(rig.notes.length, 1, rig.notes.join("\n"));
    assert(
      new RegExp(
        `the soft-dirty log of mapping [0-9a-f]+-[0-9a-f]+ .* cannot be read \\(${
          failure === "error"
            ? "pagemap: Input/output error"
            : "short read: \\d+ of \\d+ pages' entries"
        }\\); the mapping is read whole`,
      ).test(rig.notes[0]),
      rig.notes[0],
    );

    // Once it reads again, only written pages are read.
    rig.log.failReads = null;
    await rig.puppet.write(a + 5 * PAGE, 0x24, 1);
    c = await rig.capture();
    assertEquals(pagesIn(c.hinted, a, 8), [5]);
    assertEquals(c.differences, []);
  });
}

Deno.test("proc: a log that cannot be cleared leaves the capture good, says so, and makes the next capture read every page", async () => {
  await using rig = await Rig.start();
  const a = await rig.puppet.map(4, 0x11);
  await rig.capture();

  rig.log.failClears = true;
  await rig.puppet.write(a, 0x22, 1);
  let c = await rig.capture();
  assertEquals(pagesIn(c.hinted, a, 4), [0]);
  assertEquals(c.differences, []);
  assertEquals(rig.notes.length, 1);
  assert(
    /the soft-dirty log cannot be cleared \(clear_refs: Permission denied\); the next capture reads every page/
      .test(rig.notes[0]),
    rig.notes[0],
  );

  rig.log.failClears = false;
  c = await rig.capture();
  assertEquals(c.result.dirtyPages, undefined, "every page read, no hints");
  assertEquals(c.calls, ["clear", "close"], "the log not asked");
  assertEquals(c.differences, []);

  await rig.puppet.write(a + 3 * PAGE, 0x23, 1);
  c = await rig.capture();
  assertEquals(pagesIn(c.hinted, a, 4), [3], "then the log is trusted again");
  assertEquals(c.differences, []);
});

Deno.test("proc: after a failed capture the next one reads every page, without asking the log", async () => {
  // An arena with 8 MiB to spare, then 12 MiB more memory.
  await using rig = await Rig.start((pid) =>
    `?size=${
      writableRanges(parseMaps(Deno.readTextFileSync(`/proc/${pid}/maps`)))
        .reduce((n, m) => n + m.end - m.start, 0) + (8 << 20)
    }`
  );
  await rig.capture();
  const big = await rig.puppet.map(3072, 0x11);
  const e = await assertRejects(() => rig.capture(), SourceError);
  assert(/no longer fit/.test(e.message), e.message);

  await rig.puppet.unmap(big, 3072);
  const c = await rig.capture();
  assertEquals(c.result.dirtyPages, undefined, "every page read, no hints");
  assertEquals(c.calls, ["clear", "close"]);
  assertEquals(c.differences, []);
});

Deno.test("proc: with dirty=scan a given dirty page log is not used", async () => {
  await using rig = await Rig.start(() => "?dirty=scan");
  assert(!rig.source.softDirty);
  await rig.capture();
  const c = await rig.capture();
  assertEquals(c.result.dirtyPages, undefined);
  assertEquals(c.differences, []);
  assertEquals(rig.log.calls, []);
});

Deno.test("proc: with a dirty page log, a backup's images equal the process's memory at every epoch", async () => {
  await using rig = await Rig.start();
  const dir = await Deno.makeTempDir({ prefix: "pw-proc-dirty-" });
  const backup = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/store`,
    note: () => {},
  });
  const primary = new Primary(rig.source, {
    to: [backup.url],
    intervalMs: null,
    ack: { who: { kind: "all" }, level: AckLevel.durable },
    note: () => {},
  });
  primary.start();
  try {
    const a = await rig.puppet.map(32, 0x11);
    let b = await rig.puppet.map(8, 0x22);
    const steps = [
      () => rig.puppet.write(a + 5 * PAGE, 0x33, 3 * PAGE),
      () => rig.puppet.write(a + 31 * PAGE + 7, 0x34, 1),
      async () => {
        b = await rig.puppet.move(b, 8);
      },
      () => rig.puppet.resize(a, 32, 20),
      () => rig.puppet.write(b, 0x35, 8 * PAGE),
    ];
    const epochs: string[][] = [];
    for (const step of [...steps, null]) {
      // Stopped from the capture to the comparison: the memory holds still.
      epochs.push(
        await rig.puppet.stopped(async () => {
          const { epoch } = await primary.checkpoint();
          assertEquals(backup.store.state?.epoch, epoch, "durable: stored");
          const stored = rig.source.images.map((im) => {
            const bytes = new Uint8Array(im.size);
            backup.store.readImage(
              backup.store.state!.images.findIndex((s) => s.id === im.id),
              bytes,
            );
            return bytes;
          });
          return differences(rig.puppet.pid, stored);
        }),
      );
      await step?.();
    }
    assertEquals(epochs, steps.map(() => []).concat([[]]));
    assert(rig.log.asked.length > 0, "captures used the log");
    assertEquals(rig.notes, []);
  } finally {
    await primary.stop();
    await backup.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("proc: the kernel's log reads one pagemap entry per page from a mapping's address, clears, and names a process that is gone", async () => {
  const puppet = await Puppet.start();
  const log = new KernelSoftDirtyLog(puppet.pid);
  const entries = new BigUint64Array(8);
  const present = (e: bigint) => (e & PRESENT) !== 0n;
  let a = 0;
  try {
    a = await puppet.map(8, 0x11);
    await puppet.unmap(a + 6 * PAGE, 2);
    assertEquals(log.read(a, entries), 8);
    assertEquals(
      [...entries].map(present),
      [true, true, true, true, true, true, false, false],
      "written pages are present, unmapped ones not",
    );
    log.clear();
    log.close();
    assertEquals(log.read(a + 2 * PAGE, entries.subarray(0, 2)), 2, "reopened");
    assert(present(entries[0]) && present(entries[1]));
    log.close();
  } finally {
    await puppet[Symbol.asyncDispose]();
  }
  assertThrows(() => log.read(a, entries), /process \d+ exited/);
  assertThrows(() => log.clear(), /process \d+ exited/);
});
