import assert from "node:assert/strict";
import {
  _testing,
  BackupStore,
  type CrashPoint,
  type StoredState,
  StoreError,
  type StoreRange,
  type StoreRecovery,
} from "../src/backup_store.ts";
import {
  applyRanges,
  epochRanges,
  IMAGES,
  initialImage,
  stateAt,
} from "./_store_writer.ts";

async function withDir(fn: (dir: string) => void | Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "backup_store_test_" });
  try {
    await fn(dir);
  } finally {
    _testing.crashAfter = null;
    await Deno.remove(dir, { recursive: true });
  }
}

function img(id: string, size: number, lo = 0, hi = 0) {
  return { id, size, digestLo: lo, digestHi: hi };
}

function pattern(size: number, seed: number): Uint8Array {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (i * 131 + seed * 17 + (i >> 8)) & 0xff;
  return b;
}

function readAll(store: BackupStore): Uint8Array[] {
  return store.state!.images.map((im, slot) => {
    const b = new Uint8Array(im.size);
    store.readImage(slot, b);
    return b;
  });
}

/** Deterministic stand-in for Math.random, so failures reproduce. */
function lcg(seed: number): (n: number) => number {
  let x = seed >>> 0;
  return (n) => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x % n;
  };
}

function assertStoreError(fn: () => unknown, ...parts: (string | RegExp)[]) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof StoreError, `expected StoreError, got ${e}`);
    for (const p of parts) {
      if (typeof p === "string") {
        assert.ok(e.message.includes(p), `"${e.message}" lacks "${p}"`);
      } else assert.match(e.message, p);
    }
    return true;
  });
}

function crashAt(point: CrashPoint, fn: () => void) {
  _testing.crashAfter = point;
  try {
    assert.throws(fn, _testing.SimulatedCrash);
  } finally {
    _testing.crashAfter = null;
  }
}

const A = 4096 + 13;
const B = 3 * 4096;
const base: StoredState = {
  epoch: 7,
  images: [img("a", A, 1, 2), img("b", B, 3, 4)],
};
const ranges1: StoreRange[] = [
  { slot: 0, offset: 0, bytes: new Uint8Array([9, 9, 9]) },
  { slot: 1, offset: B - 5, bytes: new Uint8Array(5).fill(0xee) },
  { slot: 0, offset: 1000, bytes: new Uint8Array(200).fill(0x55) },
  { slot: 0, offset: 1100, bytes: new Uint8Array(10).fill(0x66) }, // overlaps: later wins
];
const state8: StoredState = {
  epoch: 8,
  images: [img("a", A, 10, 20), img("b", B, 30, 40)],
};

function baseContents(): Uint8Array[] {
  return [pattern(A, 1), pattern(B, 2)];
}

function contents8(): Uint8Array[] {
  const c = baseContents();
  applyRanges(c, ranges1);
  return c;
}

/** A store at `base`, closed. */
function makeBase(dir: string) {
  const s = BackupStore.open(dir);
  s.replaceAll(base, baseContents(), true);
  s.close();
}

/** The journal is idle: empty, or its magic zeroed (a mapped journal keeps its size). */
function assertJournalIdle(dir: string) {
  const j = Deno.readFileSync(`${dir}/journal`);
  assert.ok(
    j.length === 0 || j.subarray(0, 4).every((b) => b === 0),
    `journal of ${j.length} bytes starts ${j.subarray(0, 4)}; expected idle`,
  );
}

/** The journal's record without what follows its checksum (see the format in backup_store.ts). */
function journalRecord(file: Uint8Array): Uint8Array {
  const v = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const total = 40 + v.getUint32(4, true) * 16 +
    Number(v.getBigUint64(24, true)) + v.getUint32(36, true) + 4;
  return file.subarray(0, total);
}

function assertAt(dir: string, state: StoredState, contents: Uint8Array[]) {
  const s = BackupStore.open(dir);
  try {
    assert.deepEqual(s.state, state);
    assert.deepEqual(readAll(s), contents);
  } finally {
    s.close();
  }
}

