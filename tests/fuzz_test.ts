/**
 * Bad input. Everything that decodes bytes from a peer or a client — the
 * frame decoder, the epoch decoder, control messages, the handshake at a
 * backup and at a relay, the length-prefixed stream parser, the
 * client-certificate check and the HTTP control API — is fed valid input
 * made by the real encoders and then damaged: bit and byte flips,
 * truncation, junk, oversized lengths and sizes, fields of the wrong type
 * (checksums recomputed), splices from another lineage, dropped,
 * duplicated and reordered messages (see `_fuzz.ts`). Nothing crashes or
 * hangs, every rejection says what was wrong, a rejected input leaves the
 * receiver's images (and a backup's store) exactly as they were, and valid
 * input is still taken afterwards.
 *
 * A failure prints the case and the command that reruns it alone; the
 * longer run is `deno task soak` (tools/fuzz.ts).
 */

import { assert, assertEquals, assertThrows } from "./_assert.ts";
import {
  editFrame,
  fixtureChallenge,
  fixtureProof,
  formatErrorKinds,
  formatExcluded,
  formatSummary,
  FUZZ_SPECS,
  FUZZ_TOKEN,
  fuzzAuthChecker,
  fuzzCorpus,
  FuzzRng,
  type FuzzSummary,
  helloBytes,
  type KnownIssue,
  mutateBytes,
  pack,
  runFuzz,
  runFuzzIsolated,
  TARGETS,
  TOLERATED,
  unclearReason,
} from "./_fuzz.ts";
import { decodeFrame, FRAME_VERSION, FrameError } from "../src/frame.ts";
import {
  AckLevel,
  CONTROL_VERSION,
  type ControlMessage,
  decodeControl,
  encodeControl,
  type Proof,
  ProtocolError,
} from "../src/protocol.ts";
import { DecodeError, EpochDecoder } from "../src/decoder.ts";
import { Backup } from "../src/backup.ts";
import { PeerAuth } from "../src/peer_auth.ts";
import { createControlApp } from "../src/control_plane.ts";
import { FUZZ_CHECK_TIME, FUZZ_PROOF } from "./_fuzz_certs.ts";
import { memoryTransport } from "../transports/memory.ts";

/** The CI run: fixed, so a failure reproduces anywhere. */
const CI_SEED = 8_675_309;
const CI_CASES = 50_000;
/**
 * A second, smaller run whose seed is fixed per commit (the first 8 hex digits
 * of HEAD), to cover new ground with every change while a given commit always
 * runs the same cases: a run never fails on a new day with no code change.
 */
const COMMIT_SEED = commitSeed();
const COMMIT_CASES = 10_000;

function commitSeed(): number {
  try {
    const out = new Deno.Command("git", {
      args: ["rev-parse", "HEAD"],
      cwd: new URL("..", import.meta.url).pathname,
      stdout: "piped",
      stderr: "null",
    }).outputSync();
    const hex = new TextDecoder().decode(out.stdout).trim().slice(0, 8);
    if (out.success && /^[0-9a-f]{8}$/.test(hex)) return parseInt(hex, 16);
  } catch {
    // no git here: the fixed fallback below
  }
  return 20_261_203;
}

function report(s: FuzzSummary): string {
  return `seed ${s.seed}: ${s.cases} cases in ${(s.ms / 1000).toFixed(1)} s (${
    Math.round(s.casesPerSecond)
  } cases/s)\n\n${formatSummary(s)}\n\n${formatExcluded(s)}\n\n${
    formatErrorKinds(s)
  }`;
}

function assertNoViolation(s: FuzzSummary): void {
  console.log(report(s));
  assert(
    s.violations.length === 0,
    `${s.violations.length} violations:\n${
      s.violations.slice(0, 20).map((v) =>
        `- ${v.target} case ${v.caseIndex}: ${v.kind}: ${v.message}\n  input: ${v.input}\n  rerun: ${v.repro}`
      ).join("\n")
    }`,
  );
}

Deno.test("the damage is seeded: the same seed damages the same way, another seed otherwise", async () => {
  const corpus = fuzzCorpus();
  const input = corpus.fast.frames[3][0];
  const run = (seed: number) => {
    const rng = new FuzzRng(seed);
    return Array.from({ length: 50 }, () => mutateBytes(rng, input).bytes);
  };
  assertEquals(run(1), run(1));
  assert(run(1).some((b, i) => b.join() !== run(2)[i].join()));
  const counts = async () => {
    const s = await runFuzz({
      cases: 600,
      seed: 5,
      targets: ["frame", "control", "decoder"],
      keepGoing: true,
    });
    return s.results.map(({ ms: _, ...r }) => r);
  };
  assertEquals(await counts(), await counts());
});

