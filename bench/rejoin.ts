/**
 * Rejoin by block hashes against a full base sync, and online verify, over
 * loopback TCP with a real backup store: a backup holds epoch 2 of one
 * history; the primary of another history, whose images differ from it in
 * 1%, 10% and 50% of the 64 KiB regions (4 pages rewritten in each), brings
 * it up to date. Printed per fraction: bytes on the wire and time from the
 * link's start (the primary's epoch already encoded) to the commit, for the
 * rejoin and for a base sync of the
 * same images to an empty backup (a primary whose log no longer holds its
 * first epoch); then verify of the rejoined backup (its store reread and
 * hashed) in GB/s of image.
 *
 * Both ends run in this process on the same cores, so times include both
 * the sender's and the receiver's work. The image: a quarter zero pages, a
 * quarter repetitive text, half incompressible bytes (a mix like a guest's
 * memory; see bench/README.md for real recordings).
 *
 *     deno run -A --unstable-net bench/rejoin.ts [--size 256M] [--fractions 1,10,50]
 * @module
 */

import { parseArgs } from "../src/_cli.ts";
import { parseSize } from "../src/synthetic.ts";
import { Primary } from "../src/primary.ts";
import { Backup } from "../src/backup.ts";
import { openSource } from "../src/open_source.ts";
import { REGION_BYTES } from "../src/region_digest.ts";

const args = parseArgs(Deno.args, ["size", "fractions"], []);
const size = parseSize(args.options.get("size")?.at(-1) ?? "256M", "--size");
const fractions = (args.options.get("fractions")?.at(-1) ?? "1,10,50")
  .split(",").map(Number);
const quiet = () => {};

/** xorshift32 noise (deterministic). */
function noise(bytes: Uint8Array, seed: number): void {
  const w = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < w.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    w[i] = x >>> 0;
  }
}

function makeImage(): Uint8Array {
  const image = new Uint8Array(size);
  const text = new TextEncoder().encode(
    "patchwire checkpoint replication: epoch, block, page, reference. ",
  );
  for (let page = 0; page < size / 4096; page++) {
    const at = page * 4096;
    const kind = page % 4;
    if (kind === 0) continue; // zeros
    if (kind === 1) {
      for (let i = 0; i < 4096; i++) {
        image[at + i] = text[(i + page) % text.length];
      }
    } else noise(image.subarray(at, at + 4096), page + 1);
  }
  return image;
}

const mib = (n: number) => (n / 1048576).toFixed(2);

/** Resolves once `p` has encoded `epoch` (a condition of this process, polled each ms). */
async function encoded(p: Primary, epoch: number): Promise<void> {
  while (p.epoch < epoch) await new Promise((r) => setTimeout(r, 1));
}
const dir = await Deno.makeTempDir({ prefix: "pw-bench-rejoin-" });
const path = `${dir}/vm`;
const rows: string[] = [];
try {
  for (const percent of fractions) {
    const image = makeImage();
    await Deno.writeFile(path, image);
    // The backup's history: two epochs of the original image.
    const b = await Backup.open({
      listen: "tcp://127.0.0.1:0",
      store: `${dir}/b${percent}`,
      note: quiet,
    });
    const p1 = new Primary(await openSource(`file:${path}`), {
      to: [b.url],
      intervalMs: null,
      note: quiet,
    });
    p1.start();
    await p1.checkpoint();
    await p1.checkpoint();
    await p1.stop();
    // The other history: `percent`% of the regions, spread evenly, differ.
    const regions = Math.ceil(size / REGION_BYTES);
    const differing = Math.round(regions * percent / 100);
    for (let k = 0; k < differing; k++) {
      const r = Math.floor(k * regions / differing);
      const at = r * REGION_BYTES + 8 * 4096;
      noise(image.subarray(at, Math.min(at + 4 * 4096, size)), 7 * r + 3);
    }
    await Deno.writeFile(path, image);

    const p2 = new Primary(await openSource(`file:${path}`), {
      to: [b.url],
      intervalMs: null,
      note: quiet,
    });
    const committed = p2.checkpoint();
    // Timed from the link's start, once epoch 1 is encoded (its capture and
    // encode are the same for both ways of bringing the backup up to date).
    await encoded(p2, 1);
    let t0 = performance.now();
    p2.start();
    await committed;
    const rejoinMs = performance.now() - t0;
    const r = p2.links[0].lastRejoin!;
    const verify = await p2.verify({ repair: false });
    const v = verify.peers[0];
    if ("error" in v) throw new Error(v.error);
    await p2.stop();
    await b.close();

    // A base sync of the same images: an empty backup, and a primary whose
    // log holds only its newest epoch.
    const empty = await Backup.open({
      listen: "tcp://127.0.0.1:0",
      store: `${dir}/e${percent}`,
      note: quiet,
    });
    const p3 = new Primary(await openSource(`file:${path}`), {
      to: [empty.url],
      intervalMs: null,
      logBytes: 1,
      note: quiet,
    });
    void p3.checkpoint();
    const second = p3.checkpoint();
    await encoded(p3, 2);
    t0 = performance.now();
    p3.start();
    await second;
    const baseMs = performance.now() - t0;
    const base = p3.links[0].status();
    if (base.baseSyncs !== 1) throw new Error("expected one base sync");
    await p3.stop();
    await empty.close();

    rows.push(
      `| ${percent}% (${r.regionsDiffering} of ${r.regions}) | ${
        mib(r.differingBytes)
      } | ${mib(r.wireBytes)} | ${rejoinMs.toFixed(0)} | ${
        mib(base.bytesSent)
      } | ${baseMs.toFixed(0)} | ${
        (100 * r.wireBytes / base.bytesSent).toFixed(1)
      }% | ${v.gbPerSecond.toFixed(2)} (${v.ms.toFixed(0)} ms) |`,
    );
    console.error(rows.at(-1));
  }
  console.log(
    `\nRejoin against base sync, ${
      mib(size)
    } MiB image, loopback TCP, both ends in one process:\n`,
  );
  console.log(
    "| regions differing | differing MiB | rejoin wire MiB | rejoin ms | base sync wire MiB | base sync ms | rejoin / base bytes | verify GB/s |",
  );
  console.log("|---|---:|---:|---:|---:|---:|---:|---:|");
  for (const row of rows) console.log(row);
} finally {
  await Deno.remove(dir, { recursive: true });
}