Deno.test("new store is empty, and the directory is created", async () => {
  await withDir((dir) => {
    const s = BackupStore.open(`${dir}/x/y`);
    try {
      assert.equal(s.state, null);
      assert.deepEqual(s.recovery, { journal: "none", replace: "none" });
      assert.ok(Deno.statSync(`${dir}/x/y`).isDirectory);
      assertStoreError(() => s.readImage(0, new Uint8Array(0)), "is empty");
      assertStoreError(
        () => s.commitEpoch({ epoch: 1, images: [] }, [], false),
        "is empty",
        "replaceAll first",
      );
    } finally {
      s.close();
    }
    assertStoreError(() => s.readImage(0, new Uint8Array(0)), "is closed");
  });
});

Deno.test("replaceAll then reopen: same state and contents", async () => {
  await withDir((dir) => {
    const s = BackupStore.open(dir);
    s.replaceAll(base, baseContents(), false);
    assert.deepEqual(s.state, base);
    assert.deepEqual(readAll(s), baseContents());
    s.close();
    assertAt(dir, base, baseContents());
    const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(files, ["a.img", "b.img", "journal", "state.json"]);
  });
});

Deno.test("commitEpoch writes ranges in order; reopen sees them", async () => {
  await withDir((dir) => {
    makeBase(dir);
    for (const durable of [false, true]) {
      const s = BackupStore.open(dir);
      const next = { ...state8, epoch: durable ? 9 : 8 };
      s.commitEpoch(next, ranges1, durable);
      assert.deepEqual(s.state, next);
      assert.deepEqual(readAll(s), contents8()); // same ranges again: same bytes
      s.close();
      assertAt(dir, next, contents8());
      assertJournalIdle(dir);
    }
    // An epoch with no ranges still moves the epoch and digests.
    const s = BackupStore.open(dir);
    const st = { epoch: 12, images: [img("a", A), img("b", B)] };
    s.commitEpoch(st, [], true);
    s.close();
    assertAt(dir, st, contents8());
  });
});

Deno.test("replaceAll with other ids and sizes removes the old images", async () => {
  await withDir((dir) => {
    makeBase(dir);
    const s = BackupStore.open(dir);
    const next = {
      epoch: 3,
      images: [img("b", 100), img("c", 0), img("d", 5000)],
    };
    const c = [pattern(100, 7), new Uint8Array(0), pattern(5000, 8)];
    s.replaceAll(next, c, true);
    s.commitEpoch(
      { ...next, epoch: 4 },
      [{ slot: 2, offset: 4999, bytes: new Uint8Array([1]) }],
      true,
    );
    s.close();
    c[2][4999] = 1;
    assertAt(dir, { ...next, epoch: 4 }, c);
    const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(files, [
      "b.img",
      "c.img",
      "d.img",
      "journal",
      "state.json",
    ]);
  });
});

Deno.test("a store can be open only once at a time", async () => {
  await withDir((dir) => {
    const s = BackupStore.open(dir);
    try {
      assertStoreError(() => BackupStore.open(dir), "already open", dir);
    } finally {
      s.close();
    }
    BackupStore.open(dir).close();
  });
});

Deno.test("bad directories: a file, a path under a file", async () => {
  await withDir((dir) => {
    const file = `${dir}/file`;
    Deno.writeTextFileSync(file, "x");
    assertStoreError(() => BackupStore.open(file), file, "not a directory");
    assertStoreError(
      () => BackupStore.open(`${file}/sub`),
      `${file}/sub`,
      /[Nn]ot a directory/,
    );
    // The journal path taken by a directory: the store cannot write it.
    Deno.mkdirSync(`${dir}/s/journal`, { recursive: true });
    assertStoreError(() => BackupStore.open(`${dir}/s`), `${dir}/s/journal`);
  });
});

