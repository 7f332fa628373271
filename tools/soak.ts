/**
 * `deno task soak`: the long reliability run. Kills roles at random instants
 * (tools/crash_soak.ts, at least 200 trials) and feeds damaged input to every
 * decoder (tools/fuzz.ts, at least 1,000,000 cases), then regenerates
 * `RELIABILITY.md` from what they printed: what each ack policy guarantees,
 * the faults tried, how many times, and the outcomes.
 *
 *     deno run -A --unstable-net tools/soak.ts [--trials 200] [--cases 1000000]
 *       [--seed S] [--out RELIABILITY.md]
 *
 * Progress goes to stderr. Exits 1 if either part found a problem (the file
 * is written anyway, saying so).
 * @module
 */

import { intOption, parseArgs, runMain, UsageError } from "../src/_cli.ts";

const ROOT = new URL("..", import.meta.url).pathname;

const USAGE =
  `usage: deno task soak [--trials N] [--cases N] [--seed S] [--out FILE]

Runs the crash soak (--trials, default 200, at least 200 for RELIABILITY.md)
and the fuzz soak (--cases, default 1000000), then writes --out (default
RELIABILITY.md at the project root) with their tables. Progress on stderr.
Refuses to run on a tree with uncommitted changes: the file names the commit
it measured.`;

interface Part {
  title: string;
  command: string;
  table: string;
  ok: boolean;
  seconds: number;
}

/** Runs a tool, passing its stderr through, and keeps its stdout. */
async function runPart(
  title: string,
  tool: string,
  args: string[],
): Promise<Part> {
  const command = `deno run -A --unstable-net tools/${tool} ${args.join(" ")}`;
  console.error(`soak: ${title}: ${command}`);
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-net", `${ROOT}tools/${tool}`, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "inherit",
  }).output();
  return {
    title,
    command,
    table: new TextDecoder().decode(out.stdout).trim(),
    ok: out.success,
    seconds: (performance.now() - t0) / 1000,
  };
}

