/**
 * `synthetic:SPEC`: the seeded synthetic workload as a source, with its
 * dirty log.
 * @module
 */

import type { ImageSpec } from "./encoder.ts";
import type { SyntheticWorkload } from "./synthetic.ts";
import { type CaptureResult, checkInto, type Source } from "./source.ts";

/**
 * The synthetic workload: every capture after the first moves it one step and
 * reports the pages the step wrote (a hypervisor's dirty log), copying only those.
 */
export class SyntheticSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  #last: Uint8Array[] | null = null;
  constructor(readonly workload: SyntheticWorkload, spec = "") {
    this.name = `synthetic:${spec}`;
    this.images = workload.specs;
  }

  capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    const t0 = performance.now();
    const same = this.#last !== null &&
      this.#last.every((b, i) => b === into[i]);
    if (this.#last) this.workload.step();
    if (!same) {
      this.workload.images.forEach((img, i) => into[i].set(img));
      this.#last = into.slice();
      return Promise.resolve({ pauseMs: performance.now() - t0 });
    }
    this.workload.images.forEach((img, i) => {
      const touched = this.workload.touched[i];
      for (let w = 0; w < touched.length; w++) {
        let bits = touched[w];
        while (bits !== 0) {
          const p = (w << 5) + 31 - Math.clz32(bits & -bits);
          bits &= bits - 1;
          const off = p * 4096;
          into[i].set(img.subarray(off, Math.min(off + 4096, img.length)), off);
        }
      }
    });
    return Promise.resolve({
      pauseMs: performance.now() - t0,
      dirtyPages: this.workload.touched,
    });
  }

  async close(): Promise<void> {}
}
