/**
 * Test-only fault points: named instants where a crash test can make the
 * process die by SIGKILL, as if the machine lost it right there.
 *
 * `PATCHWIRE_FAULT=NAME` (or `NAME:N`, the Nth time `NAME` is reached in
 * this process; default 1) arms one point. The variable is read once, when
 * this module loads; unset (or unreadable without `--allow-env`), every
 * point is a comparison against null and nothing more.
 *
 * The points, by role (the crash harness in `tests/_crash_harness.ts` names
 * them; keep the two lists in step):
 *
 * - any role: `send.mid-frame` — a message's length prefix and half its
 *   payload are on the wire, the rest never will be;
 * - primary: `primary.encoded` — an epoch captured and encoded, nothing of
 *   it logged or sent; `primary.committing` — its acks are in, the commit
 *   not yet reported;
 * - relay: `relay.forward` — a whole epoch received, none of it forwarded;
 * - backup store: `store.journal.unsealed` (the journal record has its magic
 *   but not its checksum), `store.journal.written` (journal whole, no image
 *   touched), `store.apply.mid` (half the ranges written to the images),
 *   `store.images.fsync` (images written, about to be fsynced; durable
 *   only), `store.rename.before` (a state or switch file written to its
 *   temporary name, about to be renamed into place), `store.state.renamed`
 *   (state.json replaced, journal not yet cleared), `store.replace.staged`
 *   (a base sync's new images written as `ID.img.new`, no switch record),
 *   `store.replace.switched` (switch record written, nothing renamed).
 *
 * @example
 * ```ts
 * import { faultPoint } from "./_fault.ts";
 * // With PATCHWIRE_FAULT=demo.point:2 the process dies here on the second pass.
 * faultPoint("demo.point");
 * ```
 * @module
 */

/** The environment variable that arms a fault point. */
export const FAULT_ENV = "PATCHWIRE_FAULT";

/** How a `PATCHWIRE_FAULT` value must look. */
const SPEC = /^([A-Za-z0-9_.-]+)(?::(\d+))?$/;

interface Armed {
  name: string;
  /** Passes left before the one that kills. */
  left: number;
}

/** Parses a `PATCHWIRE_FAULT` value: `NAME` or `NAME:N` (N ≥ 1). */
export function parseFaultSpec(text: string): { name: string; count: number } {
  const m = SPEC.exec(text.trim());
  const count = Number(m?.[2] ?? 1);
  if (!m || !Number.isSafeInteger(count) || count < 1) {
    throw new RangeError(
      `${FAULT_ENV}="${text}": expected NAME or NAME:N (N ≥ 1: die the Nth time NAME is reached)`,
    );
  }
  return { name: m[1], count };
}

function readArmed(): Armed | null {
  let text: string | undefined;
  try {
    // Never prompt, never throw where --allow-env is missing: no fault then.
    const env = Deno.permissions.querySync({
      name: "env",
      variable: FAULT_ENV,
    });
    if (env.state !== "granted") return null;
    text = Deno.env.get(FAULT_ENV);
  } catch {
    return null;
  }
  if (!text) return null;
  const { name, count } = parseFaultSpec(text);
  return { name, left: count };
}

const armed: Armed | null = readArmed();

/** True when a fault point is armed: guards points whose call would cost something (an await). */
export const faultsArmed: boolean = armed !== null;

/** True if this pass of `name` is the one that must kill. */
function due(name: string): boolean {
  if (armed === null || armed.name !== name) return false;
  return --armed.left === 0;
}

/**
 * Dies by SIGKILL here if `PATCHWIRE_FAULT` names this point and this is the
 * pass it counts to; otherwise returns at once.
 */
export function faultPoint(name: string): void {
  if (armed !== null && due(name)) killSelf(name);
}

/**
 * As {@linkcode faultPoint}, but when due, first runs `partial` (which puts
 * part of something in place, e.g. half a frame on the wire) and dies once
 * it settled. Not due: resolves at once.
 */
export function faultPointAfter(
  name: string,
  partial: () => Promise<unknown>,
): Promise<void> {
  if (!due(name)) return Promise.resolve();
  const die = () => killSelf(name);
  return partial().then(die, die);
}

/** SIGKILL to this process: no unload handlers, no flushing, nothing after. */
function killSelf(name: string): never {
  console.error(`${FAULT_ENV}: fault point ${name} reached: SIGKILL`);
  try {
    Deno.kill(Deno.pid, "SIGKILL");
  } catch {
    // No --allow-run (relays and backups): ask libc directly below.
  }
  try {
    const libc = Deno.dlopen("libc.so.6", {
      kill: { parameters: ["i32", "i32"], result: "i32" },
    });
    libc.symbols.kill(Deno.pid, 9);
  } catch {
    // No --allow-ffi or no glibc: exit as abruptly as Deno allows.
  }
  Deno.exit(137);
}