async function commit(): Promise<string> {
  try {
    const out = await new Deno.Command("git", {
      args: ["rev-parse", "--short", "HEAD"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "null",
    }).output();
    return new TextDecoder().decode(out.stdout).trim() || "unknown";
  } catch {
    return "unknown";
  }
}

/** `git status --porcelain`'s first lines, or "" for a clean tree. */
async function uncommitted(): Promise<string> {
  const out = await new Deno.Command("git", {
    args: ["status", "--porcelain", "--untracked-files=no"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `git status failed: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n")
    .filter((l) => l);
  return lines.slice(0, 3).join("; ") +
    (lines.length > 3 ? `; and ${lines.length - 3} more` : "");
}

const GUARANTEES = `## What is guaranteed

Whatever the ack policy and whatever is killed, at any instant:

- **Nothing torn.** Each backup's \`DIR/ID.img\` files together equal the
  images of exactly one checkpoint (one epoch the primary produced), never a
  mix: an epoch reaches the files only through a complete, checksummed redo
  journal, and \`state.json\` is replaced by rename. After a crash the backup
  redoes a whole journal or drops a torn one, then resumes from its store and
  catches up from its upstream (from the retained log, or by a base sync).
- **Nothing unverified.** Every epoch is checked against the digests the
  primary computed (per image, after the epoch) before it is applied, on every
  relay and backup; a damaged epoch (bit flips, a cut or reordered stream,
  frames of another epoch or lineage, an encoder bug) is rejected and the
  replica stays at its last epoch. The digests are 64-bit sums of
  non-cryptographic block hashes: they catch accidents, not an attacker —
  whoever can write into the stream can make an epoch whose digests match.
- **Authenticity comes from the channel, not the digests.** On \`tls:\`,
  \`quic:\` and \`wss:\` links TLS protects every frame after the handshake:
  nobody on the path can read or change an epoch. On \`tcp:\` and \`ws:\`
  nothing does: anyone on the path can read the token and change epochs, so
  use TLS across any network you do not control.
- **Nothing from strangers.** With a token (\`--token-file\`), an upstream
  without it is refused on its HELLO. With a CA (\`--ca\` on a \`tls:\`,
  \`quic:\` or \`wss:\` listener), the upstream must also answer a fresh
  random challenge, sent on each connection, with a PROOF signed by the key of
  a certificate from that CA over the challenge and the name it dialed. This
  is a certificate-bound proof inside TLS, not TLS client authentication (Deno's
  listeners cannot ask for client certificates): a captured proof is refused
  on any other connection, and a server cannot pass on a proof made for it;
  it does not bind the proof to the TLS session, so a man in the middle
  holding a certificate of the same CA for the dialed name could relay it. A
  HELLO naming images larger than \`--max-image-bytes\` or in all than
  \`--max-total-image-bytes\` is refused. Nothing of an upstream's images is
  allocated before all of that passed.
- **One primary per term (with \`--etcd\`).** A primary holds the cluster's
  leader key in etcd under a lease, taken in the same transaction that raises
  the term; every stream carries its term, and relays and backups refuse an
  older one. A primary stops reporting commits and releasing held output as
  soon as etcd has not confirmed its lease for the lease time less a margin,
  counted from when it *sent* the last confirmed keep-alive; etcd, counting
  from when it received it, cannot expire the lease earlier, so no other node
  can take the term while the old primary still commits.
- **An election loses no committed epoch.** An epoch the old primary reported
  committed under \`quorum:K\` was acked by K of its N peers at the policy's
  level, before its lease expired, hence before the leader key went. A
  candidate only counts records its fellow peers published after that moment,
  waits for N−K+1 of them (any N−K+1 peers include one of those K; \`all\` is
  K = N: one record; \`any\` is K = 1: all N), and only the most advanced of
  them, if it is a candidate, may take the next term — so the new primary
  holds every committed epoch, to the level the policy promised (under
  \`applied\`, a peer that restarted in between holds only its store, as that
  level says). Relays publish records but are not counted (they keep no
  store and are never candidates): a primary is replaced only if N−K+1 of its
  other peers report.
- **A replaced primary never acts again.** Once its lease is gone and a newer
  term exists, a primary halts its sources (a guest paused, its held output
  never released), and with \`--listen\`/\`--store\` follows the new primary as
  a backup: it is brought to the new history by block hashes.
- **A rejoin installs nothing a base sync would not.** Rejoin by block hashes
  sends only the pages whose digests differ, but the follower copies its
  images, overwrites those pages and checks every image's whole digest against
  the sender's before replacing anything, as after a base sync. Online verify
  (\`POST /verify\`) rehashes what each peer stores; like every digest here it
  finds damage and divergence, not an attacker.
- **A backup that cannot store stops acking.** If its store cannot be written
  (and reopening does not help), a backup refuses epochs and upstreams with
  the reason, \`/healthz\` answers 503 and \`patchwire_store_healthy\` is 0,
  until the store takes writes again.

What a *committed* epoch means depends on the policy (\`--ack\` names the
peers, \`--ack-level\` how far they must have taken it):

| \`--ack-level\` | the epoch, once committed, is | it survives |
| --- | --- | --- |
| \`durable\` | written to the named backups' stores and fsynced before they acked | SIGKILL of any role (tried below), and by design power loss of the backups (journal, images and state are fsynced in order; SIGKILL cannot drop the page cache, so that part is not tried here); lost only if every named backup loses its disk |
| \`applied\` (default) | verified and applied in the named backups' memory; their stores follow within 100 ms or 16 epochs | SIGKILL of a backup while its upstream lives (it resumes from its store and is sent the rest again); if the backup and every upstream holding the epoch die together, the backup keeps an earlier epoch (whole) |
| \`received\` | all its frames reached the named backups, not yet verified | what \`applied\` survives, once verified; a corrupt epoch is still rejected, never applied |

\`--ack all\` names every peer, \`quorum:K\` any K of them, \`any\` one, \`none\`
none (the primary commits at once: nothing is promised beyond "nothing torn").
A relay acks upstream only once its own policy over its peers is met, so the
guarantee holds end to end through relays. An epoch the primary never reported
committed may be on some backups and not others; a promoted backup continues
from its own last epoch.`;

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, ["trials", "cases", "seed", "out"], [
    "help",
  ]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const opt = (k: string) => args.options.get(k)?.at(-1);
  const trials = intOption(opt("trials") ?? "200", "trials", 1);
  const cases = intOption(opt("cases") ?? "1000000", "cases", 1);
  const seed = intOption(opt("seed") ?? String(Date.now() % 1e9), "seed", 0);
  const out = opt("out") ?? `${ROOT}RELIABILITY.md`;
  const dirty = await uncommitted();
  if (dirty) {
    throw new Error(
      `the tree has uncommitted changes (${dirty}): commit them first, so RELIABILITY.md names the code it measured`,
    );
  }
  const started = new Date();

  const crash = await runPart("crash soak", "crash_soak.ts", [
    "--trials",
    String(trials),
    "--seed",
    String(seed),
  ]);
  const fuzz = await runPart("fuzz soak", "fuzz.ts", [
    "--cases",
    String(cases),
    "--seed",
    String(seed),
  ]);

  const verdict = (p: Part) =>
    p.ok ? "no problem found" : "**PROBLEMS FOUND** (see the table)";
  const text = `# Reliability

Regenerated by \`deno task soak\` (\`tools/soak.ts\`) on ${started.toISOString()},
commit \`${await commit()}\`, seed ${seed}, on this project's machine (2 cores of
a shared VM). Do not edit by hand: rerun the soak.

${GUARANTEES}

## Faults tried, and what happened

### Crashes: ${trials} trials, ${verdict(crash)} (${crash.seconds.toFixed(0)} s)

Each trial starts a primary, a relay and backups as processes over TCP, kills
one role with SIGKILL — at a random instant, or at a fault point inside it
(mid-frame on the wire, mid-apply between image writes, mid-fsync, between the
journal and the state file; \`PATCHWIRE_FAULT\`, \`src/_fault.ts\`) — restarts
it, lets replication run on, and checks every backup's store against a model
of every checkpoint: a *torn image* is an \`ID.img\` that equals no
checkpoint's image, a *lost epoch* one the primary reported committed that a
backup its policy named does not hold after recovery. \`${crash.command}\`

${crash.table || "(no output)"}

### Bad input: ${cases.toLocaleString("en")} cases, ${verdict(fuzz)} (${
    fuzz.seconds.toFixed(0)
  } s)

Mutated, truncated, oversized and reordered input to the frame decoder, the
handshake (a real backup's upstream link), the framed byte stream and the
control API. A *crash* is an exception other than the component's own error
types, a *hang* a case that did not finish, *images changed* a rejected input
that changed the receiver's images or store. \`${fuzz.command}\`

${fuzz.table || "(no output)"}

### Checked on every CI run (\`deno task test\`)

- \`tests/crash_test.ts\`: at least 20 crash trials as above.
- \`tests/fuzz_test.ts\`: at least 50,000 bad-input cases as above.
- \`tests/wan_test.ts\`: emulated WAN in network namespaces (\`tools/wan.ts\`,
  \`tools/wan_forwarder.ts\`): steady replication under delay and loss; a
  relay partitioned for seconds catching up from the retained log without a
  base sync; a partition longer than the log covers, then a base sync; a far,
  slow backup under \`quorum\`.
- \`tests/untrusted_peers_test.ts\`: wrong token and missing or foreign client
  certificates refused on every transport before any frame is used, logged and
  counted; a captured proof replayed on another connection refused; HELLOs
  over the image limits refused before anything is allocated; frames over \`--max-frame-bytes\` refused; a peer that stops reading
  held at \`--send-buffer-bytes\` and the log at \`--log-bytes\` while commits go
  on, then base-synced; the control API's token.
- \`tests/roles_test.ts\`: corrupted frames rejected by relays and backups, the
  store unchanged; restarts catching up; store write failures recovered.
- \`tests/backup_store_failure_test.ts\`: a backup whose store fills up (a
  real full tmpfs) or fails stops acking, reports unhealthy, and recovers.
`;
  await Deno.writeTextFile(out, text);
  // Formatted as the repository's files are (CI checks \`deno fmt\`).
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", out] })
    .output();
  console.error(`soak: wrote ${out}`);
  if (!crash.ok || !fuzz.ok) {
    throw new Error(
      `problems found: ${
        [crash, fuzz].filter((p) => !p.ok).map((p) => p.title).join(", ")
      } (rerun with --seed ${seed})`,
    );
  }
});
