/**
 * Who may replicate to whom: a shared token, and a certificate the upstream
 * proves it holds, checked during the handshake of every link before
 * anything else it sends is looked at.
 *
 * Deno's TLS listeners (`Deno.listenTls`, QUIC endpoints, `Deno.serve`)
 * cannot ask the client for a certificate, so this is **not TLS client
 * authentication**: it is a certificate-bound proof made inside the TLS
 * channel. After the upstream's HELLO (which carries the token), a
 * downstream that requires certificates sends a CHALLENGE: 32 fresh random
 * bytes for this connection only. The upstream answers with a PROOF: its
 * certificate chain and a signature, made with the certificate's key, over
 * the challenge and the name of the server it dialed. The downstream checks
 * that the certificate is signed by its CA, valid now (and meant for client
 * authentication if it says what it is for), that the signature verifies
 * with the certificate's key over this connection's challenge, and that the
 * name is one of its own certificate's names (a certificate that names no
 * host accepts no proof). The server's half is ordinary TLS: the upstream
 * verifies the downstream's certificate against the same CA.
 *
 * What it protects against: an upstream without a key of a CA-signed
 * certificate; a proof seen once (in a log, a memory dump, a broken TLS
 * session) used again — the challenge differs on every connection; a server
 * with a valid certificate of its own that passes its challenge on to the
 * client and the client's proof on to another server — the proof names the
 * server the client dialed. What it does not: the TLS channel itself
 * carries everything after the handshake, so a party that can read or
 * change TLS traffic (a stolen server key) is out of its reach; the proof
 * is not bound to the TLS session, so a man in the middle that terminates
 * TLS with a certificate for the dialed name (issued by the same CA) can
 * relay the whole conversation; and a plain `tcp:`/`ws:` listener asks for
 * no proof at all (only the token is checked there).
 *
 * @example
 * ```ts
 * const auth = await PeerAuth.create({ token: "s3cret", cert, key, ca: [caPem] });
 * // Downstream, for one connection:
 * const challenge = auth.challenge();
 * // Upstream, answering it:
 * const proof = await auth.proof("backup-1.example", challenge);
 * // Downstream:
 * auth.checkToken(hello.token); // { ok: true, peer: "token" }
 * await auth.checkProof(proof, challenge); // { ok: true, peer: "CN=primary" }
 * ```
 * @module
 */

import { CHALLENGE_BYTES, type Proof } from "./protocol.ts";

const PROOF_CONTEXT = "patchwire-peer-proof/2";
const CLIENT_AUTH_OID = "1.3.6.1.5.5.7.3.2";

/** What a role is given to authenticate itself and its peers. PEM strings. */
export interface PeerAuthOptions {
  /** Shared token every peer must present; "" for none. */
  token?: string;
  /** This role's certificate chain and private key (PKCS#8). */
  cert?: string;
  key?: string;
  /**
   * CA certificates: the servers this role connects to must have
   * certificates from one of them, and an upstream connecting to it must
   * prove it holds one (mutual TLS).
   */
  ca?: string[];
}

/** Why a peer was refused, for logs and `/metrics`. */
export type RefusalReason = "token" | "certificate" | "protocol" | "term";

/** The outcome of {@linkcode PeerAuth.check}. */
export type AuthVerdict =
  | { ok: true; peer: string }
  | { ok: false; reason: RefusalReason; message: string };

// deno-lint-ignore no-explicit-any
type X509Module = any;
let x509Module: Promise<X509Module> | null = null;

/** @peculiar/x509, loaded on first use: roles without certificates never pay for it. */
function loadX509(): Promise<X509Module> {
  x509Module ??= (async () => {
    await import("reflect-metadata");
    const m = await import("@peculiar/x509");
    m.cryptoProvider.set(crypto);
    return m;
  })();
  return x509Module;
}

/** Compares two strings in time that does not depend on where they differ. */
export function constantTimeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a), y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  }
  return diff === 0;
}

/**
 * Reads a token file: its contents without the trailing newline. Refuses an
 * empty file, and one that others than its owner may read (a token is a
 * password).
 */