Deno.test("the harness notices: an escaped TypeError is a crash; an endless loop and a promise that never settles are hangs", async () => {
  for (
    const [selfTest, target, kind] of [
      ["crash", "frame", "crash"],
      ["hang-sync", "decoder", "hang"],
      ["hang-async", "stream", "hang"],
    ] as const
  ) {
    const s = await runFuzzIsolated({
      cases: 10,
      seed: 1,
      targets: [target],
      selfTest,
      hangMs: 1500,
    });
    const v = s.violations.find((x) => x.kind === kind);
    assert(
      v,
      `${selfTest} was not reported as a ${kind}: ${
        JSON.stringify(s.violations)
      }`,
    );
    assertEquals([v.target, v.caseIndex], [target, 2]);
    assert(v.repro.includes(`--case 2`), v.repro);
  }
});

Deno.test(`bad input, seed ${CI_SEED}: ${CI_CASES} cases over ${TARGETS.length} targets — no crash, no hang, a clear error for every rejection, images and store unchanged, valid input still taken`, async () => {
  const s = await runFuzzIsolated({
    cases: CI_CASES,
    seed: CI_SEED,
    known: TOLERATED,
  });
  assertNoViolation(s);
  assertEquals(s.cases, CI_CASES);
  for (const r of s.results) {
    // Neither too gentle nor too rough: some input is taken, most refused.
    assert(
      r.accepted > 0 && r.rejected > r.accepted / 2,
      `${r.target}: ${r.accepted} accepted, ${r.rejected} rejected`,
    );
  }
});

Deno.test(`bad input, this commit's seed ${COMMIT_SEED}: ${COMMIT_CASES} more cases`, async () => {
  console.log(
    `this commit's seed: ${COMMIT_SEED} (rerun: node_modules/.bin/deno run -A --unstable-net tools/fuzz.ts --seed ${COMMIT_SEED} --cases ${COMMIT_CASES})`,
  );
  assertNoViolation(
    await runFuzzIsolated({
      cases: COMMIT_CASES,
      seed: COMMIT_SEED,
      known: TOLERATED,
    }),
  );
});

// Bugs the harness found (KNOWN_ISSUES in _fuzz.ts), each fixed: each test
// states the fixed behaviour. An id in TOLERATED (a bug found and not yet
// fixed) skips its test and is tolerated by the runs above.

function knownIssueTest(
  id: KnownIssue,
  name: string,
  fn: () => void | Promise<void>,
): void {
  Deno.test({
    name: `fixed ${id}: ${name}`,
    ignore: TOLERATED.includes(id),
    fn,
  });
}

knownIssueTest(
  "control-type-override",
  "a control message is handled as the type its code says, whatever its body holds",
  () => {
    const m = decodeControl(
      pack(["PWC", CONTROL_VERSION, 5, {
        epoch: 3,
        level: 1,
        type: "base_end",
      }]),
    );
    assertEquals(m.type, "ack");
  },
);

knownIssueTest(
  "json-bigint-magic",
  "a 64-bit integer magic is a FrameError or ProtocolError",
  () => {
    const big = 123456789012345678n;
    assertThrows(
      () =>
        decodeFrame(
          pack([big, FRAME_VERSION, 0, 1, 1, "img0", new Uint8Array(1), 0]),
        ),
      FrameError,
    );
    assertThrows(
      () => decodeControl(pack([big, CONTROL_VERSION, 5, {}])),
      ProtocolError,
    );
  },
);

knownIssueTest(
  "frame-level-flags",
  "flags naming no codec level are a FrameError (and a DecodeError at the decoder)",
  () => {
    const frame = editFrame(fuzzCorpus().fast.frames[1][0], {
      outer: (o) => (o[2] = 3),
    });
    assertThrows(() => decodeFrame(frame), FrameError);
    const d = new EpochDecoder(FUZZ_SPECS.map((s) => ({ ...s })));
    try {
      assertThrows(() => d.receive(frame), DecodeError);
    } finally {
      d.close();
    }
  },
);

knownIssueTest(
  "ops-size-unbounded",
  "an op stream claiming more bytes than its pages can need is refused before anything is allocated",
  () => {
    const frames = fuzzCorpus().fast.frames[1].slice();
    frames[0] = editFrame(frames[0], {
      body: (b) => {
        b.opsCodec = 1;
        b.opsSize = 2 ** 40;
      },
    });
    const d = new EpochDecoder(FUZZ_SPECS.map((s) => ({ ...s })));
    try {
      const e = assertThrowsReturning(() => d.applyEpoch(frames), DecodeError);
      assertEquals(unclearReason(e.message), null);
    } finally {
      d.close();
    }
  },
);

