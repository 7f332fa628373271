/**
 * Crash safety, with real processes: a primary, a relay and two or three
 * backups replicate over TCP; one role is killed by SIGKILL — at a random
 * instant, or at a fault point mid-frame, mid-apply, around an fsync or a
 * rename — and restarted with the same arguments and store. Afterwards
 * every backup's `ID.img` files are exactly the images of the checkpoint
 * its `state.json` names, and no epoch the primary reported committed is
 * missing from the backups its ack policy names (see
 * `tests/_crash_harness.ts` for how each is checked).
 *
 * 20 trials cover every instant of `INSTANTS` once and rotate through the
 * ack policies; `tools/crash_soak.ts` runs many more.
 */

import { assertEquals } from "./_assert.ts";
import { INSTANTS, planTrial, runTrial } from "./_crash_harness.ts";

const SEED = 20241122;
const TRIALS = Math.max(20, INSTANTS.length);

Deno.test("crash: a role killed at any instant and restarted leaves every backup at one checkpoint, and no committed epoch is lost", async (t) => {
  for (let i = 0; i < TRIALS; i++) {
    const plan = planTrial(SEED, i);
    const when = plan.instant === "random"
      ? `${plan.delayMs} ms after the first commit`
      : `fault point ${plan.instant} (pass ${plan.count})`;
    await t.step(
      `${plan.role}${
        plan.role === "backup" ? ` ${plan.victim}` : ""
      } killed at ${when}, relay policy ${plan.policy}, ${plan.backups} backups`,
      async () => {
        const r = await runTrial(plan);
        const how =
          `\n(rerun: deno run -A --unstable-net tools/crash_soak.ts --seed ${SEED} --first ${i} --trials 1 --verbose)\n${
            r.logs ?? ""
          }`;
        assertEquals(
          r.tornImages,
          0,
          `torn images: ${r.problems.join("; ")}${how}`,
        );
        assertEquals(
          r.lostEpochs,
          0,
          `lost epochs: ${r.problems.join("; ")}${how}`,
        );
        assertEquals(r.problems, [], `problems${how}`);
      },
    );
  }
});