export function readTokenFile(path: string): string {
  let text: string, mode: number | null;
  try {
    text = Deno.readTextFileSync(path);
    mode = Deno.statSync(path).mode;
  } catch (e) {
    throw new Error(`token file ${path}: ${(e as Error).message}`);
  }
  if (mode !== null && (mode & 0o077) !== 0) {
    throw new Error(
      `token file ${path}: readable by group or others (mode ${
        (mode & 0o777).toString(8)
      }), expected 600 or stricter: chmod 600 ${path}`,
    );
  }
  const token = text.replace(/\r?\n$/, "");
  if (token === "" || /[\r\n]/.test(token)) {
    throw new Error(
      `token file ${path}: ${
        token === "" ? "is empty" : "holds several lines"
      }, expected one line with the token`,
    );
  }
  return token;
}

type ImportAlg = EcKeyImportParams | RsaHashedImportParams | Algorithm;
type SignAlg = EcdsaParams | Algorithm;

function signAlgorithm(
  publicAlg: { name: string; namedCurve?: string },
): { importAlg: ImportAlg; signAlg: SignAlg } {
  if (publicAlg.name === "ECDSA") {
    const hash = publicAlg.namedCurve === "P-384"
      ? "SHA-384"
      : publicAlg.namedCurve === "P-521"
      ? "SHA-512"
      : "SHA-256";
    return {
      importAlg: { name: "ECDSA", namedCurve: publicAlg.namedCurve! },
      signAlg: { name: "ECDSA", hash },
    };
  }
  if (publicAlg.name === "RSASSA-PKCS1-v1_5" || publicAlg.name === "RSA-PSS") {
    return {
      importAlg: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
      signAlg: { name: "RSASSA-PKCS1-v1_5" },
    };
  }
  if (publicAlg.name === "Ed25519") {
    return { importAlg: { name: "Ed25519" }, signAlg: { name: "Ed25519" } };
  }
  throw new Error(
    `certificate key algorithm ${publicAlg.name} is not supported, expected ECDSA, RSA or Ed25519`,
  );
}

/** What a proof signs: the context, the dialed name and the connection's challenge. */
function proofMessage(
  serverName: string,
  challenge: Uint8Array,
): Uint8Array<ArrayBuffer> {
  const head = new TextEncoder().encode(`${PROOF_CONTEXT}\n${serverName}\n`);
  const out = new Uint8Array(head.length + challenge.length);
  out.set(head);
  out.set(challenge, head.length);
  return out;
}

function isTlsUrl(url: string): boolean {
  return /^(tls|quic|wss):/.test(url);
}

/** A URL's host as a certificate names it (no IPv6 brackets). */
export function serverNameOf(url: string): string {
  return new URL(url).hostname.replace(/^\[(.*)\]$/, "$1");
}

/** A role's credentials; see the module documentation. */
export class PeerAuth {
  readonly token: string;
  /** Whether a CA bundle was given: TLS listeners then require client certificates. */
  readonly hasCa: boolean;
  #x509: X509Module;
  #chain: X509Module[];
  #key: CryptoKey | null;
  #signAlg: SignAlg | null;
  #cas: X509Module[];
  #names: Set<string>;

  private constructor(
    options: PeerAuthOptions,
    x509: X509Module,
    chain: X509Module[],
    key: CryptoKey | null,
    signAlg: SignAlg | null,
    cas: X509Module[],
  ) {
    this.token = options.token ?? "";
    this.hasCa = cas.length > 0;
    this.#x509 = x509;
    this.#chain = chain;
    this.#key = key;
    this.#signAlg = signAlg;
    this.#cas = cas;
    this.#names = new Set();
    const leaf = chain[0];
    if (leaf) {
      const san = leaf.getExtension(x509.SubjectAlternativeNameExtension);
      for (const n of san?.names.items ?? []) {
        if (n.type === "dns" || n.type === "ip") {
          this.#names.add(String(n.value).toLowerCase());
        }
      }
      const cn = /(?:^|,\s*)CN=([^,]+)/.exec(leaf.subject)?.[1];
      if (cn) this.#names.add(cn.toLowerCase());
    }
  }

  /** No token, no certificates: every peer is accepted. */
  static none(): PeerAuth {
    return new PeerAuth({}, null, [], null, null, []);
  }

  /** A shared token only. */
  static withToken(token: string): PeerAuth {
    return new PeerAuth({ token }, null, [], null, null, []);
  }

