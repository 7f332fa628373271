import { assert, assertEquals } from "./_assert.ts";
import { SeriesWriter } from "../src/series.ts";
import { runTool, type ToolRun } from "./_run_tool.ts";
import { SyntheticWorkload } from "../src/synthetic.ts";
import { replaySeries } from "../src/replay.ts";

async function writeSeries(
  dir: string,
  epochs: number,
  size: number,
): Promise<void> {
  const w = new SyntheticWorkload({
    seed: 31,
    images: 1,
    size,
    dirtyFraction: 0.05,
  });
  const writer = await SeriesWriter.create(dir, {
    name: "synthetic-test",
    source: "synthetic:seed=31",
    pageSize: 4096,
    size,
    intervalMs: 100,
    notes: "written by tests/replay_test.ts",
  });
  for (let e = 0; e < epochs; e++) {
    if (e > 0) w.step();
    await writer.append(w.images[0]);
  }
  await writer.close();
}

function run(args: string[]): Promise<ToolRun> {
  return runTool(
    "replay",
    ["--allow-read", "--allow-ffi", "--allow-env"],
    args,
  );
}

Deno.test("replay verifies every epoch of a series and totals the pairs", async () => {
  const dir = await Deno.makeTempDir();
  await writeSeries(dir, 5, 200 * 4096 + 123);
  const result = await replaySeries(dir, { level: "max" });
  assertEquals(result.pairs, 4);
  assert(result.verified);
  assert(
    result.dirtyPageBytes > 0 && result.wireBytes > 0 &&
      result.wireBytes < result.dirtyPageBytes,
  );
  assertEquals(result.rows.length, 4);
  const limited = await replaySeries(dir, { limit: 2 });
  assertEquals(limited.pairs, 2);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the replay CLI prints a table and, with --json, a JSON object on its last line", async () => {
  const dir = await Deno.makeTempDir();
  await writeSeries(dir, 4, 64 * 4096);
  const { code, stdout } = await run([
    dir,
    "--json",
    "--level",
    "fast",
    "--limit",
    "2",
  ]);
  assertEquals(code, 0);
  const lines = stdout.trim().split("\n");
  assert(lines[0].includes("dirty pg"), "table header");
  const totals = JSON.parse(lines.at(-1)!);
  assertEquals(totals.series, "synthetic-test");
  assertEquals(totals.pairs, 2);
  assertEquals(totals.verified, true);
  assertEquals(totals.imageBytes, 64 * 4096);
  for (const key of ["dirtyPageBytes", "wireBytes", "encodeMs", "decodeMs"]) {
    assert(typeof totals[key] === "number", `${key} is a number`);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the replay CLI rejects bad arguments with a clear error", async () => {
  const missing = await run(["/nonexistent/series"]);
  assertEquals(missing.code, 1);
  assert(missing.stderr.includes("meta.json"), missing.stderr);
  const badLevel = await run(["/tmp", "--level", "turbo"]);
  assert(
    badLevel.code !== 0 && badLevel.stderr.includes("fast, max"),
    badLevel.stderr,
  );
  const none = await run([]);
  assertEquals(none.code, 2);
  assert(none.stderr.includes("usage:"));
  const help = await run(["--help"]);
  assertEquals(help.code, 0);
  assert(help.stdout.includes("--limit"));
});
