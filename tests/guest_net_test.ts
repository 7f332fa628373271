/**
 * The counting guest (tools/guest.ts `counterWorkload` with `net`): a TCG
 * guest with a virtio NIC on QEMU user networking sends one UDP datagram per
 * counter to the host, matching its serial console. Needs
 * qemu-system-x86_64, a kernel in /boot with its modules, busybox and cpio.
 */

import { assert, assertEquals, assertThrows } from "./_assert.ts";
import {
  counterWorkload,
  findKernel,
  netModules,
  startGuest,
} from "../tools/guest.ts";
import { consoleCounters, listenCounters } from "./_counter_guest.ts";
import { until } from "./_until.ts";

Deno.test("guest net: the NIC's kernel modules, dependencies first; a clear error without them", () => {
  const mods = netModules(findKernel());
  const names = mods.map((m) => m.name);
  assert(names.includes("virtio_net"), names.join(" "));
  const edges = [["failover", "net_failover"], ["net_failover", "virtio_net"]];
  for (const [dep, user] of edges) {
    if (names.includes(user)) {
      assert(names.indexOf(dep) < names.indexOf(user), names.join(" "));
    }
  }
  assertThrows(
    () => netModules("/boot/vmlinuz-9.9.9-none", "/nonexistent"),
    /apt-get install linux-image-9\.9\.9-none/,
  );
  assertThrows(() => counterWorkload(0), RangeError);
});

Deno.test("guest net: the counter workload's datagrams are consecutive and match the console", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pw-guest-net-" });
  const listener = listenCounters();
  const t0 = performance.now();
  const guest = await startGuest({
    dir: `${dir}/vm`,
    memMiB: 128,
    net: { udpPort: listener.port },
    workload: counterWorkload(listener.port),
  }).catch(async (e) => {
    await listener.close();
    await Deno.remove(dir, { recursive: true });
    throw e;
  });
  const bootMs = performance.now() - t0;
  try {
    assert(guest.args.includes("virtio-net-pci,netdev=n0,romfile="));
    assert(guest.args.includes(
      `memory-backend-file,id=m,size=128M,mem-path=${guest.mem},share=on`,
    ));
    assert(guest.pid > 0);
    const t1 = performance.now();
    await until(() => listener.counters.length >= 20, "20 datagrams", 60_000);
    const rate = 20 / ((performance.now() - t1) / 1000);
    const got = listener.counters.slice();
    const first = got[0];
    assertEquals(got, got.map((_, k) => first + k), `got ${got}`);
    assert(first >= 1 && first <= 3, `the first counter is ${first}`);
    // every datagram's counter was printed on the console (which may be ahead)
    await until(
      () => consoleCounters(guest.console()).length >= got.at(-1)!,
      "the console to catch up",
      10_000,
    );
    const shown = consoleCounters(guest.console());
    assertEquals(shown.slice(first - 1, first - 1 + got.length), got);
    assertEquals(shown, shown.map((_, k) => k + 1));
    console.log(
      `boot ${bootMs.toFixed(0)} ms, ~${
        rate.toFixed(1)
      } datagrams/s; first datagram ${JSON.stringify(listener.datagrams[0])}`,
    );
  } finally {
    await guest.stop();
    await listener.close();
    await Deno.remove(dir, { recursive: true });
  }
});