Deno.test("bad input is refused and leaves the store unchanged", async () => {
  await withDir((dir) => {
    const s = BackupStore.open(dir);
    try {
      for (
        const id of ["", "a/b", "..", "../x", "a\0b", ".", "x".repeat(201)]
      ) {
        assertStoreError(
          () =>
            s.replaceAll({ epoch: 1, images: [img(id, 1)] }, [
              new Uint8Array(1),
            ], false),
          "bad image id",
        );
      }
      assertStoreError(
        () =>
          s.replaceAll(
            { epoch: 1, images: [img("a", 1), img("a", 1)] },
            [new Uint8Array(1), new Uint8Array(1)],
            false,
          ),
        `"a" appears twice`,
      );
      assertStoreError(
        () =>
          s.replaceAll(
            { epoch: 1, images: [img("a", 2)] },
            [new Uint8Array(1)],
            false,
          ),
        `"a" is declared 2 bytes`,
      );
      assertStoreError(
        () => s.replaceAll({ epoch: 1, images: [img("a", 1)] }, [], false),
        "0 contents for 1 images",
      );
      assertStoreError(
        () => s.replaceAll({ epoch: -1, images: [] }, [], false),
        "epoch -1",
      );
      assertStoreError(
        () =>
          s.replaceAll({ epoch: 1, images: [img("a", 1, -1)] }, [
            new Uint8Array(1),
          ], false),
        "digest",
      );
      assert.equal(s.state, null);

      s.replaceAll(base, baseContents(), false);
      const bad = (r: StoreRange[], ...parts: (string | RegExp)[]) =>
        assertStoreError(() => s.commitEpoch(state8, r, false), ...parts);
      bad(
        [{ slot: 0, offset: A - 2, bytes: new Uint8Array(3) }],
        "range 0",
        `offset ${A - 2}`,
        "length 3",
        `${A} bytes`,
      );
      bad(
        [ranges1[0], { slot: 1, offset: B, bytes: new Uint8Array(1) }],
        "range 1",
        `offset ${B}`,
      );
      bad([{ slot: 0, offset: -1, bytes: new Uint8Array(1) }], "offset -1");
      bad([{ slot: 0, offset: 0.5, bytes: new Uint8Array(1) }], "offset 0.5");
      bad(
        [{ slot: 2, offset: 0, bytes: new Uint8Array(1) }],
        "slot 2 out of range",
      );
      bad(
        [{ slot: -1, offset: 0, bytes: new Uint8Array(1) }],
        "slot -1 out of range",
      );

      const mis = (st: StoredState, ...parts: string[]) =>
        assertStoreError(() => s.commitEpoch(st, ranges1, false), ...parts);
      mis({ epoch: 8, images: [img("a", A)] }, "1 images", "holds 2");
      mis(
        { epoch: 8, images: [img("a", A), img("c", B)] },
        `slot 1 is "c"`,
        `holds "b"`,
      );
      mis(
        { epoch: 8, images: [img("a", A + 1), img("b", B)] },
        `slot 0 is "a" (${A + 1} bytes)`,
      );
      mis(
        { ...state8, epoch: 7 },
        "epoch 7 does not follow the stored epoch 7",
      );
      mis({ ...state8, epoch: 1.5 }, "epoch 1.5");

      assertStoreError(
        () => s.readImage(0, new Uint8Array(A - 1)),
        `buffer is ${A - 1} bytes`,
      );
      assertStoreError(
        () => s.readImage(5, new Uint8Array(A)),
        "slot 5 out of range",
      );
      assert.deepEqual(s.state, base);
      assert.deepEqual(readAll(s), baseContents());
    } finally {
      s.close();
    }
    assertAt(dir, base, baseContents());
  });
});

