/** Test plumbing: a TCP forwarder that can stall, standing in for a stuck peer or a partition. */

/**
 * A TCP forwarder in front of a peer that can stop reading from the
 * upstream (the peer looks stalled: the kernel buffers fill, then the
 * upstream's sends wait), and start again.
 */
export class Stallable {
  readonly listener: Deno.TcpListener;
  stalled = false;
  #resume: (() => void)[] = [];
  #conns: Deno.Conn[] = [];
  constructor(readonly target: { hostname: string; port: number }) {
    this.listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#accept();
  }
  get url(): string {
    return `tcp://127.0.0.1:${this.listener.addr.port}`;
  }
  stall(): void {
    this.stalled = true;
  }
  resume(): void {
    this.stalled = false;
    for (const r of this.#resume.splice(0)) r();
  }
  async #accept(): Promise<void> {
    for await (const down of this.listener) {
      const up = await Deno.connect(this.target);
      this.#conns.push(down, up);
      this.#pipe(down, up, true);
      this.#pipe(up, down, false);
    }
  }
  async #pipe(from: Deno.Conn, to: Deno.Conn, stallable: boolean) {
    const buf = new Uint8Array(16 << 10);
    try {
      for (;;) {
        while (stallable && this.stalled) {
          await new Promise<void>((r) => this.#resume.push(r));
        }
        const n = await from.read(buf);
        if (n === null) break;
        for (let off = 0; off < n;) off += await to.write(buf.subarray(off, n));
      }
    } catch {
      // a side closed
    } finally {
      try {
        to.close();
      } catch { /* closed */ }
    }
  }
  close(): void {
    this.listener.close();
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  }
}
