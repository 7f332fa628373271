/**
 * Output commit for a QEMU guest (Remus): the packets the guest sends on
 * its netdevs during epoch K are held inside QEMU and released only once
 * checkpoint K is committed, so after a failover the outside world has seen
 * nothing the resumed guest does not remember.
 *
 * Mechanism, per held netdev (QEMU's netfilter objects, `qemu-options.hx`):
 *
 * - one `filter-buffer` per epoch on the netdev's `rx` queue (a netdev
 *   filter's `rx` is what the guest sends). At the checkpoint that ends
 *   epoch K, while the guest is stopped, the buffer of epoch K+1 is added;
 *   a netdev's `rx` packets pass its filters from the tail to the head, so
 *   the newest buffer is the one that catches new packets. When K commits,
 *   `object-del` of K's buffer flushes its packets towards the head, past
 *   the buffers of earlier (already released) epochs, out of the host.
 *   Toggling a single buffer off and on instead releases packets early.
 *   The buffers' release `interval` is QEMU's longest (about 71 minutes):
 *   only a commit releases them.
 * - a `filter-mirror` at the tail (the first filter a sent packet meets)
 *   copies every packet to a Unix socket of ours. It holds nothing back; its
 *   arrival times give the added latency (sent → released) of every packet,
 *   reported as p50/p99.
 *
 * Packets of an epoch that never commits are never released: if the
 * primary dies they die with its host's QEMU.
 * @module
 */

import { type QmpClient, QmpError } from "./qmp.ts";
import { SampleWindow } from "./_window.ts";
import type { HeldOutput } from "./source.ts";

/** filter-buffer's `interval` is a uint32 of microseconds: its longest. */
const NEVER_US = 4_294_967_295;
/** A prefix for the QOM ids of our objects, so that they are recognised later. */
const PREFIX = "patchwire-hold";

interface Buffer {
  id: string;
  /** The epoch whose commit releases it. */
  epoch: number;
}

interface Netdev {
  id: string;
  mirror: string;
  buffers: Buffer[];
  /** Per epoch not yet released: arrival times of its packets. */
  pending: Map<number, number[]>;
  /** Reads the mirrored packets (`_hold_mirror_worker.ts`); null until the mirror is installed. */
  reader: MirrorReader | null;
}

/** The worker that timestamps one netdev's mirrored packets off the main thread. */
class MirrorReader {
  readonly #worker: Worker;
  #next = 0;
  readonly #waiting = new Map<number, (times: number[]) => void>();
  #listening: (() => void) | null = null;