Deno.test("corrupt or inconsistent files are reported with their path", async () => {
  await withDir((dir) => {
    makeBase(dir);
    const state = `${dir}/state.json`;
    const good = Deno.readTextFileSync(state);
    Deno.writeTextFileSync(state, good.slice(0, 20));
    assertStoreError(() => BackupStore.open(dir), state, "corrupt", "not JSON");
    Deno.writeTextFileSync(
      state,
      JSON.stringify({ format: "other", epoch: 1, images: [] }),
    );
    assertStoreError(() => BackupStore.open(dir), state, "expected format");
    Deno.writeTextFileSync(state, good.replace(`"a"`, `"../a"`));
    assertStoreError(() => BackupStore.open(dir), state, "bad image id");
    Deno.writeTextFileSync(state, good);

    Deno.truncateSync(`${dir}/b.img`, B - 1);
    assertStoreError(
      () => BackupStore.open(dir),
      `${dir}/b.img`,
      `${B - 1} bytes`,
      `says ${B}`,
    );
    Deno.removeSync(`${dir}/b.img`);
    assertStoreError(
      () => BackupStore.open(dir),
      `${dir}/b.img`,
      "cannot open",
    );
  });
});

Deno.test("torn journal: the store stays at the previous epoch", async () => {
  await withDir((dir) => {
    makeBase(dir);
    const s = BackupStore.open(dir);
    crashAt("journal", () => s.commitEpoch(state8, ranges1, true));
    assertStoreError(() => s.commitEpoch(state8, ranges1, true), "reopened");
    s.close();
    const journal = journalRecord(Deno.readFileSync(`${dir}/journal`));
    const rand = lcg(42);
    const cuts = [0, 1, 4, 43, journal.length - 4, journal.length - 1];
    for (let i = 0; i < 20; i++) cuts.push(rand(journal.length));
    for (const cut of cuts) {
      Deno.writeFileSync(`${dir}/journal`, journal.subarray(0, cut));
      const r = BackupStore.open(dir);
      assert.equal(
        r.recovery.journal,
        cut === 0 ? "none" : "discarded-torn",
        `cut ${cut}`,
      );
      assert.deepEqual(r.state, base);
      assert.deepEqual(readAll(r), baseContents());
      r.close();
      assert.equal(Deno.statSync(`${dir}/journal`).size, 0);
    }
    // Whole length but a flipped byte (torn sector): torn too.
    for (const bad of [0, 50, journal.length - 10]) {
      const j = journal.slice();
      j[bad] ^= 0x40;
      Deno.writeFileSync(`${dir}/journal`, j);
      const r = BackupStore.open(dir);
      assert.equal(r.recovery.journal, "discarded-torn");
      assert.deepEqual(r.state, base);
      r.close();
    }
    assertAt(dir, base, baseContents());
    // Zeroed magic: an idle journal, whatever follows it.
    const idle = journal.slice();
    idle.fill(0, 0, 4);
    Deno.writeFileSync(`${dir}/journal`, idle);
    let r = BackupStore.open(dir);
    assert.equal(r.recovery.journal, "none");
    r.close();
    // Bytes after the checksum (left by an earlier, larger journal) are
    // ignored: the record itself is whole, so it is redone.
    const padded = new Uint8Array(journal.length + 7).fill(0xee);
    padded.set(journal);
    Deno.writeFileSync(`${dir}/journal`, padded);
    r = BackupStore.open(dir);
    assert.equal(r.recovery.journal, "redone");
    r.close();
    assertAt(dir, state8, contents8());
  });
});

Deno.test("complete journal after a crash at any step is redone", async () => {
  const expected: Record<string, StoreRecovery["journal"]> = {
    journal: "redone",
    "some-images": "redone",
    images: "redone",
    state: "already-applied",
  };
  for (const [point, outcome] of Object.entries(expected)) {
    await withDir((dir) => {
      makeBase(dir);
      const s = BackupStore.open(dir);
      crashAt(point as CrashPoint, () => s.commitEpoch(state8, ranges1, false));
      s.close();
      const r = BackupStore.open(dir);
      assert.equal(r.recovery.journal, outcome, point);
      assert.deepEqual(r.state, state8);
      assert.deepEqual(readAll(r), contents8());
      r.close();
      assertAt(dir, state8, contents8());
    });
  }
});

