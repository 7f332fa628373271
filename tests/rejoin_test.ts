/**
 * Rejoin by block hashes and online verify, over real sockets with real
 * stores: a follower whose images left the primary's history gets only the
 * pages that differ, and verify finds bytes changed in a backup's store
 * behind its back, and `repair` sends just those.
 */

import { assert, assertEquals } from "./_assert.ts";
import { until } from "./_until.ts";
import { Primary } from "../src/primary.ts";
import { Backup } from "../src/backup.ts";
import { openSource } from "../src/open_source.ts";
import { bytesEqual } from "../src/replay.ts";
import { baseSyncBytes } from "../src/base_sync.ts";
import { createZstd } from "../src/compress/zstd.ts";
import { REGION_BYTES } from "../src/region_digest.ts";

const quiet = () => {};
const IMAGE_BYTES = 8 << 20;

/** Deterministic incompressible bytes (xorshift32 from `seed`). */
function noise(bytes: Uint8Array, seed: number): void {
  const words = new Uint32Array(
    bytes.buffer,
    bytes.byteOffset,
    bytes.length >>> 2,
  );
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
}

async function storeEquals(b: Backup, p: Primary): Promise<boolean> {
  await until(
    () => b.store.state?.epoch === p.committed,
    `store at epoch ${p.committed}`,
  );
  for (const image of p.encoder.images) {
    const stored = await Deno.readFile(`${b.store.dir}/${image.id}.img`);
    if (!bytesEqual(stored, image.committed.subarray(0, image.size))) {
      return false;
    }
  }
  return true;
}

/** Overwrites `bytes` of a file at `offset` with other bytes, as damage behind a role's back would. */
async function scribble(path: string, offset: number, bytes: number) {
  const f = await Deno.open(path, { write: true });
  try {
    const junk = new Uint8Array(bytes);
    noise(junk, offset + 99);
    await f.seek(offset, Deno.SeekMode.Start);
    await f.write(junk);
  } finally {
    f.close();
  }
}

