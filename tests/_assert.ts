// Re-exported so tests read the same everywhere (no @std here).
export {
  deepStrictEqual as assertEquals,
  ok as assert,
  throws as assertThrows,
} from "node:assert/strict";

/** Awaits `fn`, which must reject with an instance of `type`; returns the error. */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  type: new (...args: never[]) => E,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof type) return e;
    throw new Error(
      `expected a ${type.name}, got ${
        e instanceof Error ? e.name : typeof e
      }: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  throw new Error(`expected a ${type.name}, but it resolved`);
}
