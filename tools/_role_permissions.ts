/**
 * The Deno flags each role's `deno task` runs it with, read from deno.json,
 * so tests, benchmarks and the WAN tooling spawn roles exactly as users run
 * them (one list to keep, not one per caller).
 * @module
 */

const DENO_JSON = new URL("../deno.json", import.meta.url);

/** A tool that `deno.json` has a task for. */
export type RoleTool = "primary" | "relay" | "backup" | "demo" | "resume";

/**
 * The flags between `run` and the script in `deno task TOOL`, e.g.
 * `["-A", "--unstable-net"]` for the primary.
 */
export function rolePermissions(tool: RoleTool): string[] {
  const tasks = JSON.parse(Deno.readTextFileSync(DENO_JSON)).tasks as Record<
    string,
    string
  >;
  const words = (tasks[tool] ?? "").split(/\s+/);
  const run = words.indexOf("run");
  const script = words.findIndex((w) => w.endsWith(`tools/${tool}.ts`));
  if (run < 0 || script < run) {
    throw new Error(
      `deno.json task "${tool}" is not "deno run FLAGS tools/${tool}.ts": ${
        tasks[tool]
      }`,
    );
  }
  return words.slice(run + 1, script);
}
