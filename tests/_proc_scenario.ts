/**
 * The `proc:` source against a live child process, run by
 * tests/proc_source_test.ts as its own `deno run -A` process (Deno treats
 * /proc/PID as privileged, which the test command does not grant).
 *
 * Usage: deno run -A tests/_proc_scenario.ts churn|unreadable|exit|overflow|bad
 * Exits 0 and prints one JSON line of figures, or throws.
 */

import assert from "node:assert/strict";
import { openSource } from "../src/open_source.ts";
import { ProcSource, rebuildProcMemory } from "../src/proc_source.ts";
import { SourceError } from "../src/source.ts";
import { Primary } from "../src/primary.ts";
import { Backup } from "../src/backup.ts";
import { AckLevel } from "../src/protocol.ts";
import { parseMaps, writableRanges } from "../src/record/_maps.ts";
import { stateOf } from "../src/record/_process.ts";

/** A process that maps, writes, frees and grows memory all the time. */
const CHURN = `
import mmap, os, random, sys, time
random.seed(7)
regions, heap, i = [], [], 0
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    i += 1
    op = i % 4
    if op == 0 or len(regions) < 2:
        m = mmap.mmap(-1, 4096 * random.randint(1, 32))
        m.write(os.urandom(len(m)))
        regions.append(m)
    elif op == 1 and len(regions) > 4:
        regions.pop(random.randrange(len(regions))).close()
    elif op == 2:
        heap.append(bytearray(os.urandom(random.randint(1000, 300000))))
        if len(heap) > 20: heap.pop(0)
    else:
        m = random.choice(regions)
        off = random.randrange(len(m))
        m[off:off + 1] = b"x"
    time.sleep(0.002)
`;

/** A process holding a shared file mapping whose file was truncated: reading it fails. */
const UNREADABLE = `
import mmap, os, sys, tempfile, time
fd, path = tempfile.mkstemp()
os.ftruncate(fd, 8192)
m = mmap.mmap(fd, 8192)
m[0:4] = b"live"
os.ftruncate(fd, 0)
os.unlink(path)
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    time.sleep(0.01)
`;

/** A process that maps 48 MiB more, and writes it, when told to on stdin. */
const GROWER = `
import mmap, sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
m = mmap.mmap(-1, 48 << 20)
for off in range(0, len(m), 4096): m[off] = 1
sys.stdout.write("grown\\n"); sys.stdout.flush()
sys.stdin.readline()
`;