Deno.test("a crash during recovery's redo is redone again", async () => {
  await withDir((dir) => {
    makeBase(dir);
    const s = BackupStore.open(dir);
    crashAt("journal", () => s.commitEpoch(state8, ranges1, false));
    s.close();
    crashAt("some-images", () => BackupStore.open(dir));
    crashAt("images", () => BackupStore.open(dir));
    const r = BackupStore.open(dir);
    assert.equal(r.recovery.journal, "redone");
    r.close();
    assertAt(dir, state8, contents8());
  });
});

Deno.test("a valid journal for another base is discarded", async () => {
  await withDir((dir) => {
    makeBase(dir);
    const s = BackupStore.open(dir);
    crashAt("journal", () => s.commitEpoch(state8, ranges1, false));
    s.close();
    const journal = Deno.readFileSync(`${dir}/journal`);
    const r = BackupStore.open(dir); // redoes epoch 8
    const st9 = { ...state8, epoch: 9 };
    const more = [{ slot: 1, offset: 0, bytes: new Uint8Array(64).fill(3) }];
    r.commitEpoch(st9, more, false);
    r.close();
    Deno.writeFileSync(`${dir}/journal`, journal); // epoch 7 → 8, but the store is at 9
    const c = contents8();
    applyRanges(c, more);
    const t = BackupStore.open(dir);
    assert.equal(t.recovery.journal, "discarded-stale");
    t.close();
    assertAt(dir, st9, c);
  });
});

Deno.test("replaceAll interrupted: undone before the switch record, finished after", async () => {
  const next = { epoch: 1, images: [img("b", 10), img("z", 20)] };
  const nextC = [pattern(10, 5), pattern(20, 6)];
  const cases: [CrashPoint, "undone" | "finished"][] = [
    ["staged", "undone"],
    ["switch", "finished"],
    ["renamed", "finished"],
  ];
  for (const [point, outcome] of cases) {
    await withDir((dir) => {
      makeBase(dir);
      const s = BackupStore.open(dir);
      crashAt(point, () => s.replaceAll(next, nextC, true));
      s.close();
      const r = BackupStore.open(dir);
      assert.equal(r.recovery.replace, outcome, point);
      r.close();
      if (outcome === "undone") assertAt(dir, base, baseContents());
      else assertAt(dir, next, nextC);
      const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      assert.deepEqual(
        files,
        outcome === "undone"
          ? ["a.img", "b.img", "journal", "state.json"]
          : ["b.img", "journal", "state.json", "z.img"],
        point,
      );
    });
  }
  // The first replaceAll of a new store, undone: still empty.
  await withDir((dir) => {
    const s = BackupStore.open(dir);
    crashAt("staged", () => s.replaceAll(next, nextC, false));
    s.close();
    const r = BackupStore.open(dir);
    assert.equal(r.state, null);
    assert.equal(r.recovery.replace, "undone");
    r.close();
  });
});

// ---- real processes, killed with SIGKILL ----

const WRITER = new URL("./_store_writer.ts", import.meta.url).pathname;

interface Round {
  delayMs: number;
  lines: string[];
  signal: string | null;
}

/**
 * Runs the writer and SIGKILLs it `delayMs` after its first line (it has
 * recovered and started committing), or after spawning if `fromSpawn`, which
 * may land in its startup or recovery.
 */
