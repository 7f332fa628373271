/**
 * Who may replicate to whom: a shared token and mutual TLS, checked on the
 * first message of every link (HELLO) before anything else it sends is
 * looked at.
 *
 * Deno's TLS listeners (`Deno.listenTls`, QUIC endpoints, `Deno.serve`)
 * cannot ask the client for a certificate, so the client's half of mutual
 * TLS is done inside the TLS channel: the upstream sends its certificate
 * chain in HELLO with a signature, made with the certificate's key, over the
 * name of the server it dialed, the time and a random nonce. The downstream
 * checks that the certificate is signed by its CA, that the certificate is valid now
 * (and meant for client authentication if it says what it is for), that the
 * signature verifies with the certificate's key, that the time is within
 * {@linkcode PROOF_MAX_SKEW_MS} of its clock, and that the name is one of its
 * own certificate's names. The server's half is ordinary TLS: the upstream
 * verifies the downstream's certificate against the same CA. Binding the
 * proof to the dialed name keeps a server that holds a valid certificate of
 * its own from passing a proof on to another server.
 *
 * @example
 * ```ts
 * const auth = await PeerAuth.create({ token: "s3cret", cert, key, ca: [caPem] });
 * const hello = { ..., token: auth.token, auth: await auth.proof("backup-1.example") };
 * const verdict = await auth.check(hello); // { ok: true, peer: "CN=primary" }
 * ```
 * @module
 */

import type { HelloAuth } from "./protocol.ts";

/** How far the time in a client proof may be from the checker's clock. */
export const PROOF_MAX_SKEW_MS = 5 * 60_000;
const PROOF_CONTEXT = "patchwire-peer-proof/1";
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
export type RefusalReason = "token" | "certificate" | "protocol";

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

function proofMessage(
  serverName: string,
  time: number,
  nonce: Uint8Array,
): Uint8Array<ArrayBuffer> {
  const head = new TextEncoder().encode(
    `${PROOF_CONTEXT}\n${serverName}\n${time}\n`,
  );
  const out = new Uint8Array(head.length + nonce.length);
  out.set(head);
  out.set(nonce, head.length);
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

  /** The client proof for a HELLO to `serverName`, or undefined without a certificate. */
  async proof(serverName: string): Promise<HelloAuth | undefined> {
    if (!this.#key) return undefined;
    const time = Date.now();
    const nonce = crypto.getRandomValues(new Uint8Array(16));
    const signature = new Uint8Array(
      await crypto.subtle.sign(
        this.#signAlg!,
        this.#key,
        proofMessage(serverName.toLowerCase(), time, nonce),
      ),
    );
    return {
      chain: this.#chain.map((c) => c.toString("pem")).join("\n"),
      serverName: serverName.toLowerCase(),
      time,
      nonce,
      signature,
    };
  }

  /**
   * Checks a HELLO's token and, with `requireCertificate` (see
   * {@linkcode PeerAuth.requiresCertificateOn}), its proof. `now` is for tests.
   */
  async check(
    hello: { token: string; auth?: HelloAuth },
    requireCertificate: boolean,
    now = Date.now(),
  ): Promise<AuthVerdict> {
    if (!constantTimeEqual(hello.token, this.token)) {
      return { ok: false, reason: "token", message: "wrong token" };
    }
    if (!requireCertificate) {
      return { ok: true, peer: this.token ? "token" : "anyone" };
    }
    if (!this.hasCa) {
      return {
        ok: false,
        reason: "certificate",
        message: "client certificates required but no CA bundle to check them",
      };
    }
    try {
      return await this.#checkCertificate(hello.auth, now);
    } catch (e) {
      // The X.509 parser throws on damaged certificates in many places.
      return {
        ok: false,
        reason: "certificate",
        message: `client certificate unreadable: ${(e as Error).message}`,
      };
    }
  }

  async #checkCertificate(
    a: HelloAuth | undefined,
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
    } catch (e) {
      return refuse(`client certificate unreadable: ${(e as Error).message}`);
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
    if (Math.abs(a.time - now) > PROOF_MAX_SKEW_MS) {
      const when = new Date(a.time);
      return refuse(
        `client proof made at ${
          isNaN(when.getTime()) ? `${a.time} ms` : when.toISOString()
        }, more than ${
          PROOF_MAX_SKEW_MS / 60000
        } minutes from this host's clock`,
      );
    }
    if (this.#names.size > 0 && !this.#names.has(a.serverName)) {
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
        proofMessage(a.serverName, a.time, a.nonce),
      );
      if (!ok) {
        return refuse(
          `client proof signature does not verify with ${leaf.subject}'s key`,
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