/** A temporary directory, a file image of `size` noise bytes, and a backup with its store there. */
async function fixture(size: number, seed: number, prefix = "pw-rejoin-") {
  const dir = await Deno.makeTempDir({ prefix });
  const path = `${dir}/vm`;
  const image = new Uint8Array(size);
  noise(image, seed);
  await Deno.writeFile(path, image);
  const b = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/b`,
    note: quiet,
  });
  return { dir, path, image, b };
}

/** Checkpoints the file at `path` `epochs` times to the backup at `url` with a primary that then stops: one history. */
async function history(path: string, url: string, epochs: number) {
  const p = new Primary(await openSource(`file:${path}`), {
    to: [url],
    intervalMs: null,
    note: quiet,
  });
  p.start();
  for (let e = 0; e < epochs; e++) await p.checkpoint();
  await p.stop();
}

Deno.test("a backup whose images left the primary's history rejoins by block hashes: under 5% of regions differ, under 10% of a base sync's bytes are sent, and it ends equal", async () => {
  const { dir, path, image, b } = await fixture(IMAGE_BYTES, 1, "pw-rejoin-");
  try {
    // The first history: two epochs of the file.
    await history(path, b.url, 2);
    assertEquals(b.epoch, 2);

    // Another history over the same images: 4 of its 128 regions (3%) have
    // a page the first history never had.
    const regions = IMAGE_BYTES / REGION_BYTES;
    const changed = [5, 40, 77, 120];
    assert(changed.length / regions < 0.05);
    for (const r of changed) {
      noise(
        image.subarray(r * REGION_BYTES + 8192, r * REGION_BYTES + 12288),
        r,
      );
    }
    await Deno.writeFile(path, image);
    const notes: string[] = [];
    const p2 = new Primary(await openSource(`file:${path}`), {
      to: [b.url],
      intervalMs: null,
      link: { backoffMs: 20, maxBackoffMs: 200 },
      note: (l) => notes.push(l),
    });
    try {
      // Its epoch 1 is taken before the link connects, so the backup (at
      // epoch 2 of the other history) is brought to it.
      const committed = p2.checkpoint();
      p2.start();
      await committed;
      const link = p2.links[0];
      assertEquals(link.rejoins, 1, "a rejoin, not a base sync");
      assertEquals(link.baseSyncs, 0);
      const r = link.lastRejoin!;
      assertEquals(r.regionsDiffering, changed.length);
      assertEquals(
        r.differingBytes,
        changed.length * 4096,
        "only the pages that differ",
      );
      const full = baseSyncBytes([image], await createZstd());
      assert(
        r.wireBytes < 0.1 * full,
        `rejoin sent ${r.wireBytes} bytes, a base sync ${full}`,
      );
      assert(
        notes.some((l) =>
          /rejoined to epoch 1 by block hashes: 4 of 128 regions differed/.test(
            l,
          )
        ),
        notes.join("\n"),
      );
      assert(
        await storeEquals(b, p2),
        "the backup's store equals the new history",
      );
      // And it follows from there as usual.
      await p2.checkpoint();
      assertEquals(b.epoch, 2);
      assert(await storeEquals(b, p2));
    } finally {
      await p2.stop();
    }
  } finally {
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a backup whose images differ in most regions gets them whole, and still ends equal", async () => {
  const { dir, path, image, b } = await fixture(1 << 20, 3, "pw-rejoin-");
  try {
    await history(path, b.url, 1);
    noise(image, 4);
    await Deno.writeFile(path, image);
    const p2 = new Primary(await openSource(`file:${path}`), {
      to: [b.url],
      intervalMs: null,
      note: quiet,
    });
    try {
      const committed = p2.checkpoint();
      p2.start();
      await committed;
      const r = p2.links[0].lastRejoin!;
      assertEquals(r.wholeImages, 1);
      assertEquals(r.differingBytes, image.length);
      assert(await storeEquals(b, p2));
    } finally {
      await p2.stop();
    }
  } finally {
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("verify finds a page changed in a backup's store behind its back, names it, and repair sends just it", async () => {
  const { dir, path, b } = await fixture(IMAGE_BYTES, 5, "pw-verify-");
  const p = new Primary(await openSource(`file:${path}`), {
    to: [b.url],
    intervalMs: null,
    note: quiet,
  });
  try {
    p.start();
    await p.checkpoint();
    await p.checkpoint();
    const clean = await p.verify({ repair: false });
    const first = clean.peers[0];
    assert(!("error" in first), JSON.stringify(first));
    assertEquals(first.outOfSyncBytes, 0);
    assertEquals(first.bytes, IMAGE_BYTES);
    assertEquals(first.epoch, 2);

    await until(() => b.store.state?.epoch === 2, "store at epoch 2");
    await scribble(`${b.store.dir}/vm.img`, 3 * (1 << 20) + 4096 * 7, 100);
    const found = await p.verify({ repair: false });
    const peer = found.peers[0];
    assert(!("error" in peer), JSON.stringify(peer));
    assertEquals(peer.outOfSyncBytes, 4096);
    assertEquals(peer.differing, [{
      image: "vm",
      offset: 3 * (1 << 20) + 4096 * 7,
      bytes: 4096,
    }]);
    assertEquals(p.status().peers, [
      {
        ...(p.status().peers as Record<string, unknown>[])[0],
        outOfSyncBytes: 4096,
      },
    ]);

    const fixed = await p.verify({ repair: true });
    const after = fixed.peers[0];
    assert(!("error" in after) && after.repaired, JSON.stringify(after));
    assertEquals(after.repaired!.outOfSyncBytes, 0);
    assertEquals(
      p.links[0].lastRejoin!.differingBytes,
      4096,
      "repair sent one page",
    );
    assert(await storeEquals(b, p), "the store is whole again");
    await p.checkpoint();
    assertEquals(b.epoch, p.committed);
  } finally {
    await p.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a page of a backup's store changed while it was stopped is reported, keeps it from being promoted, and is repaired by a rejoin that sends just that page", async () => {
  const { PortRange } = await import("../tools/_role_process.ts");
  const { unhealthy } = await import("../src/control_plane.ts");
  const dir = await Deno.makeTempDir({ prefix: "pw-damaged-" });
  const path = `${dir}/vm`;
  const image = new Uint8Array(IMAGE_BYTES);
  noise(image, 11);
  await Deno.writeFile(path, image);
  // A fixed port (from the range below the ephemeral ports), so that the
  // primary's link finds the backup again after its restart.
  const listen = `tcp://127.0.0.1:${new PortRange().take()}`;
  let b = await Backup.open({ listen, store: `${dir}/b`, note: quiet });
  const p = new Primary(await openSource(`file:${path}`), {
    to: [listen],
    intervalMs: null,
    link: { backoffMs: 20, maxBackoffMs: 100 },
    note: quiet,
  });
  try {
    p.start();
    await p.checkpoint();
    await p.checkpoint();
    await until(() => b.store.state?.epoch === 2, "store at epoch 2");
    await b.close();
    await scribble(`${dir}/b/vm.img`, 5 * (1 << 20) + 4096 * 3, 10);

    const notes: string[] = [];
    const rejoins = p.links[0].rejoins;
    b = await Backup.open({
      listen,
      store: `${dir}/b`,
      note: (l) => notes.push(l),
    });
    assert(
      notes.some((l) =>
        /image "vm" has digest .* it changed while this backup was stopped/
          .test(l)
      ),
      notes.join("\n"),
    );
    // Read before any await: the upstream cannot have repaired it yet.
    assertEquals(b.status().storeDamaged, ["vm"]);
    assert(
      /stored image vm changed while the backup was stopped/.test(
        unhealthy(b.status())!,
      ),
    );
    let refused = "";
    await b.promote({ to: [], ack: { who: { kind: "none" }, level: 1 } })
      .catch((e) => refused = (e as Error).message);
    assert(
      /cannot promote: image vm in the store changed/.test(refused),
      refused,
    );
    await until(() => p.links[0].rejoins > rejoins, "the rejoin");
    assertEquals(p.links[0].lastRejoin!.differingBytes, 4096, "one page sent");
    await until(() => b.damaged.length === 0, "the repair");
    assertEquals(unhealthy(b.status()), null);
    assert(await storeEquals(b, p), "the store is whole again");
    const verify = await p.verify({ repair: false });
    const peer = verify.peers[0];
    assert(
      !("error" in peer) && peer.outOfSyncBytes === 0,
      JSON.stringify(peer),
    );
  } finally {
    await p.stop();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});
