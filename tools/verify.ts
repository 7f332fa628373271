/**
 * `deno task verify --http URL [--repair] [--token-file FILE]`
 * @module
 */

import { formatBytes, parseArgs, runMain, UsageError } from "../src/_cli.ts";
import type { VerifyReport } from "../src/verify.ts";

const USAGE = `usage: deno task verify --http URL [--repair] [--token-file FILE]

Online verify of a running primary's peers (POST URL/verify): every live
peer hashes the bytes it stores again (a backup reads its store files) at
the primary's newest epoch, and the 64 KiB regions whose digests differ from
the primary's are compared page by page. Prints, per peer, the bytes out of
sync and the first ranges that differ. Exits 1 if any peer differs (and was
not repaired) or could not be verified.

  --http URL         the primary's control plane, e.g. http://127.0.0.1:8080
  --repair           rejoin each peer that differs against the bytes it
                     stores (only the differing pages are sent), then verify
                     it again
  --token-file FILE  the control plane's bearer token (the role's --token-file)
  --help             this text`;

await runMain(USAGE, async () => {
  const args = parseArgs(Deno.args, ["http", "token-file"], [
    "repair",
    "help",
  ]);
  if (args.options.has("help")) {
    console.log(USAGE);
    return;
  }
  if (args.positional.length) {
    throw new UsageError(`unexpected argument "${args.positional[0]}"`);
  }
  const http = args.options.get("http")?.at(-1);
  if (!http) throw new UsageError("--http is required");
  let base: URL;
  try {
    base = new URL(http);
  } catch {
    throw new UsageError(
      `--http "${http}": expected a URL such as http://127.0.0.1:8080`,
    );
  }
  const tokenFile = args.options.get("token-file")?.at(-1);
  const token = tokenFile ? (await Deno.readTextFile(tokenFile)).trim() : "";
  const url = new URL(
    "verify",
    base.href.endsWith("/") ? base : base.href + "/",
  );
  if (args.options.has("repair")) url.searchParams.set("repair", "true");
  let res: Response;
  try {
    res = await fetch(url, {
      method: "POST",
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
  } catch (e) {
    throw new Error(
      `cannot reach ${url.origin} (--http): ${(e as Error).message}`,
    );
  }
  const body = await res.json() as VerifyReport & { error?: string };
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}: ${body.error}`);
  let bad = 0;
  for (const p of body.peers) {
    if ("error" in p) {
      bad++;
      console.log(`${p.url}: not verified: ${p.error}`);
      continue;
    }
    console.log(
      `${p.url}: epoch ${p.epoch}, ${formatBytes(p.bytes)} compared at ${
        p.gbPerSecond.toFixed(2)
      } GB/s: ${
        p.outOfSyncBytes === 0
          ? "in sync"
          : `${formatBytes(p.outOfSyncBytes)} out of sync`
      }`,
    );
    for (const d of p.differing) {
      console.log(`  ${d.image} at ${d.offset}: ${d.bytes} bytes differ`);
    }
    if (p.repaired) {
      console.log(
        `  repaired: now ${
          p.repaired.outOfSyncBytes === 0
            ? "in sync"
            : `${formatBytes(p.repaired.outOfSyncBytes)} out of sync`
        }`,
      );
      if (p.repaired.outOfSyncBytes > 0) bad++;
    } else if (p.outOfSyncBytes > 0) bad++;
  }
  if (body.peers.length === 0) console.log("no peers to verify");
  if (bad > 0) Deno.exitCode = 1;
});
