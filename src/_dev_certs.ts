/**
 * Development certificates, made in-process with WebCrypto (no openssl
 * needed): a CA and a `localhost`/`127.0.0.1` leaf signed by it, for the demo
 * and tests over tls:, quic: and wss:. Deno refuses a self-signed leaf that
 * is its own CA, hence the pair.
 */

import "reflect-metadata";
import * as x509 from "@peculiar/x509";

/** PEM material of a development CA and a server certificate it signed. */
export interface DevCerts {
  /** CA certificate: what clients trust. */
  caCert: string;
  /** Server certificate and its private key (PKCS#8). */
  cert: string;
  key: string;
}

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };

function pem(label: string, der: ArrayBuffer): string {
  const b64 = btoa(String.fromCharCode(...new Uint8Array(der)));
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${
    lines.join("\n")
  }\n-----END ${label}-----\n`;
}

/** Options of {@linkcode makeDevCerts}. */
export interface DevCertOptions {
  /** Also for client authentication (mutual TLS). Default true. */
  clientAuth?: boolean;
  /** More IP addresses the leaf names, beside 127.0.0.1 (peers dialed at them check it). */
  ips?: string[];
  /** A leaf that names no host (no CN, no subject alternative names), for tests. Default false. */
  nameless?: boolean;
}

/** Makes a fresh CA and leaf, valid from an hour ago for `days` days. */
export async function makeDevCerts(
  days = 30,
  options: DevCertOptions = {},
): Promise<DevCerts> {
  x509.cryptoProvider.set(crypto);
  const notBefore = new Date(Date.now() - 3600_000);
  const notAfter = new Date(Date.now() + days * 86400_000);
  const caKeys = await crypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=patchwire development CA",
    notBefore,
    notAfter,
    signingAlgorithm: ALG,
    keys: caKeys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const leafKeys = await crypto.subtle.generateKey(ALG, true, [
    "sign",
    "verify",
  ]);
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: "02",
    subject: options.nameless ? "O=patchwire test" : "CN=localhost",
    issuer: ca.subject,
    notBefore,
    notAfter,
    signingAlgorithm: ALG,
    publicKey: leafKeys.publicKey,
    signingKey: caKeys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.digitalSignature |
          x509.KeyUsageFlags.keyEncipherment,
        true,
      ),
      // Each role is a TLS server to its upstream and proves the same
      // certificate as a client to its peers (mutual TLS).
      new x509.ExtendedKeyUsageExtension(
        options.clientAuth === false ? [x509.ExtendedKeyUsage.serverAuth] : [
          x509.ExtendedKeyUsage.serverAuth,
          x509.ExtendedKeyUsage.clientAuth,
        ],
      ),
      ...(options.nameless ? [] : [
        new x509.SubjectAlternativeNameExtension([
          { type: "dns", value: "localhost" },
          ...["127.0.0.1", ...(options.ips ?? [])].map((value) => ({
            type: "ip" as const,
            value,
          })),
        ]),
      ]),
      await x509.AuthorityKeyIdentifierExtension.create(ca, false),
    ],
  });
  const key = await crypto.subtle.exportKey("pkcs8", leafKeys.privateKey);
  return {
    caCert: ca.toString("pem") + "\n",
    cert: leaf.toString("pem") + "\n",
    key: pem("PRIVATE KEY", key),
  };
}
