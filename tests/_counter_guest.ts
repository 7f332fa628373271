/**
 * Helpers for tests with the counting guest (`counterWorkload` in
 * tools/guest.ts): its UDP datagrams and its serial console lines, each
 * carrying `count N`.
 */

import { consoleCounters, datagramCounter } from "../tools/guest.ts";

export { consoleCounters, datagramCounter };

/** A UDP listener collecting the counting guest's counters. */
export interface CounterListener {
  /** The port it listens on at 127.0.0.1 (the guest's 10.0.2.2). */
  port: number;
  /** The counters received, in arrival order. */
  counters: number[];
  /** Every datagram received, as text, in arrival order. */
  datagrams: string[];
  /** Stops listening; resolves once the receive loop has ended. */
  close(): Promise<void>;
}

/**
 * Listens for the counting guest's datagrams on 127.0.0.1:`port` (default
 * 0: a free port, see `.port`). Needs --unstable-net.
 */
export function listenCounters(port = 0): CounterListener {
  const conn = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port,
  });
  const counters: number[] = [];
  const datagrams: string[] = [];
  const decoder = new TextDecoder();
  const loop = (async () => {
    try {
      for await (const [data] of conn) {
        const text = decoder.decode(data);
        datagrams.push(text);
        const n = datagramCounter(text);
        if (n !== null) counters.push(n);
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.BadResource)) throw e;
    }
  })();
  let closed = false;
  return {
    port: (conn.addr as Deno.NetAddr).port,
    counters,
    datagrams,
    async close() {
      if (!closed) {
        closed = true;
        conn.close();
      }
      await loop;
    },
  };
}