async function child(
  script: string,
  stdin: "null" | "piped" = "null",
): Promise<Deno.ChildProcess> {
  const p = new Deno.Command("python3", {
    args: ["-c", script],
    stdin,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = p.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("ready")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the child exited before it was ready");
    text += value;
  }
  return p;
}

function state(pid: number): string {
  return stateOf(Deno.readTextFileSync(`/proc/${pid}/stat`));
}

async function stop(pid: number): Promise<void> {
  Deno.kill(pid, "SIGSTOP");
  while (state(pid) !== "T") await new Promise((r) => setTimeout(r, 1));
}

/** Reads the process's memory at [start, end) ourselves. */
function readMem(pid: number, start: number, length: number): Uint8Array {
  const f = Deno.openSync(`/proc/${pid}/mem`, { read: true });
  try {
    const out = new Uint8Array(length);
    for (let done = 0; done < length;) {
      f.seekSync(start + done, Deno.SeekMode.Start);
      const n = f.readSync(out.subarray(done));
      if (!n) throw new Error(`short read at ${(start + done).toString(16)}`);
      done += n;
    }
    return out;
  } finally {
    f.close();
  }
}

async function replicate(
  pid: number,
  notes: string[],
): Promise<{ source: ProcSource; primary: Primary; backup: Backup }> {
  const dir = await Deno.makeTempDir({ prefix: "pw-proc-" });
  const backup = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/store`,
    note: () => {},
  });
  const source = await ProcSource.open(`proc:${pid}`, (l) => notes.push(l));
  const primary = new Primary(source, {
    to: [backup.url],
    intervalMs: null,
    ack: { who: { kind: "all" }, level: AckLevel.applied },
    note: () => {},
  });
  primary.start();
  return { source, primary, backup };
}

/** The backup's stored images of the process, rebuilt into mappings. */
async function stored(backup: Backup, source: ProcSource, epoch: number) {
  const end = Date.now() + 10_000;
  while (backup.store.state?.epoch !== epoch) {
    if (Date.now() > end) throw new Error(`store did not reach ${epoch}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const [arena, layout] = source.images.map((i) =>
    Deno.readFileSync(`${backup.store.dir}/${i.id}.img`)
  );
  return rebuildProcMemory(layout, arena);
}

const mode = Deno.args[0];
if (mode === "churn") {
  const p = await child(CHURN);
  const notes: string[] = [];
  const { source, primary, backup } = await replicate(p.pid, notes);
  let layoutChanges = 0, checked = 0, bytes = 0;
  let last = "";
  try {
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 60));
      await stop(p.pid); // hold it still to compare with its memory ourselves
      const r = await primary.checkpoint();
      assert.equal(
        r.pauseMs,
        0,
        "a process stopped by someone else is not paused again",
      );
      assert.equal(state(p.pid), "T", "and is left stopped");
      const mappings = await stored(backup, source, r.epoch);
      const live = writableRanges(
        parseMaps(Deno.readTextFileSync(`/proc/${p.pid}/maps`)),
      );
      const ranges = (xs: { start: string | number; end: string | number }[]) =>
        xs.map((m) =>
          typeof m.start === "number"
            ? `${m.start.toString(16)}-${(m.end as number).toString(16)}`
            : `${m.start}-${m.end}`
        ).join(" ");
      assert.equal(ranges(mappings), ranges(live), `epoch ${r.epoch}: layout`);
      if (last && last !== ranges(live)) layoutChanges++;
      last = ranges(live);
      for (const m of mappings) {
        assert.ok(!m.unreadable, `${m.start}: ${m.unreadable}`);
        const start = parseInt(m.start, 16);
        const want = readMem(p.pid, start, m.bytes.length);
        assert.ok(
          want.every((b, k) => b === m.bytes[k]),
          `epoch ${r.epoch}: mapping ${m.start}-${m.end} ${m.path} differs in the backup`,
        );
        bytes += want.length;
      }
      checked++;
      Deno.kill(p.pid, "SIGCONT");
    }
    // Running: the source stops and resumes it itself.
    const r = await primary.checkpoint();
    assert.ok(r.pauseMs > 0, "a running process is paused for the capture");
    assert.notEqual(state(p.pid), "T", "and resumed");
  } finally {
    await primary.stop();
    await backup.close();
    p.kill("SIGKILL");
    await p.status;
  }
  console.log(JSON.stringify({
    checked,
    layoutChanges,
    bytes,
    softDirty: source.softDirty,
    notes,
  }));
} else if (mode === "unreadable") {
  const p = await child(UNREADABLE);
  const notes: string[] = [];
  const { source, primary, backup } = await replicate(p.pid, notes);
  let unreadable: string[] = [];
  try {
    const r = await primary.checkpoint();
    await primary.checkpoint();
    const mappings = await stored(backup, source, r.epoch + 1);
    unreadable = mappings.filter((m) => m.unreadable).map((m) =>
      `${m.path}: ${m.unreadable}`
    );
  } finally {
    await primary.stop();
    await backup.close();
    p.kill("SIGKILL");
    await p.status;
  }
  console.log(JSON.stringify({ unreadable, notes }));
} else if (mode === "exit") {
  const p = await child(CHURN);
  const { primary, backup } = await replicate(p.pid, []);
  let message = "";
  let before = -1, after = -1;
  try {
    await primary.checkpoint();
    before = primary.encoder.epoch;
    p.kill("SIGKILL");
    await p.status;
    try {
      await primary.checkpoint();
    } catch (e) {
      assert.ok(e instanceof SourceError, `a SourceError, got ${e}`);
      message = (e as Error).message;
    }
    after = primary.encoder.epoch;
  } finally {
    await primary.stop();
    await backup.close();
  }
  console.log(JSON.stringify({ message, before, after }));
} else if (mode === "overflow") {
  // An arena sized for the process as it is now, then the process grows
  // past it: the capture fails naming the size to use, makes no epoch, and
  // leaves the process running.
  const p = await child(GROWER, "piped");
  const writer = p.stdin.getWriter();
  const maps = () =>
    writableRanges(parseMaps(Deno.readTextFileSync(`/proc/${p.pid}/maps`)))
      .reduce((n, m) => n + m.end - m.start, 0);
  const size = maps() + (8 << 20);
  const source = await ProcSource.open(`proc:${p.pid}?size=${size}`);
  const into = source.images.map((i) => new Uint8Array(i.size));
  let message = "", stateAfter = "";
  try {
    await source.capture(into);
    await writer.write(new TextEncoder().encode("grow\n"));
    for (let i = 0; i < 500 && maps() < size; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    try {
      await source.capture(into);
    } catch (e) {
      assert.ok(e instanceof SourceError, `a SourceError, got ${e}`);
      message = (e as Error).message;
    }
    stateAfter = state(p.pid);
  } finally {
    await source.close();
    p.kill("SIGKILL");
    await p.status;
  }
  console.log(JSON.stringify({ message, stateAfter, size }));
} else if (mode === "bad") {
  const messages: string[] = [];
  const self = Deno.pid;
  for (
    const spec of [
      "proc:999999999",
      "proc:abc",
      `proc:${self}?size=4K`,
      `proc:${self}?colour=red`,
      `proc:${self}?dirty=sometimes`,
    ]
  ) {
    try {
      await openSource(spec);
      messages.push(`${spec}: opened`);
    } catch (e) {
      messages.push((e as Error).message);
    }
  }
  console.log(JSON.stringify({ messages }));
} else {
  throw new Error(
    `mode ${mode}: expected churn, unreadable, exit, overflow or bad`,
  );
}