function assertThrowsReturning<E extends Error>(
  fn: () => unknown,
  type: new (...args: never[]) => E,
): E {
  try {
    fn();
  } catch (e) {
    assert(
      e instanceof type,
      `expected ${type.name}, got ${(e as Error).name}: ${
        (e as Error).message
      }`,
    );
    return e;
  }
  throw new Error(`expected ${type.name}, nothing was thrown`);
}

/** One scripted upstream session against `url`: the replies, decoded. */
async function session(
  url: string,
  messages: Uint8Array[],
): Promise<ControlMessage[]> {
  const conn = await memoryTransport.connect(new URL(url));
  const replies: ControlMessage[] = [];
  const reading = (async () => {
    for (let m; (m = await conn.receive()) !== null;) {
      replies.push(decodeControl(m));
    }
  })();
  for (const m of messages) await conn.send(m).catch(() => {});
  await reading;
  await conn.close();
  return replies;
}

async function withBackup(
  fn: (b: Backup, hello: Uint8Array) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  const b = await Backup.open({
    listen: `memory://fuzz-known-${crypto.randomUUID()}`,
    store: `${dir}/store`,
    auth: PeerAuth.withToken(FUZZ_TOKEN),
    note: () => {},
  });
  try {
    await fn(b, helloBytes({ epoch: 1 }));
  } finally {
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** A message every correct downstream refuses: ends a session with an ERROR. */
const END = encodeControl({ type: "ack", epoch: 0, level: 0 });

knownIssueTest(
  "stale-pending-after-reconnect",
  "an epoch cut short by a lost connection is taken whole from the next upstream",
  () =>
    withBackup(async (b, hello) => {
      const epoch1 = fuzzCorpus().fast.frames[1];
      await session(b.url, [hello, ...epoch1.slice(0, -1), END]);
      const replies = await session(b.url, [hello, ...epoch1, END]);
      assert(
        replies.some((m) =>
          m.type === "ack" && m.epoch === 1 && m.level >= AckLevel.applied
        ),
        JSON.stringify(replies.filter((m) => m.type === "error")),
      );
    }),
);

knownIssueTest(
  "hello-drops-replica",
  "a HELLO naming other images does not cost the replica before anything of them verified",
  () =>
    withBackup(async (b, hello) => {
      await session(b.url, [hello, ...fuzzCorpus().fast.frames[1], END]);
      assertEquals(b.epoch, 1);
      await session(b.url, [
        helloBytes({ images: [{ id: "other", size: 4096 }], epoch: 1 }),
        END,
      ]);
      const replies = await session(b.url, [hello, END]);
      assertEquals(replies[0].type === "state" && replies[0].epoch, 1);
    }),
);

knownIssueTest(
  "promote-non-object-body",
  "POST /promote with a JSON body that is not an object is a 400 saying so, and the role is not asked",
  async () => {
    const given: unknown[] = [];
    const app = createControlApp(() => ({
      status: () => ({}),
      promote: (body) => {
        given.push(body);
        return Promise.resolve({});
      },
    }));
    for (const body of ["null", "42", "[]", '"x"']) {
      const res = await app.fetch(
        new Request("http://x/promote", { method: "POST", body }),
      );
      assertEquals(res.status, 400, body);
      assertEquals(unclearReason((await res.json()).error), null);
    }
    assertEquals(given, []);
  },
);

/**
 * The leaf of a PEM chain with the length of its CA signature's second
 * INTEGER set to 0x61 bytes, more than the signature holds: a signature
 * that does not parse.
 */
function unparsableSignature(chain: string): string {
  const b64 = chain.replace(/-----[^-]+-----|\s/g, "");
  const der = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  // The certificate ends with BIT STRING { 0, SEQUENCE { INTEGER r, INTEGER s } }.
  let at = -1;
  for (let i = der.length - 8; i > 0; i--) {
    if (der[i] === 0x03 && der[i + 2] === 0x00 && der[i + 3] === 0x30) {
      at = i;
      break;
    }
  }
  assert(at > 0 && der[at + 5] === 0x02, "no ECDSA signature found");
  const second = at + 7 + der[at + 6];
  assertEquals(der[second], 0x02);
  der[second + 1] = 0x61;
  const text = btoa(String.fromCharCode(...der)).match(/.{1,64}/g)!.join("\n");
  return `-----BEGIN CERTIFICATE-----\n${text}\n-----END CERTIFICATE-----`;
}

knownIssueTest(
  "auth-check-throws",
  "a leaf whose signature does not parse is refused, not thrown",
  async () => {
    const server = await fuzzAuthChecker();
    const proof = fixtureProof(FUZZ_PROOF);
    const check = (p: Proof) =>
      server.checkProof(p, fixtureChallenge(), FUZZ_CHECK_TIME);
    assertEquals((await check(proof)).ok, true);
    const chain = unparsableSignature(proof.chain);
    assert(chain !== proof.chain);
    assertEquals((await check({ ...proof, chain })).ok, false);
  },
);