async function runAndKill(
  dir: string,
  delayMs: number,
  fromSpawn: boolean,
): Promise<Round> {
  const child = new Deno.Command(Deno.execPath(), {
    // --allow-ffi: the writer maps its image files, as a backup does.
    args: ["run", "--allow-read", "--allow-write", "--allow-ffi", WRITER, dir],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  const { promise: openedP, resolve: opened } = Promise.withResolvers<void>();
  const readOut = (async () => {
    for await (
      const chunk of child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      out += chunk;
      if (out.includes("\n")) opened();
    }
    opened(); // the child ended without a word: let the status speak
  })();
  const readErr = new Response(child.stderr).text();
  if (!fromSpawn) await openedP;
  await new Promise((r) => setTimeout(r, delayMs));
  try {
    child.kill("SIGKILL");
  } catch {
    // already exited; the status check below reports why
  }
  const status = await child.status;
  await readOut;
  const err = await readErr;
  assert.equal(
    status.signal,
    "SIGKILL",
    `writer exited on its own (${status.code}): ${err}`,
  );
  return {
    delayMs,
    lines: out.split("\n").filter((l) => l),
    signal: status.signal,
  };
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

Deno.test("SIGKILL at random times never leaves a torn or lost checkpoint", async () => {
  await withDir(async (dir) => {
    const seed = Date.now() >>> 0;
    const rand = lcg(seed);
    const expected = IMAGES.map((_, i) => initialImage(i));
    let expectedEpoch = 0;
    let begun = -1; // highest epoch any child started
    let done = -1; // highest epoch any child finished
    let lastVerified = -1;
    const log: string[] = [`seed ${seed}`];
    const tally = new Map<string, number>();
    const count = (k: string) => tally.set(k, (tally.get(k) ?? 0) + 1);
    const ROUNDS = 24;
    for (let round = 0; round < ROUNDS; round++) {
      // Mostly 50–300 ms into committing; every 4th from spawn, to land in startup or recovery.
      const fromSpawn = round % 4 === 2;
      const delay = fromSpawn ? rand(200) : 50 + rand(251);
      const r = await runAndKill(dir, delay, fromSpawn);
      for (const l of r.lines) {
        const [word, n, journal, replace] = l.split(" ");
        if (word === "begin") begun = Math.max(begun, Number(n));
        else if (word === "done") done = Math.max(done, Number(n));
        else if (word === "open") {
          // The child recovered what the previous kill left (rounds the parent skipped).
          count(`child ${journal}/${replace}`);
          const e = Number(n);
          assert.ok(
            e >= lastVerified && e >= done && (e <= begun || e === -1),
            `child opened at ${e}; verified ${lastVerified}, finished ${done}, began ${begun}`,
          );
        }
      }
      const what = `round ${round}: kill ${delay} ms after ${
        fromSpawn ? "spawn" : "start"
      }, reached ${done}..${begun}`;
      // Leave every other kill to the next child's recovery; verify the rest (and the last).
      if (round % 2 === 0 && round !== ROUNDS - 1) {
        log.push(`${what} (recovery left to the next child)`);
        continue;
      }
      const s = BackupStore.open(dir);
      try {
        count(`parent ${s.recovery.journal}/${s.recovery.replace}`);
        const st = s.state;
        if (st === null) {
          assert.equal(
            done,
            -1,
            "store empty after the first replaceAll finished",
          );
          log.push(`${what}, store empty (killed before the first replaceAll)`);
          continue;
        }
        const e = st.epoch;
        assert.ok(
          e >= done && e <= begun,
          `store at epoch ${e}, child finished ${done} and began ${begun}`,
        );
        assert.ok(
          e >= lastVerified,
          `epoch went back from ${lastVerified} to ${e}`,
        );
        assert.deepEqual(st, stateAt(e));
        for (; expectedEpoch < e; expectedEpoch++) {
          applyRanges(expected, epochRanges(expectedEpoch + 1));
        }
        for (let slot = 0; slot < expected.length; slot++) {
          const got = new Uint8Array(IMAGES[slot].size);
          s.readImage(slot, got);
          const at = firstDiff(got, expected[slot]);
          assert.equal(
            at,
            -1,
            `image ${IMAGES[slot].id} at epoch ${e} differs at byte ${at}`,
          );
        }
        lastVerified = e;
        log.push(`${what}, store at ${e}: ok (${s.recovery.journal})`);
      } finally {
        s.close();
      }
    }
    console.log(
      log.join("\n") + "\nrecoveries: " +
        [...tally].map(([k, v]) => `${k} ×${v}`).join(", "),
    );
    assert.ok(lastVerified > 0, "the writer never committed an epoch");
  });
});
