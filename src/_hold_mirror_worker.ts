/**
 * The reader of one netdev's mirrored packets (see `qemu_output_hold.ts`),
 * in a worker of its own so that the primary's encoding, which blocks its
 * main thread for milliseconds at a time, does not delay the timestamps.
 *
 * Messages in: `{ listen: PATH }` (once; answers `{ listening: true }`),
 * `{ take: N }` (answers `{ taken: N, times }`: the arrival times, ms on the
 * `performance.timeOrigin + performance.now()` clock, of the packets read
 * since the last take), `{ close: true }`.
 * @module
 */

/// <reference lib="deno.worker" />

let times: number[] = [];
let listener: Deno.UnixListener | null = null;
let conn: Deno.UnixConn | null = null;

/**
 * QEMU frames each mirrored packet as a 4-byte big-endian length and the
 * packet: a packet is counted when its length arrives, its bytes skipped.
 */
async function read(c: Deno.UnixConn): Promise<void> {
  const buf = new Uint8Array(256 << 10);
  const view = new DataView(buf.buffer);
  let have = 0;
  let skip = 0;
  try {
    for (;;) {
      const n = await c.read(buf.subarray(have));
      if (n === null) return;
      const now = performance.timeOrigin + performance.now();
      have += n;
      let at = 0;
      for (;;) {
        if (skip > 0) {
          const s = Math.min(skip, have - at);
          skip -= s;
          at += s;
          if (skip > 0) break;
        }
        if (have - at < 4) break;
        times.push(now);
        skip = view.getUint32(at);
        at += 4;
      }
      buf.copyWithin(0, at, have);
      have -= at;
    }
  } catch {
    // closed
  }
}

self.onmessage = async (e: MessageEvent) => {
  const m = e.data as { listen?: string; take?: number; close?: boolean };
  if (m.listen) {
    listener = Deno.listen({ transport: "unix", path: m.listen });
    self.postMessage({ listening: true });
    try {
      conn = await listener.accept();
      read(conn);
    } catch {
      // closed before QEMU connected
    }
  } else if (m.take !== undefined) {
    const out = times;
    times = [];
    self.postMessage({ taken: m.take, times: out });
  } else if (m.close) {
    try {
      conn?.close();
    } catch {
      // already closed
    }
    try {
      listener?.close();
    } catch {
      // already closed
    }
    self.close();
  }
};
