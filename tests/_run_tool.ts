/** Runs a tool of this project as a real subprocess, for the CLI tests. */

const ROOT = new URL("..", import.meta.url).pathname;

/** What a tool run printed and how it exited. */
export interface ToolRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** `deno run <permissions> tools/<tool>.ts <args>` from the project root. */
export async function runTool(
  tool: string,
  permissions: string[],
  args: string[],
): Promise<ToolRun> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, `${ROOT}tools/${tool}.ts`, ...args],
    cwd: ROOT,
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
