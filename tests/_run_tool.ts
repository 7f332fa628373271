/** Runs a tool of this project as a real subprocess, for the CLI tests. */

import { runToolProcess } from "../tools/_role_process.ts";

/** What a tool run printed and how it exited. */
export interface ToolRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** `deno run <permissions> tools/<tool>.ts <args>` from the project root. */
export function runTool(
  tool: string,
  permissions: string[],
  args: string[],
): Promise<ToolRun> {
  return runToolProcess(tool, args, permissions);
}
