/**
 * Waits for a condition the test cannot await directly (a role's state that
 * changes on its own time), checking every 10 ms; fails after `ms` with what
 * it waited for. A bound on a wait, not a timed assertion.
 */
export async function until(
  cond: () => boolean,
  what: string,
  ms = 10_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
