/**
 * `series:DIR`: a recording replayed one epoch at a time: one image series,
 * or a directory of them (one image each, as `record` writes for a source
 * with several images).
 * @module
 */

import type { ImageSpec } from "./encoder.ts";
import type { Series } from "./series.ts";
import {
  type CaptureResult,
  checkInto,
  imageIdFor,
  type Source,
} from "./source.ts";

/**
 * Image series replayed together, one epoch per capture; after the last
 * epoch they stay there. A single series' image is named after its meta
 * name, each series of a set after its directory.
 */
export class SeriesSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  readonly series: Series[];
  #next = 0;
  constructor(series: Series | Series[], name?: string) {
    this.series = Array.isArray(series) ? series : [series];
    if (this.series.length === 0) {
      throw new RangeError("SeriesSource of no series, expected at least one");
    }
    this.name = name ?? `series:${this.series[0].dir}`;
    this.images = this.series.map((s) => ({
      id: imageIdFor(
        this.series.length === 1 ? (s.meta.name || s.dir) : s.dir,
      ),
      size: s.meta.size,
    }));
  }

  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    const t0 = performance.now();
    for (let i = 0; i < this.series.length; i++) {
      const s = this.series[i];
      await s.readImage(Math.min(this.#next, s.meta.epochs - 1), into[i]);
    }
    this.#next++;
    return { pauseMs: performance.now() - t0 };
  }

  async close(): Promise<void> {}
}
