/**
 * `deno run -A --unstable-net tools/fuzz.ts --cases N [--seed S] [--target NAME[,NAME...]] [--case I] [--known ...]`
 *
 * The bad-input fuzz harness (tests/_fuzz.ts) from the command line: `deno
 * task soak` runs it with a million cases.
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import {
  formatErrorKinds,
  formatExcluded,
  formatSummary,
  type FuzzProgress,
  KNOWN_ISSUES,
  type KnownIssue,
  runFuzzIsolated,
  splitCases,
  type TargetName,
  TARGETS,
  TOLERATED,
} from "../tests/_fuzz.ts";

const USAGE =
  `usage: deno run -A --unstable-net tools/fuzz.ts --cases N [--seed S] [--target NAME[,NAME...]] [--case I] [--known LIST]

Feeds damaged input to everything that decodes bytes from a peer or a client
and checks: no crash, no hang, a clear error for every rejected input, the
receiver's images (and a backup's store) unchanged by it, valid input still
taken afterwards. Progress goes to stderr; a Markdown table (target, cases,
accepted, rejected, crashes, hangs, images changed, ...) to stdout. Exits 1 if
anything broke, printing each case with the command that reruns it alone.

  --cases N        cases in all, split across the targets (default 10000)
  --seed S         seed (default: random, printed)
  --target LIST    only these targets: ${TARGETS.join(", ")}
  --case I         rerun case I of the one --target alone
  --known LIST     known issues to tolerate: "default" (those tests/fuzz_test.ts
                   tolerates), "none", or ids: ${
    Object.keys(KNOWN_ISSUES).join(", ")
  }
  --hang-ms MS     a case taking longer is a hang (default 30000)
  --help           this text`;

function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  return s < 120 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

await runMain(USAGE, async () => {
  const args = parseArgs(
    Deno.args,
    ["cases", "seed", "target", "case", "known", "hang-ms"],
    ["help"],
  );
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const one = (name: string) => args.options.get(name)?.at(-1);
  const targets = (one("target")?.split(",") ?? [...TARGETS]).map((t) => {
    if (!TARGETS.includes(t as TargetName)) {
      throw new UsageError(
        `unknown target "${t}", expected one of ${TARGETS.join(", ")}`,
      );
    }
    return t as TargetName;
  });
  const seed = one("seed") !== undefined
    ? intOption(one("seed")!, "seed")
    : crypto.getRandomValues(new Uint32Array(1))[0];
  const first = one("case") !== undefined
    ? intOption(one("case")!, "case")
    : undefined;
  if (first !== undefined && targets.length !== 1) {
    throw new UsageError("--case needs exactly one --target");
  }
  const cases = first !== undefined
    ? 1
    : intOption(one("cases") ?? "10000", "cases", 1);
  const knownText = one("known") ?? "default";
  const known: readonly KnownIssue[] = knownText === "default"
    ? TOLERATED
    : knownText === "none"
    ? []
    : knownText.split(",").map((k) => {
      if (!(k in KNOWN_ISSUES)) {
        throw new UsageError(
          `unknown known issue "${k}", expected ${
            Object.keys(KNOWN_ISSUES).join(", ")
          }, "default" or "none"`,
        );
      }
      return k as KnownIssue;
    });
  const hangMs = intOption(one("hang-ms") ?? "30000", "hang-ms", 100);
  const split = first === undefined ? splitCases(cases, targets) : null;
  console.error(
    `fuzz: seed ${seed}, ${
      first !== undefined
        ? `case ${first} of ${targets[0]}`
        : `${cases} cases (${
          targets.map((t) => `${t} ${split![t]}`).join(", ")
        })`
    }; tolerating ${known.length ? known.join(", ") : "no known issue"}`,
  );
  const t0 = performance.now();
  let last = 0;
  const summary = await runFuzzIsolated({
    cases,
    seed,
    targets,
    first,
    known,
    hangMs,
    onProgress(p: FuzzProgress) {
      const now = performance.now();
      if (now - last < 2000 && p.done !== p.total) return;
      last = now;
      const rate = p.casesDone / (p.elapsedMs / 1000);
      const eta = rate > 0 ? (p.casesTotal - p.casesDone) / rate * 1000 : 0;
      console.error(
        `fuzz: ${p.casesDone}/${p.casesTotal} cases, ${p.target} ${p.done}/${p.total}, ${
          Math.round(rate)
        } cases/s, ${duration(p.elapsedMs)} elapsed${
          p.casesDone < p.casesTotal ? `, about ${duration(eta)} left` : ""
        }`,
      );
    },
  });
  console.error(
    `fuzz: ${summary.cases} cases in ${duration(performance.now() - t0)}`,
  );
  // No heading: the output reads on its own and inside RELIABILITY.md (tools/soak.ts).
  console.log(
    `Seed ${seed}: ${summary.cases} cases in ${duration(summary.ms)} (${
      Math.round(summary.casesPerSecond)
    } cases/s), tolerating ${
      known.length ? known.join(", ") : "no known issue"
    }.\n`,
  );
  console.log(formatSummary(summary));
  console.log(`\n${formatExcluded(summary)}`);
  console.log(
    `\nRejections by kind (most frequent):\n\n${formatErrorKinds(summary)}`,
  );
  const seen = summary.results.filter((r) => r.known > 0);
  if (seen.length) {
    console.log(
      `\nKnown issues (tolerated, counted above):\n\n${
        known.filter((k) =>
          summary.results.some((r) => r.errorsByKind[`known issue: ${k}`])
        ).map((k) => `- ${k}: ${KNOWN_ISSUES[k].summary}`).join("\n")
      }`,
    );
  }
  if (summary.violations.length) {
    console.log(`\nViolations (${summary.violations.length}):\n`);
    for (const v of summary.violations.slice(0, 50)) {
      console.log(
        `- ${v.target} case ${v.caseIndex}: **${v.kind}**${
          v.issue ? ` (${v.issue})` : ""
        }: ${v.message}\n  input: ${
          v.input || "(see the case)"
        }\n  rerun: \`${v.repro}\``,
      );
    }
    if (summary.violations.length > 50) {
      console.log(`- … and ${summary.violations.length - 50} more`);
    }
    Deno.exit(1);
  }
});