  /**
   * Whether upstreams connecting to `url` must prove a certificate: with a
   * CA bundle, on a TLS listener (tls:, quic:, wss:). Proofs are made inside
   * the TLS channel; a plain tcp: or ws: listener has none to bind them to,
   * so there only the token is checked ({@linkcode PeerAuth.plainListenerNote}).
   */
  requiresCertificateOn(url: string): boolean {
    return this.hasCa && isTlsUrl(url);
  }

  /** A warning for a role with a CA bundle that listens without TLS, else null. */
  plainListenerNote(url: string): string | null {
    return this.hasCa && !isTlsUrl(url)
      ? `${url} is not TLS: upstreams are not asked for client certificates there (--ca applies to outgoing connections only${
        this.token ? "; the token still is checked" : ""
      })`
      : null;
  }

  /**
   * Parses and checks the material: the key must match the certificate
   * (checked by signing and verifying once), the CA bundle must hold
   * certificates.
   */
  static async create(options: PeerAuthOptions): Promise<PeerAuth> {
    if (!!options.cert !== !!options.key) {
      throw new Error("a certificate and its key go together: give both");
    }
    if (!options.cert && !options.ca?.length) {
      return new PeerAuth(options, null, [], null, null, []);
    }
    const x509 = await loadX509();
    const parse = (pem: string, what: string): X509Module[] => {
      let ders: ArrayBuffer[];
      try {
        ders = x509.PemConverter.decode(pem);
      } catch (e) {
        throw new Error(`${what}: not PEM (${(e as Error).message})`);
      }
      if (ders.length === 0) {
        throw new Error(`${what}: holds no certificate, expected PEM`);
      }
      return ders.map((d) => new x509.X509Certificate(d));
    };
    const cas = (options.ca ?? []).flatMap((p) => parse(p, "CA bundle"));
    let chain: X509Module[] = [], key: CryptoKey | null = null;
    let signAlg: SignAlg | null = null;
    if (options.cert) {
      chain = parse(options.cert, "certificate");
      const algs = signAlgorithm(chain[0].publicKey.algorithm);
      signAlg = algs.signAlg;
      try {
        const der = x509.PemConverter.decode(options.key!)[0];
        key = await crypto.subtle.importKey(
          "pkcs8",
          der,
          algs.importAlg,
          false,
          ["sign"],
        );
      } catch (e) {
        throw new Error(
          `private key: cannot be read as a PKCS#8 ${algs.importAlg.name} key (${
            (e as Error).message
          })`,
        );
      }
      const probe = new Uint8Array(16);
      const sig = await crypto.subtle.sign(signAlg, key, probe);
      const pub = await chain[0].publicKey.export(algs.importAlg, ["verify"]);
      if (!await crypto.subtle.verify(signAlg, pub, sig, probe)) {
        throw new Error(
          `private key does not belong to the certificate ${chain[0].subject}`,
        );
      }
    }
    return new PeerAuth(options, x509, chain, key, signAlg, cas);
  }

  /** Whether this role has a certificate to prove (a client proof goes in HELLO). */
  get hasCertificate(): boolean {
    return this.#key !== null;
  }

  /** A fresh random challenge for one connection's proof. */
  challenge(): Uint8Array {
    return crypto.getRandomValues(new Uint8Array(CHALLENGE_BYTES));
  }

