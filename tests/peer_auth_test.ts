/**
 * PeerAuth: who may replicate to whom. A shared token in the upstream's
 * HELLO, and a client certificate proved inside TLS: the downstream sends a
 * fresh challenge on each connection, and the upstream's PROOF signs it
 * with the name of the server it dialed.
 */

import { assert, assertEquals, assertRejects } from "./_assert.ts";
import {
  type AuthVerdict,
  constantTimeEqual,
  PeerAuth,
  type PeerAuthOptions,
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

function refusal(v: AuthVerdict): string {
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

Deno.test("a wrong or missing token is refused; without a token set, anyone passes it", () => {
  assertEquals(server.checkToken("s3cret"), { ok: true, peer: "token" });
  assertEquals(refusal(server.checkToken("guess")), "token: wrong token");
  assertEquals(refusal(server.checkToken("")), "token: wrong token");
  assertEquals(PeerAuth.none().checkToken(""), { ok: true, peer: "anyone" });
});

Deno.test("each challenge is fresh: 32 random bytes", () => {
  const a = server.challenge(), b = server.challenge();
  assertEquals(a.length, 32);
  assert(a.some((x, i) => x !== b[i]));
});

Deno.test("a proof from a certificate of the CA, answering this challenge for this server's name, is accepted", async () => {
  const challenge = server.challenge();
  const proof = (await client.proof("localhost", challenge))!;
  assertEquals(proof.type, "proof");
  assertEquals(await server.checkProof(proof, challenge), {
    ok: true,
    peer: "CN=localhost",
  });
  // Names are compared as certificates write them: case-insensitively.
  const v2 = await server.checkProof(
    (await client.proof("LocalHost", challenge))!,
    challenge,
  );
  assert(v2.ok);
});

Deno.test("a proof is good for its own challenge only: replayed on another connection it is refused", async () => {
  const first = server.challenge();
  const proof = (await client.proof("localhost", first))!;
  assert((await server.checkProof(proof, first)).ok);
  const msg = refusal(await server.checkProof(proof, server.challenge()));
  assert(
    /signature does not verify .* over this connection's challenge/.test(msg),
    msg,
  );
});

Deno.test("without a certificate, or with one from another CA, an upstream is refused", async () => {
  const challenge = server.challenge();
  assert(
    /no client certificate/.test(
      refusal(await server.checkProof(undefined, challenge)),
    ),
  );
  assertEquals(
    await PeerAuth.withToken("x").proof("localhost", challenge),
    undefined,
  );
  const stranger = await PeerAuth.create({
    token: "s3cret",
    cert: other.cert,
    key: other.key,
  });
  const msg = refusal(
    await server.checkProof(
      await stranger.proof("localhost", challenge),
      challenge,
    ),
  );
  assert(/not signed by a trusted CA/.test(msg), msg);
});

Deno.test("a proof for another server, or tampered with, is refused", async () => {
  const challenge = server.challenge();
  const elsewhere = (await client.proof("backup-2.example", challenge))!;
  assert(
    /proof is for server "backup-2.example", expected one of this peer's names \(localhost, 127.0.0.1/
      .test(refusal(await server.checkProof(elsewhere, challenge))),
  );
  const proof = (await client.proof("localhost", challenge))!;
  const tampered = { ...proof, signature: proof.signature.slice() };
  tampered.signature[10] ^= 1;
  assert(
    /signature does not verify/.test(
      refusal(await server.checkProof(tampered, challenge)),
    ),
  );
  // The name is signed: relabelling a proof for one name as another fails.
  const relabelled = { ...elsewhere, serverName: "localhost" };
  assert(
    /signature does not verify/.test(
      refusal(await server.checkProof(relabelled, challenge)),
    ),
  );
});

Deno.test("a server whose own certificate names no host accepts no proof at all", async () => {
  const nameless = await makeDevCerts(30, { nameless: true });
  const checker = await PeerAuth.create({
    cert: nameless.cert,
    key: nameless.key,
    ca: [nameless.caCert],
  });
  const holder = await PeerAuth.create({
    cert: nameless.cert,
    key: nameless.key,
  });
  const challenge = checker.challenge();
  for (const name of ["localhost", "anything", ""]) {
    const msg = refusal(
      await checker.checkProof(await holder.proof(name, challenge), challenge),
    );
    assert(/own certificate names no host/.test(msg), msg);
  }
});

Deno.test("an expired certificate, or one not meant for clients, is refused", async () => {
  const challenge = server.challenge();
  const proof = (await client.proof("localhost", challenge))!;
  const later = Date.now() + 40 * 86400_000; // the test leaf lasts 30 days
  assert(
    /is not valid now/.test(
      refusal(await server.checkProof(proof, challenge, later)),
    ),
  );
  const serverOnly = await makeDevCerts(30, { clientAuth: false });
  const trusting = await PeerAuth.create({
    cert: certs.cert,
    key: certs.key,
    ca: [serverOnly.caCert],
  });
  const holder = await PeerAuth.create({
    cert: serverOnly.cert,
    key: serverOnly.key,
  });
  assert(
    /not for client authentication/.test(
      refusal(
        await trusting.checkProof(
          await holder.proof("localhost", challenge),
          challenge,
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
