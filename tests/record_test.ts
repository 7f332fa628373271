import assert from "node:assert/strict";
import { openSeries, openSeriesSet } from "../src/series.ts";
import { openSource } from "../src/open_source.ts";
import { rebuildProcMemory } from "../src/proc_source.ts";
import { runTool, type ToolRun } from "./_run_tool.ts";
import { parseMaps, writableRanges } from "../src/record/_maps.ts";

/** Run tools/record.ts as a real subprocess (it needs -A for /proc/PID). */
function record(args: string[]): Promise<ToolRun> {
  return runTool("record", ["-A"], args);
}

function hasPython(): boolean {
  try {
    return new Deno.Command("python3", { args: ["-c", "1"] }).outputSync()
      .success;
  } catch {
    return false;
  }
}
const PY = hasPython();

const MARK = "PATCHWIRE-TEST-MARK-7f3a";

/**
 * A python child holding a 1 MiB bytearray that starts with MARK and keeps a
 * little-endian u64 counter right after it, incremented in a loop. It also
 * writes the counter to `beat` so the test sees that it keeps running.
 */
function mutator(beat: string, exitAfterS = 0): Deno.ChildProcess {
  const code = `
import struct, time
b = bytearray(1 << 20)
m = b"${MARK}"
b[0:len(m)] = m
t0 = time.time(); i = 0
while True:
    i += 1
    struct.pack_into("<Q", b, len(m), i)
    for j in range(64, 1 << 20, 4096): b[j] = i & 0xff
    if i % 20 == 0:
        open("${beat}", "w").write(str(i))
    time.sleep(0.001)
    if ${exitAfterS} and time.time() - t0 > ${exitAfterS}: break
`;
  return new Deno.Command("python3", {
    args: ["-c", code],
    stdout: "null",
    stderr: "null",
  }).spawn();
}

