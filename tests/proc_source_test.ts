/**
 * The `proc:` source against live python3 child processes. The scenarios
 * run in tests/_proc_scenario.ts as their own `deno run -A` process: Deno
 * treats /proc/PID as privileged, which the test command does not grant.
 */

import { assert, assertEquals } from "./_assert.ts";

const SCENARIO = new URL("./_proc_scenario.ts", import.meta.url).pathname;

// deno-lint-ignore no-explicit-any
async function scenario(mode: string): Promise<any> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCENARIO, mode],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert(out.success, `scenario ${mode} failed:\n${stderr}\n${stdout}`);
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

Deno.test("proc: a process that maps, writes, frees and grows memory: at every committed epoch the backup rebuilds its exact layout and contents", async () => {
  const r = await scenario("churn");
  assertEquals(r.checked, 10, "ten epochs compared with the process's memory");
  assert(
    r.layoutChanges >= 3,
    `mappings appeared, grew, shrank or vanished between epochs (${r.layoutChanges} of 9 changed)`,
  );
  assertEquals(r.notes, []);
});

Deno.test("proc: a mapping that cannot be read is replicated as zeros, marked in the layout and reported", async () => {
  const r = await scenario("unreadable");
  assertEquals(r.unreadable.length, 1, JSON.stringify(r));
  assert(/Input\/output error/.test(r.unreadable[0]), r.unreadable[0]);
  assertEquals(r.notes.length, 1, "reported once, not at every epoch");
  assert(/cannot be read .* marked unreadable/.test(r.notes[0]), r.notes[0]);
});

Deno.test("proc: a process that exits mid-run fails the capture clearly and makes no epoch", async () => {
  const r = await scenario("exit");
  assert(/process \d+ exited/.test(r.message), r.message);
  assertEquals(r.after, r.before, "no partial epoch");
});

Deno.test("proc: a process that outgrows its arena fails the capture, naming the size to use, and keeps running", async () => {
  const r = await scenario("overflow");
  assert(
    new RegExp(
      `no longer fit the ${r.size}-byte image; restart the primary with proc:\\d+\\?size=\\d+`,
    ).test(r.message),
    r.message,
  );
  assert(r.stateAfter !== "T", `the process was resumed (${r.stateAfter})`);
});

Deno.test("proc: bad specs name what is wrong", async () => {
  const { messages } = await scenario("bad");
  assert(/does not exist/.test(messages[0]), messages[0]);
  assert(
    /"abc" is not a process id; expected proc:PID/.test(messages[1]),
    messages[1],
  );
  assert(
    /size=4K is smaller than the process's \d+ bytes/.test(messages[2]),
    messages[2],
  );
  assert(/unknown option "colour"/.test(messages[3]), messages[3]);
  assert(
    /dirty=sometimes: expected dirty=auto or dirty=scan/.test(messages[4]),
    messages[4],
  );
});