  constructor(path: string) {
    this.#worker = new Worker(
      new URL("./_hold_mirror_worker.ts", import.meta.url).href,
      { type: "module" },
    );
    this.#worker.onmessage = (e: MessageEvent) => {
      const m = e.data as {
        listening?: boolean;
        taken?: number;
        times?: number[];
      };
      if (m.listening) this.#listening?.();
      if (m.taken !== undefined) {
        this.#waiting.get(m.taken)?.(m.times ?? []);
        this.#waiting.delete(m.taken);
      }
    };
    this.listening = new Promise<void>((r) => this.#listening = r);
    this.#worker.postMessage({ listen: path });
  }

  readonly listening: Promise<void>;

  /** Arrival times of the packets read since the last call (`performance.timeOrigin` + now, ms). */
  take(): Promise<number[]> {
    const n = this.#next++;
    const { promise, resolve } = Promise.withResolvers<number[]>();
    this.#waiting.set(n, resolve);
    this.#worker.postMessage({ take: n });
    return promise;
  }

  close(): void {
    this.#worker.postMessage({ close: true });
    for (const r of this.#waiting.values()) r([]);
    this.#waiting.clear();
    // The worker closes itself once it has closed its sockets.
    setTimeout(() => this.#worker.terminate(), 1000);
  }
}

/** Holds a guest's network output until the checkpoint that produced it commits. */
export class OutputHold implements HeldOutput {
  readonly what: string;
  readonly latencies = new SampleWindow();
  released = 0;
  releasedPackets = 0;
  readonly #qmp: QmpClient;
  readonly #netdevs: Netdev[];
  readonly #dir: string;
  #seq = 0;
  #closed = false;

  private constructor(qmp: QmpClient, netdevs: string[], dir: string) {
    this.#qmp = qmp;
    this.#dir = dir;
    this.what = `network output of netdev ${netdevs.join(", ")}`;
    this.#netdevs = netdevs.map((id) => ({
      id,
      mirror: `${PREFIX}-mirror-${id}`,
      buffers: [],
      pending: new Map(),
      reader: null,
    }));
  }

  /**
   * Installs the mirror and the first buffer on each netdev; the guest should
   * be stopped (a packet sent in between would go out unheld). Buffers left
   * by an earlier primary on this QEMU are adopted: the guest kept running
   * here after sending their packets, so they are released at the first
   * commit. Throws a QmpError naming the netdev if QEMU has none of that name.
   */
  static async open(qmp: QmpClient, netdevs: string[]): Promise<OutputHold> {
    const dir = await Deno.makeTempDir({ prefix: "patchwire-hold-" });
    const hold = new OutputHold(qmp, netdevs, dir);
    try {
      const existing = (await qmp.execute<{ name: string }[]>("qom-list", {
        path: "/objects",
      })).map((o) => o.name);
      for (const n of hold.#netdevs) {
        for (const name of existing) {
          if (name.startsWith(`${PREFIX}-${n.id}-`)) {
            n.buffers.push({ id: name, epoch: Infinity });
          }
          if (name === n.mirror) {
            await qmp.execute("object-del", { id: name });
            await qmp.execute("chardev-remove", { id: name }).catch(() => {});
          }
        }
        n.buffers.sort((a, b) => seqOf(a.id) - seqOf(b.id));
        hold.#seq = Math.max(hold.#seq, ...n.buffers.map((b) => seqOf(b.id)));
        await hold.#addBuffer(n, Infinity);
        await hold.#addMirror(n);
      }
    } catch (e) {
      await hold.close();
      if (
        e instanceof QmpError &&
        /network backend id|can't find value|not found/i.test(e.message)
      ) {
        throw new QmpError(
          `hold=${
            netdevs.join(",")
          }: ${e.message}; expected the id of a -netdev of this guest`,
        );
      }
      throw e;
    }
    return hold;
  }

  async #addMirror(n: Netdev): Promise<void> {
    const path = `${this.#dir}/${n.id}.sock`;
    const reader = new MirrorReader(path);
    n.reader = reader;
    await reader.listening;
    await this.#qmp.execute("chardev-add", {
      id: n.mirror,
      backend: {
        type: "socket",
        data: { addr: { type: "unix", data: { path } }, server: false },
      },
    });
    await this.#qmp.execute("object-add", {
      "qom-type": "filter-mirror",
      id: n.mirror,
      netdev: n.id,
      queue: "rx",
      outdev: n.mirror,
    });
  }

  async #addBuffer(n: Netdev, epoch: number): Promise<void> {
    const id = `${PREFIX}-${n.id}-${++this.#seq}`;
    const mirrored = n.reader !== null;
    await this.#qmp.execute("object-add", {
      "qom-type": "filter-buffer",
      id,
      netdev: n.id,
      queue: "rx",
      interval: NEVER_US,
      // Behind the mirror in the order packets meet them: before it in the list.
      ...(mirrored ? { position: `id=${n.mirror}`, insert: "before" } : {}),
    });
    n.buffers.push({ id, epoch });
  }

  /**
   * At the checkpoint that becomes `epoch`, with the guest stopped: what the
   * guest sent since the last checkpoint belongs to `epoch`; a new buffer
   * takes what it sends next.
   */
  async checkpoint(epoch: number): Promise<void> {
    // The buffers' object-add go out now, before whatever QMP command the
    // caller sends next (the device-state save): QMP runs them in order.
    const added = this.#netdevs.map((n) => {
      // A checkpoint retried after a failed encode keeps its epoch number.
      for (const b of n.buffers) if (b.epoch > epoch) b.epoch = epoch;
      return this.#addBuffer(n, epoch + 1);
    });
    const taken = this.#netdevs.map((n) =>
      n.reader ? n.reader.take() : Promise.resolve([])
    );
    const [arrived] = await Promise.all([
      Promise.all(taken),
      Promise.all(added),
    ]);
    this.#netdevs.forEach((n, k) => {
      const list = n.pending.get(epoch);
      if (list) list.push(...arrived[k]);
      else n.pending.set(epoch, arrived[k]);
    });
  }

  async committed(epoch: number): Promise<void> {
    for (const n of this.#netdevs) {
      while (n.buffers.length && n.buffers[0].epoch <= epoch) {
        const b = n.buffers[0];
        await this.#qmp.execute("object-del", { id: b.id });
        n.buffers.shift();
      }
      const now = performance.timeOrigin + performance.now();
      for (const [e, times] of n.pending) {
        if (e > epoch) continue;
        for (const t of times) this.latencies.add(now - t);
        this.releasedPackets += times.length;
        n.pending.delete(e);
      }
    }
    this.released = Math.max(this.released, epoch);
  }

  status(): Record<string, unknown> {
    return {
      what: this.what,
      netdevs: this.#netdevs.map((n) => n.id),
      releasedEpoch: this.released,
      releasedPackets: this.releasedPackets,
      heldEpochs: Math.max(0, ...this.#netdevs.map((n) => n.buffers.length)),
      addedLatencyMs: {
        p50: this.latencies.quantile(0.5),
        p99: this.latencies.quantile(0.99),
      },
    };
  }

  /**
   * Stops mirroring. The buffers stay in QEMU, holding what they hold: only
   * a commit may release them, and none will come from this primary.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const n of this.#netdevs) {
      if (n.reader) {
        await this.#qmp.execute("object-del", { id: n.mirror }).catch(() => {});
        await this.#qmp.execute("chardev-remove", { id: n.mirror }).catch(
          () => {},
        );
        n.reader.close();
      }
    }
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}

function seqOf(id: string): number {
  return Number(id.slice(id.lastIndexOf("-") + 1)) || 0;
}
