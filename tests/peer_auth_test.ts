/**
 * PeerAuth: who may replicate to whom. A shared token, and a client
 * certificate proved inside TLS (mutual TLS), checked on an upstream's HELLO.
 */

import { assert, assertEquals, assertRejects } from "./_assert.ts";
import {
  constantTimeEqual,
  PeerAuth,
  type PeerAuthOptions,
  PROOF_MAX_SKEW_MS,
  readTokenFile,
} from "../src/peer_auth.ts";
import { makeDevCerts } from "../src/_dev_certs.ts";
import { testCerts } from "./_certs.ts";

const certs = await testCerts();
const other = await makeDevCerts(); // another CA and leaf
const server = await PeerAuth.create({
  token: "s3cret",
  cert: certs.cert,
  key: certs.key,
  ca: [certs.caCert],
});
const client = await PeerAuth.create({
  token: "s3cret",
  cert: certs.cert,
  key: certs.key,
  ca: [certs.caCert],
});

function refusal(v: Awaited<ReturnType<PeerAuth["check"]>>): string {
  assert(!v.ok, "expected a refusal");
  return `${v.reason}: ${v.message}`;
}

Deno.test("a token compares equal only to itself, whatever its length", () => {
  assert(constantTimeEqual("abc", "abc"));
  assert(!constantTimeEqual("abc", "abd"));
  assert(!constantTimeEqual("abc", "abcd"));
  assert(!constantTimeEqual("", "x"));
  assert(constantTimeEqual("", ""));
});

Deno.test("an upstream with the token and a certificate from the CA, proved for this server's name, is accepted", async () => {
  const hello = { token: "s3cret", auth: await client.proof("localhost") };
  const v = await server.check(hello, true);
  assertEquals(v, { ok: true, peer: "CN=localhost" });
  // Names are compared as certificates write them: case-insensitively.
  const v2 = await server.check(
    { token: "s3cret", auth: await client.proof("127.0.0.1") },
    true,
  );
  assert(v2.ok);
});

Deno.test("a wrong or missing token is refused first, with or without certificates", async () => {
  const auth = await client.proof("localhost");
  assertEquals(
    refusal(await server.check({ token: "guess", auth }, true)),
    "token: wrong token",
  );
  assertEquals(
    refusal(await server.check({ token: "" }, false)),
    "token: wrong token",
  );
  assert((await PeerAuth.none().check({ token: "" }, false)).ok);
});

Deno.test("without a certificate, or with one from another CA, an upstream is refused where certificates are required", async () => {
  assert(
    /no client certificate/.test(
      refusal(await server.check({ token: "s3cret" }, true)),
    ),
  );
  const stranger = await PeerAuth.create({
    token: "s3cret",
    cert: other.cert,
    key: other.key,
  });
  const msg = refusal(
    await server.check(
      { token: "s3cret", auth: await stranger.proof("localhost") },
      true,
    ),
  );
  assert(/not signed by a trusted CA/.test(msg), msg);
  // Where certificates are not required, the token alone is enough.
  assert((await server.check({ token: "s3cret" }, false)).ok);
});

Deno.test("a proof for another server, from another time, or tampered with is refused", async () => {
  const auth = (await client.proof("backup-2.example"))!;
  assert(
    /proof is for server "backup-2.example", expected one of this peer's names \(localhost, 127.0.0.1/
      .test(refusal(await server.check({ token: "s3cret", auth }, true))),
  );
  const fresh = (await client.proof("localhost"))!;
  assert(
    /more than 5 minutes from this host's clock/.test(
      refusal(
        await server.check(
          { token: "s3cret", auth: fresh },
          true,
          fresh.time + PROOF_MAX_SKEW_MS + 1000,
        ),
      ),
    ),
  );
  const tampered = { ...fresh, nonce: fresh.nonce.slice() };
  tampered.nonce[0] ^= 1;
  assert(
    /signature does not verify/.test(
      refusal(await server.check({ token: "s3cret", auth: tampered }, true)),
    ),
  );
  const relabelled = { ...fresh, time: fresh.time + 1 };
  assert(
    /signature does not verify/.test(
      refusal(await server.check({ token: "s3cret", auth: relabelled }, true)),
    ),
  );
});

Deno.test("an expired certificate, or one not meant for clients, is refused", async () => {
  const auth = (await client.proof("localhost"))!;
  const later = Date.now() + 40 * 86400_000; // the test leaf lasts 30 days
  assert(
    /is not valid now/.test(
      refusal(await server.check({ token: "s3cret", auth }, true, later)),
    ),
  );
  const serverOnly = await makeDevCerts(30, { clientAuth: false });
  const trusting = await PeerAuth.create({ ca: [serverOnly.caCert] });
  const holder = await PeerAuth.create({
    cert: serverOnly.cert,
    key: serverOnly.key,
  });
  assert(
    /not for client authentication/.test(
      refusal(
        await trusting.check(
          { token: "", auth: await holder.proof("localhost") },
          true,
        ),
      ),
    ),
  );
});

Deno.test("bad material is refused when the role starts: a key of another certificate, half a pair, not PEM", async () => {
  const bad: [PeerAuthOptions, RegExp][] = [
    [
      { cert: certs.cert, key: other.key },
      /private key does not belong to the certificate CN=localhost/,
    ],
    [{ cert: certs.cert }, /a certificate and its key go together/],
    [{ ca: ["hello"] }, /CA bundle: (holds no certificate|not PEM)/],
  ];
  for (const [options, re] of bad) {
    const e = await assertRejects(() => PeerAuth.create(options), Error);
    assert(re.test(e.message), e.message);
  }
});

Deno.test("client certificates are required on TLS listeners with a CA bundle; plain ones say so", () => {
  assert(server.requiresCertificateOn("tls://0.0.0.0:7000"));
  assert(server.requiresCertificateOn("quic://0.0.0.0:7000"));
  assert(server.requiresCertificateOn("wss://0.0.0.0:7000/p"));
  assert(!server.requiresCertificateOn("tcp://0.0.0.0:7000"));
  assert(
    /tcp:\/\/0.0.0.0:7000 is not TLS: upstreams are not asked for client certificates/
      .test(server.plainListenerNote("tcp://0.0.0.0:7000")!),
  );
  assertEquals(PeerAuth.none().plainListenerNote("tcp://0.0.0.0:7000"), null);
});

Deno.test("a token file is one line, readable by its owner only", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/token`;
    await Deno.writeTextFile(path, "s3cret\n", { mode: 0o600 });
    await Deno.chmod(path, 0o600);
    assertEquals(readTokenFile(path), "s3cret");
    await Deno.chmod(path, 0o644);
    let msg = "";
    try {
      readTokenFile(path);
    } catch (e) {
      msg = (e as Error).message;
    }
    assert(/readable by group or others \(mode 644\), expected 600/.test(msg));
    await Deno.writeTextFile(path, "\n");
    await Deno.chmod(path, 0o600);
    try {
      readTokenFile(path);
      msg = "";
    } catch (e) {
      msg = (e as Error).message;
    }
    assert(/is empty, expected one line/.test(msg), msg);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
