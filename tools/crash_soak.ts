/**
 * `deno run -A --unstable-net tools/crash_soak.ts --trials N [--seed S] [--first I] [--roles primary,relay,backup]`
 *
 * Runs N crash trials (see `tests/_crash_harness.ts`): progress on stderr,
 * the Markdown table on stdout. Exits 1 if any trial found a torn image, a
 * lost epoch or another problem, naming how to rerun it.
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import {
  formatTable,
  type Role,
  ROLES,
  runCrashTrials,
  type TrialRecord,
} from "../tests/_crash_harness.ts";

const USAGE =
  `usage: deno run -A --unstable-net tools/crash_soak.ts --trials N [--seed S]
         [--first I] [--roles primary,relay,backup] [--verbose]

Starts real topologies (primary → relay → 2-3 backups over TCP), kills one
role per trial with SIGKILL at a random instant or at a fault point
(PATCHWIRE_FAULT), restarts it, and checks every backup's store against a
model of every checkpoint: no torn image, no committed epoch lost. Prints a
Markdown table per role killed and instant (trials, torn images, lost epochs,
other failures, recovery time p50/p99) on stdout, progress on stderr.

  --trials N   number of trials (default 200)
  --seed S     seed of every choice (default 1); trial I of a seed is always
               the same plan
  --first I    first trial index (default 0): --first I --trials 1 reruns trial I
  --roles R    kill only these roles (comma-separated)
  --verbose    print every problem's process logs to stderr`;

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, ["trials", "seed", "first", "roles"], [
    "help",
    "verbose",
  ]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const one = (name: string) => args.options.get(name)?.at(-1);
  const trials = intOption(one("trials") ?? "200", "trials", 1);
  const seed = intOption(one("seed") ?? "1", "seed");
  const first = intOption(one("first") ?? "0", "first");
  const roles = (one("roles") ?? ROLES.join(",")).split(",").map((r) =>
    r.trim()
  );
  for (const r of roles) {
    if (!ROLES.includes(r as Role)) {
      throw new UsageError(
        `--roles: unknown role "${r}"; expected ${ROLES.join(", ")}`,
      );
    }
  }
  const verbose = args.options.has("verbose");
  const t0 = performance.now();
  let done = 0;
  const bad: TrialRecord[] = [];
  const { summary } = await runCrashTrials({
    trials,
    seed,
    first,
    roles: roles as Role[],
    onTrial: (r) => {
      done++;
      const p = r.plan;
      const what = `${p.role} at ${p.instant}${
        p.count ? `:${p.count}` : ` +${p.delayMs} ms`
      } (${p.policy})`;
      const rec = r.recoveryMs === null
        ? "no recovery"
        : `recovered in ${Math.round(r.recoveryMs)} ms`;
      const store = r.storeRecovery === null
        ? ""
        : `, store recovery ${r.storeRecovery} at epoch ${r.recoveredEpoch}`;
      const verdict = r.problems.length === 0
        ? "ok"
        : `${r.problems.length} problem(s): torn ${r.tornImages}, lost ${r.lostEpochs}`;
      console.error(
        `trial ${p.index} [${done}/${trials}] ${what}: ${rec}${store}, committed ${r.committed}, stores at ${
          r.storedEpochs.join("/")
        }; ${verdict} (${(r.ms / 1000).toFixed(1)} s)`,
      );
      if (r.problems.length) {
        bad.push(r);
        for (const m of r.problems) console.error(`  - ${m}`);
        if (verbose && r.logs) console.error(r.logs);
      }
    },
  });
  const secs = (performance.now() - t0) / 1000;
  console.log(formatTable(summary));
  console.log(
    `\n${trials} trials (seed ${seed}) in ${secs.toFixed(0)} s, ${
      (secs / trials).toFixed(1)
    } s per trial.`,
  );
  if (bad.length) {
    console.error(`\n${bad.length} trial(s) found problems. To rerun one:`);
    for (const r of bad) {
      console.error(
        `  deno run -A --unstable-net tools/crash_soak.ts --seed ${seed} --first ${r.plan.index} --trials 1${
          roles.length < ROLES.length ? ` --roles ${roles.join(",")}` : ""
        } --verbose`,
      );
    }
    Deno.exit(1);
  }
});
