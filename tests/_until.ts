/**
 * Waits for a condition a test cannot await directly (a role's state that
 * changes on its own time, often read over HTTP), checking every `everyMs`.
 * A condition that throws (a role not serving yet) counts as not yet, and
 * its last error is in the message if the wait ends: after `ms`, with what
 * it waited for. A bound on a wait, not a timed assertion.
 */
export async function until(
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 30_000,
  everyMs = 10,
): Promise<void> {
  const end = Date.now() + ms;
  let last = "";
  for (;;) {
    try {
      if (await cond()) return;
    } catch (e) {
      last = ` (last: ${(e as Error).message})`;
    }
    if (Date.now() > end) {
      throw new Error(`timed out waiting for ${what}${last}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