  /**
   * The answer to a CHALLENGE from the server dialed as `serverName`, or
   * undefined without a certificate.
   */
  async proof(
    serverName: string,
    challenge: Uint8Array,
  ): Promise<Proof | undefined> {
    if (!this.#key) return undefined;
    const name = serverName.toLowerCase();
    const signature = new Uint8Array(
      await crypto.subtle.sign(
        this.#signAlg!,
        this.#key,
        proofMessage(name, challenge),
      ),
    );
    return {
      type: "proof",
      chain: this.#chain.map((c) => c.toString("pem")).join("\n"),
      serverName: name,
      signature,
    };
  }

  /** Checks a HELLO's token: the first check, before anything is allocated. */
  checkToken(token: string): AuthVerdict {
    if (!constantTimeEqual(token, this.token)) {
      return { ok: false, reason: "token", message: "wrong token" };
    }
    return { ok: true, peer: this.token ? "token" : "anyone" };
  }

  /**
   * Checks the PROOF an upstream answered `challenge` with (undefined: it
   * has no certificate), where {@linkcode PeerAuth.requiresCertificateOn}.
   * `now` is for tests. Never throws: whatever a peer's material makes the
   * checks throw is a refusal.
   */
  async checkProof(
    proof: Omit<Proof, "type"> | undefined,
    challenge: Uint8Array,
    now = Date.now(),
  ): Promise<AuthVerdict> {
    if (!this.hasCa) {
      return {
        ok: false,
        reason: "certificate",
        message: "client certificates required but no CA bundle to check them",
      };
    }
    try {
      return await this.#checkCertificate(proof, challenge, now);
    } catch {
      // The X.509 parser throws on damaged certificates in many places, with
      // its engine's words ("Offset is outside the bounds of the DataView"):
      // the refusal says what is wrong in the peer's terms instead.
      return {
        ok: false,
        reason: "certificate",
        message:
          "client certificate unreadable: a certificate of its chain does not parse as X.509",
      };
    }
  }

  async #checkCertificate(
    a: Omit<Proof, "type"> | undefined,
    challenge: Uint8Array,
    now: number,
  ): Promise<AuthVerdict> {
    const refuse = (message: string): AuthVerdict => ({
      ok: false,
      reason: "certificate",
      message,
    });
    if (!a) {
      return refuse(
        "no client certificate: this peer requires one signed by its CA (--cert/--key)",
      );
    }
    const x509 = this.#x509;
    let chain: X509Module[];
    try {
      chain = x509.PemConverter.decode(a.chain).map((d: ArrayBuffer) =>
        new x509.X509Certificate(d)
      );
    } catch {
      return refuse(
        "client certificate unreadable: its chain is not PEM X.509 certificates",
      );
    }
    if (chain.length === 0 || chain.length > 8) {
      return refuse(
        `client certificate chain of ${chain.length} certificates, expected 1 to 8`,
      );
    }
    const leaf = chain[0];
    const date = new Date(now);
    if (leaf.notBefore > date || leaf.notAfter < date) {
      return refuse(
        `client certificate ${leaf.subject} is not valid now (valid ${leaf.notBefore.toISOString()} to ${leaf.notAfter.toISOString()})`,
      );
    }
    const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension);
    if (eku && !eku.usages.includes(CLIENT_AUTH_OID)) {
      return refuse(
        `client certificate ${leaf.subject} is not for client authentication (extended key usage lacks clientAuth)`,
      );
    }
    if (!await this.#signedByCa(leaf, date)) {
      return refuse(
        `client certificate ${leaf.subject} (issuer ${leaf.issuer}) is not signed by a trusted CA`,
      );
    }
    if (this.#names.size === 0) {
      // Nothing to bind the proof to: a proof for any name would pass, and
      // a server could pass on what it was shown.
      return refuse(
        "this peer's own certificate names no host (no DNS or IP subject alternative name, no CN), so no client proof can be bound to it: give it a certificate naming the host upstreams dial",
      );
    }
    if (!this.#names.has(a.serverName)) {
      return refuse(
        `client proof is for server "${a.serverName}", expected one of this peer's names (${
          [...this.#names].join(", ")
        })`,
      );
    }
    try {
      const algs = signAlgorithm(leaf.publicKey.algorithm);
      const pub = await leaf.publicKey.export(algs.importAlg, ["verify"]);
      const ok = await crypto.subtle.verify(
        algs.signAlg,
        pub,
        new Uint8Array(a.signature),
        proofMessage(a.serverName, challenge),
      );
      if (!ok) {
        return refuse(
          `client proof signature does not verify with ${leaf.subject}'s key over this connection's challenge (a proof made for another connection, or tampered with)`,
        );
      }
    } catch (e) {
      return refuse(`client proof unverifiable: ${(e as Error).message}`);
    }
    return { ok: true, peer: leaf.subject };
  }

  /**
   * True if `leaf` is signed by a certificate of the CA bundle. Certificates
   * the peer sends after its leaf are not trusted as intermediates (that
   * would need their CA constraints checked): put intermediates in the
   * bundle instead.
   */
  async #signedByCa(leaf: X509Module, date: Date): Promise<boolean> {
    for (const ca of this.#cas) {
      if (ca.subject !== leaf.issuer) continue;
      try {
        if (await leaf.verify({ publicKey: ca.publicKey, date })) return true;
      } catch {
        // A signature that does not even parse is not the CA's.
      }
    }
    return false;
  }
}
