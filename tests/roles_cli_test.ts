/**
 * `deno task primary|relay|backup` as real subprocesses: the command forms the
 * README shows, their control planes, and their errors.
 */

import { assert, assertEquals } from "./_assert.ts";
import { runTool } from "./_run_tool.ts";
import { rolePermissions } from "../tools/_role_permissions.ts";
import { bytesEqual } from "../src/replay.ts";

const ROOT = new URL("..", import.meta.url).pathname;
// The relay's flags: the least any role runs with (the primary adds -A).
const PERMS = rolePermissions("relay");

/** A role running as a subprocess, with its stderr read line by line. */
class RoleProcess {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  #waiters: (() => void)[] = [];
  readonly done: Promise<void>;
  stdout = "";

  constructor(tool: string, args: string[]) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", ...PERMS, `${ROOT}tools/${tool}.ts`, ...args],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const readLines = async (
      stream: ReadableStream<Uint8Array>,
      onText: (t: string) => void,
    ) => {
      let buf = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          onText(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      }
      if (buf) onText(buf);
    };
    this.done = Promise.all([
      readLines(this.child.stderr, (l) => {
        this.lines.push(l);
        for (const w of this.#waiters.splice(0)) w();
      }),
      readLines(this.child.stdout, (l) => {
        this.stdout += l + "\n";
        this.lines.push(l);
        for (const w of this.#waiters.splice(0)) w();
      }),
    ]).then(() => {
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  /** Waits for a line matching `re`; returns its match. */
  async waitFor(re: RegExp, ms = 20_000): Promise<RegExpMatchArray> {
    const end = Date.now() + ms;
    for (;;) {
      for (const l of this.lines) {
        const m = l.match(re);
        if (m) return m;
      }
      if (Date.now() > end) {
        throw new Error(
          `timed out waiting for ${re}; output so far:\n${
            this.lines.join("\n")
          }`,
        );
      }
      await Promise.race([
        new Promise<void>((r) => this.#waiters.push(r)),
        new Promise((r) => setTimeout(r, 200)),
      ]);
    }
  }

  async stop(): Promise<number> {
    try {
      this.child.kill("SIGTERM");
    } catch {
      // already exited
    }
    const status = await this.child.status;
    await this.done;
    return status.code;
  }
}

Deno.test("CLI: backup ← relay ← primary as three processes replicate a file; control planes answer", async () => {
  const dir = await Deno.makeTempDir();
  const image = new Uint8Array(3 << 20);
  for (let i = 0; i < image.length; i += 4096) image[i] = i / 4096 & 255;
  await Deno.writeFile(`${dir}/vm.img`, image);
  const backup = new RoleProcess("backup", [
    "--listen",
    "tcp://127.0.0.1:0",
    "--store",
    `${dir}/store`,
    "--http",
    "127.0.0.1:0",
  ]);
  let primary: RoleProcess | null = null;
  try {
    const bUrl = (await backup.waitFor(/listening on (tcp:\/\/\S+)/))[1];
    const bHttp = (await backup.waitFor(/control plane on (http:\/\/\S+)/))[1];
    const relay = new RoleProcess("relay", [
      "--listen",
      "tcp://127.0.0.1:0",
      "--to",
      bUrl,
      "--ack",
      "all",
      "--ack-level",
      "durable",
      "--http",
      "127.0.0.1:0",
    ]);
    try {
      const rUrl = (await relay.waitFor(/listening on (tcp:\/\/\S+)/))[1];
      const rHttp = (await relay.waitFor(/control plane on (http:\/\/\S+)/))[1];
      primary = new RoleProcess("primary", [
        "--source",
        `file:${dir}/vm.img`,
        "--to",
        rUrl,
        "--interval",
        "manual",
        "--ack",
        "all",
        "--ack-level",
        "durable",
        "--http",
        "127.0.0.1:0",
      ]);
      const pHttp =
        (await primary.waitFor(/control plane on (http:\/\/\S+)/))[1];
      // Manual checkpoints through the control plane.
      for (let k = 1; k <= 3; k++) {
        image[k * 4096 + 7] = 0xee;
        await Deno.writeFile(`${dir}/vm.img`, image);
        const res = await fetch(`${pHttp}/checkpoint`, { method: "POST" });
        assertEquals(res.status, 200);
        const figures = await res.json();
        assertEquals(figures.epoch, k);
        await primary.waitFor(new RegExp(`epoch ${k} committed`));
        const stored = await Deno.readFile(`${dir}/store/vm.img`);
        assert(
          bytesEqual(stored, image),
          `store equals the file at epoch ${k}`,
        );
      }
      const status = await (await fetch(`${pHttp}/status`)).json();
      assertEquals(status.role, "primary");
      assertEquals(status.committedEpoch, 3);
      assertEquals(status.peers[0].state, "live");
      const rStatus = await (await fetch(`${rHttp}/status`)).json();
      assertEquals(rStatus.role, "relay");
      assertEquals(rStatus.peers[0].acked.durable, 3);
      const bStatus = await (await fetch(`${bHttp}/status`)).json();
      assertEquals(bStatus.role, "backup");
      assertEquals(bStatus.epoch, 3);
      const metrics = await (await fetch(`${pHttp}/metrics`)).text();
      assert(
        /patchwire_committed_epoch\{role="primary"\} 3/.test(metrics),
        metrics,
      );
      assertEquals(await (await fetch(`${bHttp}/healthz`)).text(), "ok\n");
      const wrong = await fetch(`${bHttp}/checkpoint`, { method: "POST" });
      assertEquals(wrong.status, 409);
      await wrong.body?.cancel();
    } finally {
      await primary?.stop();
      await relay.stop();
    }
    // The primary is gone: promote the backup through its control plane,
    // which refuses options that make no sense, saying which.
    for (
      const [bad, why] of [
        [{ interval: -5 }, /"interval" must be a whole number of ms >= 1/],
        [{ to: "tcp://x:1" }, /"to" must be an array of peer URLs/],
        [{ colour: "red" }, /unknown promote option "colour"/],
      ] as const
    ) {
      const r = await fetch(`${bHttp}/promote`, {
        method: "POST",
        body: JSON.stringify(bad),
      });
      assertEquals(r.status, 400);
      assert(why.test((await r.json()).error));
    }
    const res = await fetch(`${bHttp}/promote`, {
      method: "POST",
      body: JSON.stringify({ to: [], ack: "none", interval: "manual" }),
    });
    const body = await res.json();
    assertEquals(res.status, 200, JSON.stringify(body));
    assertEquals(body.epoch, 3);
    const after = await (await fetch(`${bHttp}/status`)).json();
    assertEquals(after.role, "primary");
  } finally {
    await backup.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: --help tells the command forms; bad arguments exit 2 or 1 with a clear error", async () => {
  for (const tool of ["primary", "relay", "backup"]) {
    const help = await runTool(tool, PERMS, ["--help"]);
    assertEquals(help.code, 0);
    assert(help.stdout.includes(`deno task ${tool}`), help.stdout);
  }
  const noStore = await runTool("backup", PERMS, [
    "--listen",
    "tcp://127.0.0.1:0",
  ]);
  assertEquals(noStore.code, 2);
  assert(noStore.stderr.includes("--store is required"), noStore.stderr);
  const badUrl = await runTool("backup", PERMS, [
    "--listen",
    "carrier-pigeon://x",
    "--store",
    "/tmp/never",
  ]);
  assertEquals(badUrl.code, 2);
  assert(badUrl.stderr.includes("--listen carrier-pigeon://x"), badUrl.stderr);
  // Peer and listen URLs are checked at start, naming the flag, not at every retry.
  for (
    const [tool, args, want] of [
      ["primary", [
        "--source",
        "synthetic:size=64K",
        "--to",
        "tcp://127.0.0.1:1,foo://x:1",
      ], 'unsupported transport scheme "foo:"'],
      [
        "primary",
        ["--source", "synthetic:size=64K", "--to", "tcp://127.0.0.1"],
        "--to tcp://127.0.0.1: no port",
      ],
      [
        "relay",
        ["--listen", "tcp://127.0.0.1:0", "--to", "ws://:5/x"],
        "--to ws://:5/x",
      ],
      [
        "primary",
        [
          "--source",
          "synthetic:size=64K",
          "--to",
          "tcp://127.0.0.1:5",
          "--listen",
          "tcp://127.0.0.1:0",
          "--store",
          "/tmp/never",
        ],
        "--listen and --store are for a primary in a cluster",
      ],
      [
        "backup",
        [
          "--listen",
          "tcp://127.0.0.1:0",
          "--store",
          "/tmp/never",
          "--follow-leader",
        ],
        "--follow-leader needs --etcd, --cluster and --name",
      ],
      [
        "relay",
        ["--listen", "tls://127.0.0.1:0", "--to", "tcp://127.0.0.1:5"],
        "give --cert FILE and --key FILE",
      ],
      [
        "backup",
        ["--listen", "wss://127.0.0.1:0/pw", "--store", "/tmp/never"],
        "a wss listener serves a certificate",
      ],
      [
        "backup",
        [
          "--listen",
          "tcp://127.0.0.1:0",
          "--store",
          "/tmp/never",
          "--max-image-bytes",
          "4 furlongs",
        ],
        '--max-image-bytes must be a size in bytes >= 1 (K, M, G, T allowed), got "4 furlongs"',
      ],
      [
        "relay",
        [
          "--listen",
          "tcp://127.0.0.1:0",
          "--to",
          "tcp://127.0.0.1:5",
          "--max-total-image-bytes",
          "0",
        ],
        "--max-total-image-bytes must be a size in bytes >= 1",
      ],
      [
        "primary",
        [
          "--source",
          "synthetic:size=64K",
          "--to",
          "tcp://127.0.0.1:5",
          "--etcd",
          "http://127.0.0.1:5",
          "--cluster",
          "c1",
        ],
        "--etcd needs --name NODE",
      ],
      [
        "backup",
        [
          "--listen",
          "tcp://127.0.0.1:0",
          "--store",
          "/tmp/never",
          "--cluster",
          "c1",
        ],
        "--cluster and --name need --etcd URL[,URL...]",
      ],
    ] as [string, string[], string][]
  ) {
    const r = await runTool(tool, PERMS, args);
    assertEquals(r.code, 2, `${tool} ${args.join(" ")}: ${r.stderr}`);
    assert(r.stderr.includes(want), r.stderr);
  }
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/afile`, "x");
    const badStore = await runTool("backup", PERMS, [
      "--listen",
      "tcp://127.0.0.1:0",
      "--store",
      `${dir}/afile`,
    ]);
    assertEquals(badStore.code, 1);
    assert(badStore.stderr.includes(`${dir}/afile`), badStore.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const badAck = await runTool("primary", PERMS, [
    "--source",
    "synthetic:size=64K",
    "--to",
    "tcp://127.0.0.1:1",
    "--ack",
    "most",
  ]);
  assertEquals(badAck.code, 2);
  // etcd that does not answer: a clear error at start, naming it.
  const noEtcd = await runTool("primary", PERMS, [
    "--source",
    "synthetic:size=64K",
    "--to",
    "tcp://127.0.0.1:5",
    "--etcd",
    "http://127.0.0.1:9",
    "--cluster",
    "c1",
    "--name",
    "n1",
  ]);
  assertEquals(noEtcd.code, 1, noEtcd.stderr);
  assert(
    noEtcd.stderr.includes("etcd unreachable (http://127.0.0.1:9"),
    noEtcd.stderr,
  );
  assert(badAck.stderr.includes('bad ack policy "most"'), badAck.stderr);
  const badSource = await runTool("primary", PERMS, [
    "--source",
    "file:/nonexistent/vm.img",
    "--to",
    "tcp://127.0.0.1:1",
  ]);
  assertEquals(badSource.code, 1);
  assert(badSource.stderr.includes("/nonexistent/vm.img"), badSource.stderr);
});

Deno.test("CLI: a role without libzstd stops at start, naming the library", async () => {
  for (
    const [tool, args] of [
      ["backup", ["--listen", "tcp://127.0.0.1:0", "--store", "/tmp/never"]],
      ["primary", [
        "--source",
        "synthetic:size=64K",
        "--to",
        "tcp://127.0.0.1:1",
      ]],
    ] as [string, string[]][]
  ) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...rolePermissions(tool as "primary"),
        `${ROOT}tools/${tool}.ts`,
        ...args,
      ],
      cwd: ROOT,
      env: { PATCHWIRE_LIBZSTD: "/nonexistent/libzstd.so.1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 1, stderr);
    assert(
      /the codec needs libzstd.*install libzstd1/.test(stderr),
      stderr,
    );
  }
});

Deno.test("CLI: a backup serves its ws: endpoint and its control plane on one port", async () => {
  const dir = await Deno.makeTempDir();
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const backup = new RoleProcess("backup", [
    "--listen",
    `ws://127.0.0.1:${port}/replicate`,
    "--store",
    `${dir}/store`,
    "--http",
    `127.0.0.1:${port}`,
  ]);
  let primary: RoleProcess | null = null;
  try {
    await backup.waitFor(/control plane on http:/);
    primary = new RoleProcess("primary", [
      "--source",
      "synthetic:images=2,size=256K",
      "--to",
      `ws://127.0.0.1:${port}/replicate`,
      "--interval",
      "50",
      "--epochs",
      "3",
    ]);
    await primary.waitFor(/epoch 3 committed/);
    assertEquals(await primary.child.status.then((s) => s.code), 0);
    const status = await (await fetch(`http://127.0.0.1:${port}/status`))
      .json();
    assertEquals(status.role, "backup");
    assert(status.epoch >= 3, `backup epoch ${status.epoch}`);
  } finally {
    await primary?.stop();
    await backup.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: backup --promote starts as a primary from its store's last committed epoch", async () => {
  const dir = await Deno.makeTempDir();
  const { Backup } = await import("../src/backup.ts");
  const { Primary } = await import("../src/primary.ts");
  const { openSource } = await import("../src/open_source.ts");
  const b = await Backup.open({
    listen: "tcp://127.0.0.1:0",
    store: `${dir}/store`,
    note: () => {},
  });
  const p = new Primary(await openSource("synthetic:images=1,size=128K"), {
    to: [b.url],
    intervalMs: null,
    note: () => {},
  });
  p.start();
  for (let i = 0; i < 3; i++) await p.checkpoint();
  await p.stop();
  await b.close();
  const promoted = new RoleProcess("backup", [
    "--listen",
    "tcp://127.0.0.1:0",
    "--store",
    `${dir}/store`,
    "--promote",
    "--ack",
    "none",
    "--interval",
    "manual",
    "--http",
    "127.0.0.1:0",
  ]);
  try {
    const http = (await promoted.waitFor(/control plane on (http:\/\/\S+)/))[1];
    await promoted.waitFor(/promoted to primary at epoch 3/);
    const res = await fetch(`${http}/checkpoint`, { method: "POST" });
    const figures = await res.json();
    assertEquals(figures.epoch, 4, JSON.stringify(figures));
    const status = await (await fetch(`${http}/status`)).json();
    assertEquals(status.role, "primary");
    assertEquals(status.committedEpoch, 4);
  } finally {
    await promoted.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: the demo replicates through a relay to tcp, quic and ws backups and verifies them", async () => {
  const run = await runTool("demo", PERMS, [
    "--epochs",
    "6",
    "--synthetic",
    "images=2,size=1M,seed=3,dirty=0.05",
  ]);
  assertEquals(run.code, 0, run.stderr + run.stdout);
  assert(
    run.stdout.includes(
      "verification: all 3 backups' stored images equal the primary's committed epoch 6",
    ),
    run.stdout,
  );
  assertEquals(run.stdout.match(/^epoch +\d+ /gm)?.length, 6, run.stdout);
});

Deno.test("CLI: deno task verify finds a page scribbled into a backup's store and --repair sends it back; --verify-every exports the bytes out of sync", async () => {
  const dir = await Deno.makeTempDir();
  const image = new Uint8Array(2 << 20);
  for (let i = 0; i < image.length; i += 64) image[i] = (i / 64) & 255;
  await Deno.writeFile(`${dir}/vm.img`, image);
  const backup = new RoleProcess("backup", [
    "--listen",
    "tcp://127.0.0.1:0",
    "--store",
    `${dir}/store`,
  ]);
  let primary: RoleProcess | null = null;
  try {
    const bUrl = (await backup.waitFor(/listening on (tcp:\/\/\S+)/))[1];
    primary = new RoleProcess("primary", [
      "--source",
      `file:${dir}/vm.img`,
      "--to",
      bUrl,
      "--interval",
      "manual",
      "--ack-level",
      "durable",
      "--verify-every",
      "1",
      "--http",
      "127.0.0.1:0",
    ]);
    const http = (await primary.waitFor(/control plane on (http:\/\/\S+)/))[1];
    const res = await fetch(`${http}/checkpoint`, { method: "POST" });
    assertEquals((await res.json()).epoch, 1);
    const verify = (args: string[]) =>
      runTool("verify", ["--allow-net", "--allow-read"], [
        "--http",
        http,
        ...args,
      ]);

    const clean = await verify([]);
    assertEquals(clean.code, 0, clean.stdout + clean.stderr);
    assert(
      /epoch 1, 2\.0 MiB compared at .* GB\/s: in sync/.test(clean.stdout),
      clean.stdout,
    );

    // Durable acks: the store holds epoch 1 on disk now; damage one page of it.
    const f = await Deno.open(`${dir}/store/vm.img`, { write: true });
    await f.seek(5 * 4096 + 10, Deno.SeekMode.Start);
    await f.write(new Uint8Array([1, 2, 3]));
    f.close();
    const found = await verify([]);
    assertEquals(found.code, 1, found.stdout + found.stderr);
    assert(/4\.0 KiB out of sync/.test(found.stdout), found.stdout);
    assert(/vm at 20480: 4096 bytes differ/.test(found.stdout), found.stdout);
    // The periodic verify finds it too, and the metric says so.
    await primary.waitFor(
      /verify: peer \S+ at epoch 1: 4096 bytes out of sync/,
    );
    const metrics = await (await fetch(`${http}/metrics`)).text();
    assert(
      /patchwire_out_of_sync_bytes\{role="primary",peer="[^"]+"\} 4096/.test(
        metrics,
      ),
      metrics,
    );

    const repaired = await verify(["--repair"]);
    assertEquals(repaired.code, 0, repaired.stdout + repaired.stderr);
    assert(/repaired: now in sync/.test(repaired.stdout), repaired.stdout);
    assert(bytesEqual(await Deno.readFile(`${dir}/store/vm.img`), image));

    const help = await runTool("verify", ["--allow-net", "--allow-read"], [
      "--help",
    ]);
    assert(/--repair/.test(help.stdout) && help.code === 0);
    const noHttp = await runTool("verify", ["--allow-net", "--allow-read"], []);
    assertEquals(noHttp.code, 2);
    assert(/--http is required/.test(noHttp.stderr), noHttp.stderr);
  } finally {
    await primary?.stop();
    await backup.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