async function waitForBeat(beat: string): Promise<number> {
  for (let i = 0; i < 500; i++) {
    try {
      const n = Number(await Deno.readTextFile(beat));
      if (n > 0) return n;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error("child never started");
}

function findAll(hay: Uint8Array, needle: Uint8Array): number[] {
  const out: number[] = [];
  outer: for (
    let i = hay.indexOf(needle[0]);
    i >= 0 && i <= hay.length - needle.length;
    i = hay.indexOf(needle[0], i + 1)
  ) {
    for (let k = 1; k < needle.length; k++) {
      if (hay[i + k] !== needle[k]) continue outer;
    }
    out.push(i);
  }
  return out;
}

Deno.test("parseMaps keeps writable ranges and skips kernel pseudo mappings", () => {
  const text = [
    "55d0c0000000-55d0c0001000 r--p 00000000 08:01 123  /usr/bin/x",
    "55d0c0001000-55d0c0002000 rw-p 00001000 08:01 123  /usr/bin/x",
    "55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0    [heap]",
    "7f0000000000-7f0000100000 rw-p 00000000 00:00 0",
    "7f0000100000-7f0000101000 ---p 00000000 00:00 0",
    "7f0000200000-7f0000201000 rw-s 00000000 00:05 77   /dev/shm/x (deleted)",
    "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0    [stack]",
    "7ffd00100000-7ffd00104000 r--p 00000000 00:00 0    [vvar]",
    "7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0    [vdso]",
    "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]",
    "",
  ].join("\n");
  const all = parseMaps(text);
  assert.equal(all.length, 9); // [vsyscall] is beyond safe integers
  const w = writableRanges(all);
  assert.deepEqual(w.map((m) => m.path), [
    "/usr/bin/x",
    "[heap]",
    "",
    "/dev/shm/x (deleted)",
    "[stack]",
  ]);
  assert.equal(w[1].end - w[1].start, 0x21000);
  assert.equal(w[0].offset, 0x1000);
  assert.throws(() => parseMaps("garbage\n"), /unparsable.*"garbage"/);
});

Deno.test({
  name: "record --pid: 3 epochs of a live python process",
  ignore: !PY,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "record_test_" });
    const beat = `${dir}/beat`;
    const child = mutator(beat);
    try {
      await waitForBeat(beat);
      const out = `${dir}/series`;
      const r = await record([
        "--pid",
        String(child.pid),
        "--epochs",
        "3",
        "--interval-ms",
        "150",
        "--out",
        out,
        "--name",
        "py",
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(
        r.stderr,
        /epoch 3\/3 +0002\.img +\d+ bytes +capture [\d.]+ ms/,
      );
      const s = await openSeries(out);
      assert.equal(s.meta.epochs, 3);
      assert.equal(s.meta.name, "py");
      assert.equal(s.meta.source, `pid:${child.pid}`);
      assert.equal(s.meta.intervalMs, 150);
      assert.match(s.meta.notes, /python3/);
      const layout = JSON.parse(await Deno.readTextFile(`${out}/layout.json`));
      const total = layout.reduce(
        (n: number, l: { start: string; end: string }) =>
          n + Number(l.end) - Number(l.start),
        0,
      );
      assert.equal(total, s.meta.size);
      // The mutating buffer is in every image, with a counter that advances.
      const mark = new TextEncoder().encode(MARK);
      const counters: bigint[] = [];
      for (let e = 0; e < 3; e++) {
        const img = await s.readImage(e);
        // MARK also sits in the child's source text and code constants: keep
        // the hit followed by a plausible counter and a matching stripe byte
        const hits = findAll(img, mark).filter((at) => {
          const c = new DataView(
            img.buffer,
            img.byteOffset + at + mark.length,
            8,
          )
            .getBigUint64(0, true);
          const stripe = img[at + 64];
          return c > 0n && c < 1_000_000_000n &&
            (stripe === Number(c & 0xffn) ||
              stripe === Number((c - 1n) & 0xffn));
        });
        assert.equal(hits.length, 1, `epoch ${e}: mark found once`);
        counters.push(
          new DataView(img.buffer, img.byteOffset + hits[0] + mark.length, 8)
            .getBigUint64(0, true),
        );
      }
      assert.ok(
        counters[0] < counters[1] && counters[1] < counters[2],
        `counter advances between epochs: ${counters}`,
      );
      // The child was resumed: its heartbeat keeps moving.
      // (The child rewrites the file, so a read can see it empty: poll.)
      const before = await waitForBeat(beat);
      let after = before;
      for (let i = 0; i < 100 && after <= before; i++) {
        await new Promise((r) => setTimeout(r, 50));
        after = await waitForBeat(beat);
      }
      assert.ok(after > before, "child still runs after recording");
    } finally {
      child.kill("SIGKILL");
      await child.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("record --pid of a non-existent process fails clearly", async () => {
  const dir = await Deno.makeTempDir({ prefix: "record_test_" });
  try {
    // pid_max is at most 4194304 on Linux, so this pid cannot exist
    const r = await record([
      "--pid",
      "4194399",
      "--epochs",
      "2",
      "--interval-ms",
      "10",
      "--out",
      `${dir}/s`,
    ]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /process 4194399 does not exist/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "record --pid: a process exiting mid-recording is a clear error",
  ignore: !PY,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "record_test_" });
    const beat = `${dir}/beat`;
    // Long enough for a few epochs even on a loaded machine, short of all 200.
    const child = mutator(beat, 3);
    try {
      await waitForBeat(beat);
      const out = `${dir}/series`;
      const r = await record([
        "--pid",
        String(child.pid),
        "--epochs",
        "200",
        "--interval-ms",
        "50",
        // A small buffer: preallocating room for 200 images took longer than
        // the child lives on a loaded CI machine.
        "--buffer-mb",
        "32",
        "--out",
        out,
      ]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`process ${child.pid} exited`));
      // what was captured before is kept as a shorter, valid series
      const s = await openSeries(out);
      assert.ok(s.meta.epochs >= 1 && s.meta.epochs < 200);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("record --file: captures a file that changes; shrinking fails", async () => {
  const dir = await Deno.makeTempDir({ prefix: "record_test_" });
  const path = `${dir}/data.bin`;
  const size = 64 * 1024;
  await Deno.writeFile(path, new Uint8Array(size));
  let stop = false;
  // Rewrite a counter in place (never truncating) while the recorder runs.
  const writer = (async () => {
    using f = await Deno.open(path, { write: true });
    for (let i = 1; !stop; i++) {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setUint32(0, i, true);
      await f.seek(8192, Deno.SeekMode.Start);
      await f.write(b);
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  try {
    const r = await record([
      "--file",
      path,
      "--epochs",
      "3",
      "--interval-ms",
      "100",
      "--out",
      `${dir}/s`,
    ]);
    stop = true;
    await writer;
    assert.equal(r.code, 0, r.stderr);
    const s = await openSeries(`${dir}/s`);
    assert.equal(s.meta.size, size);
    assert.equal(s.meta.epochs, 3);
    assert.equal(s.meta.source, `file:${path}`);
    const counters: number[] = [];
    for (let e = 0; e < 3; e++) {
      const img = await s.readImage(e);
      counters.push(
        new DataView(img.buffer, img.byteOffset).getUint32(8192, true),
      );
    }
    assert.ok(
      counters[0] < counters[1] && counters[1] < counters[2],
      `${counters}`,
    );

    // An existing series is refused without --force ...
    const again = [
      "--file",
      path,
      "--epochs",
      "1",
      "--interval-ms",
      "0",
      "--out",
      `${dir}/s`,
    ];
    const refused = await record(again);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /already holds a recording.*--force/);
    // ... and replaced with it (old images removed).
    const forced = await record([...again, "--force"]);
    assert.equal(forced.code, 0, forced.stderr);
    assert.equal((await openSeries(`${dir}/s`)).meta.epochs, 1);
    await assert.rejects(() => Deno.stat(`${dir}/s/0002.img`));

    // Growth is ignored with a warning; shrinking is an error.
    const shrink = (async () => {
      await new Promise((r) => setTimeout(r, 350));
      await Deno.writeFile(path, new Uint8Array(size + 10), { append: true });
      await new Promise((r) => setTimeout(r, 300));
      await Deno.truncate(path, size / 2);
    })();
    const r2 = await record([
      "--file",
      path,
      "--epochs",
      "40",
      "--interval-ms",
      "100",
      "--out",
      `${dir}/s2`,
    ]);
    await shrink;
    assert.equal(r2.code, 1, r2.stderr);
    assert.match(r2.stderr, /file grew to \d+ bytes; only the first 65536/);
    assert.match(r2.stderr, /file shrank to 32768 bytes, expected 65536/);
  } finally {
    stop = true;
    await writer;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("record validates its arguments and --help tells the options", async () => {
  const bad: [string[], RegExp][] = [
    [
      ["--epochs", "1", "--interval-ms", "0", "--out", "/tmp/x"],
      /expected --source SPEC \(or --file PATH\), or exactly one --pid PID/,
    ],
    [[
      "--pid",
      "1",
      "--file",
      "/x",
      "--epochs",
      "1",
      "--interval-ms",
      "0",
      "--out",
      "/tmp/x",
    ], /or exactly one --pid PID/],
    [
      [
        "--file",
        "/x",
        "--epochs",
        "0",
        "--interval-ms",
        "0",
        "--out",
        "/tmp/x",
      ],
      /--epochs must be an integer >= 1, got "0"/,
    ],
    [[
      "--file",
      "/x",
      "--epochs",
      "2",
      "--interval-ms",
      "-5",
      "--out",
      "/tmp/x",
    ], /--interval-ms must be an integer >= 0, got "-5"/],
    [["--file", "/x", "--epochs", "2", "--interval-ms", "5"], /missing --out/],
    [
      ["--file", "/x", "--epochs", "2", "--out", "/tmp/x"],
      /missing --interval-ms/,
    ],
    [["--bogus"], /unknown option --bogus/],
    [[
      "--source",
      "nonsense:1",
      "--epochs",
      "1",
      "--interval-ms",
      "0",
      "--out",
      "/tmp/x",
    ], /unknown source "nonsense:1"/],
  ];
  for (const [args, re] of bad) {
    const r = await record(args);
    // A source that cannot be opened is a failure (1), not a usage error.
    assert.equal(r.code, args[0] === "--source" ? 1 : 2, args.join(" "));
    assert.match(r.stderr, re);
  }
  const h = await record(["--help"]);
  assert.equal(h.code, 0);
  for (
    const opt of [
      "--source",
      "qemu:",
      "proc:",
      "synthetic:",
      "--pid",
      "--file",
      "--epochs",
      "--interval-ms",
      "--out",
      "--name",
      "--force",
      "SIGSTOP",
    ]
  ) {
    assert.ok(h.stdout.includes(opt), opt);
  }
});

Deno.test("record --source: a several-image source is one series per image, and series:DIR replays it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "record_test_" });
  const spec = "synthetic:images=2,size=256K,seed=7";
  try {
    const r = await record([
      "--source",
      spec,
      "--epochs",
      "4",
      "--interval-ms",
      "0",
      "--out",
      `${dir}/rec`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const set = await openSeriesSet(`${dir}/rec`);
    assert.deepEqual(set.map((s) => s.meta.name), ["img0", "img1"]);
    for (const s of set) {
      assert.equal(s.meta.epochs, 4);
      assert.equal(s.meta.source, `${spec} image ${s.meta.name}`);
    }
    // Every epoch equals what the same seeded source captures directly ...
    const direct = await openSource(spec);
    // ... and series:DIR gives the same images back, epoch by epoch.
    const replayed = await openSource(`series:${dir}/rec`);
    assert.deepEqual(replayed.images, direct.images);
    const a = direct.images.map((s) => new Uint8Array(s.size));
    const b = direct.images.map((s) => new Uint8Array(s.size));
    for (let e = 0; e < 4; e++) {
      await direct.capture(a);
      await replayed.capture(b);
      for (let i = 0; i < 2; i++) {
        assert.deepEqual(await set[i].readImage(e), a[i], `epoch ${e}`);
        assert.deepEqual(b[i], a[i], `series: epoch ${e} image ${i}`);
      }
    }
    await direct.close();
    await replayed.close();
    // A set whose series disagree on their epochs is refused.
    await Deno.remove(`${dir}/rec/img1/0003.img`);
    const meta = JSON.parse(
      await Deno.readTextFile(`${dir}/rec/img1/meta.json`),
    );
    await Deno.writeTextFile(
      `${dir}/rec/img1/meta.json`,
      JSON.stringify({ ...meta, epochs: 3 }),
    );
    await assert.rejects(
      () => openSource(`series:${dir}/rec`),
      /img1: 3 epochs, expected 4 like .*img0/,
    );
    await assert.rejects(
      () => openSource(`series:${dir}`),
      /holds no meta.json and no subdirectory with one/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "record --source proc:PID keeps the live layout: the process's memory rebuilds from every epoch",
  ignore: !PY,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "record_test_" });
    const beat = `${dir}/beat`;
    const child = mutator(beat);
    try {
      await waitForBeat(beat);
      const out = `${dir}/rec`;
      const r = await record([
        "--source",
        `proc:${child.pid}`,
        "--epochs",
        "3",
        "--interval-ms",
        "100",
        "--buffer-mb",
        "512",
        "--out",
        out,
      ]);
      assert.equal(r.code, 0, r.stderr);
      const [arena, layout] = await openSeriesSet(out);
      assert.equal(arena.meta.name, `proc-${child.pid}`);
      assert.equal(layout.meta.name, `proc-${child.pid}.layout`);
      const mark = new TextEncoder().encode(MARK);
      const counters: bigint[] = [];
      for (let e = 0; e < 3; e++) {
        const mappings = rebuildProcMemory(
          await layout.readImage(e),
          await arena.readImage(e),
        );
        // The 1 MiB buffer is one anonymous mapping holding MARK + counter.
        const hits = mappings.flatMap((m) =>
          findAll(m.bytes, mark).map((at) =>
            new DataView(m.bytes.buffer, m.bytes.byteOffset + at + mark.length)
              .getBigUint64(0, true)
          )
        ).filter((c) => c > 0n && c < 1_000_000_000n);
        assert.ok(hits.length >= 1, `epoch ${e}: the buffer is rebuilt`);
        counters.push(hits[0]);
      }
      assert.ok(
        counters[0] < counters[1] && counters[1] < counters[2],
        `counter advances between epochs: ${counters}`,
      );
    } finally {
      child.kill("SIGKILL");
      await child.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});
