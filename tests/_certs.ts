/**
 * Test TLS material: a throwaway CA and a leaf for `localhost`/`127.0.0.1`
 * signed by it, made with openssl. Deno (rustls) refuses a self-signed leaf
 * that is also a CA, so the tests need the two-certificate setup a real
 * deployment has. Generated once per process into a fresh temp dir, which is
 * removed when the process exits.
 * @module
 */

/** PEM strings of the test CA and the server leaf, and where they were written. */
export interface TestCerts {
  /** The CA certificate clients trust (`caCerts`). */
  caCert: string;
  /** The leaf certificate servers present (`cert`). */
  cert: string;
  /** The leaf's private key (`key`). */
  key: string;
  /** The temp dir holding `ca.pem`, `cert.pem`, `key.pem`. */
  dir: string;
}

let cached: Promise<TestCerts> | undefined;

/** The per-process test CA and leaf (generated on first call). */
export function testCerts(): Promise<TestCerts> {
  cached ??= generate();
  return cached;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", {
    args,
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (out.code !== 0) {
    throw new Error(
      `openssl ${args.join(" ")} exited with ${out.code}: ${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
}

async function generate(): Promise<TestCerts> {
  const dir = await Deno.makeTempDir({ prefix: "patchwire-certs-" });
  // Removed when the process ends; the PEMs stay available in memory.
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // Already gone.
    }
  });
  // EC P-256 keys: small, fast to generate, accepted by rustls and quinn.
  await openssl(dir, [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    "ca-key.pem",
    "-out",
    "ca.pem",
    "-days",
    "30",
    "-subj",
    "/CN=patchwire test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  await openssl(dir, [
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    "key.pem",
    "-out",
    "leaf.csr",
    "-subj",
    "/CN=localhost",
  ]);
  await Deno.writeTextFile(
    `${dir}/leaf.ext`,
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage=serverAuth",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "",
    ].join("\n"),
  );
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    "leaf.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca-key.pem",
    "-CAcreateserial",
    "-out",
    "cert.pem",
    "-days",
    "30",
    "-extfile",
    "leaf.ext",
  ]);
  const [caCert, cert, key] = await Promise.all([
    Deno.readTextFile(`${dir}/ca.pem`),
    Deno.readTextFile(`${dir}/cert.pem`),
    Deno.readTextFile(`${dir}/key.pem`),
  ]);
  return { caCert, cert, key, dir };
}
