/** Small argument-parsing helpers shared by the tools (no @std here). */

/** Parsed `--name value` / `--flag` options and positional arguments. */
export interface ParsedArgs {
  positional: string[];
  options: Map<string, string[]>;
}

/**
 * Parses argv. `flags` take no value; every other `--name` takes the next
 * argument (or `--name=value`). Unknown names are errors.
 */
export function parseArgs(
  argv: string[],
  valued: string[],
  flags: string[],
): ParsedArgs {
  const positional: string[] = [];
  const options = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    let value: string;
    if (flags.includes(name)) {
      if (eq >= 0) throw new UsageError(`--${name} takes no value`);
      value = "true";
    } else if (valued.includes(name)) {
      if (eq >= 0) value = arg.slice(eq + 1);
      else if (i + 1 < argv.length) value = argv[++i];
      else throw new UsageError(`--${name} needs a value`);
    } else {
      throw new UsageError(`unknown option --${name}`);
    }
    const list = options.get(name) ?? [];
    list.push(value);
    options.set(name, list);
  }
  return { positional, options };
}

/** A bad command line: printed with the usage, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Parses a non-negative integer option. */
export function intOption(value: string, name: string, min = 0): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) {
    throw new UsageError(
      `--${name} must be an integer >= ${min}, got "${value}"`,
    );
  }
  return n;
}

/** Formats bytes with binary units. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(2)} GiB`;
}

/** Runs a CLI main: usage errors exit 2 with the usage, other errors exit 1 with their message. */
export async function runMain(
  usage: string,
  main: () => void | Promise<void>,
): Promise<void> {
  try {
    await main();
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n\n${usage}`);
      Deno.exit(2);
    }
    console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(1);
  }
}
