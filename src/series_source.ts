/**
 * `series:DIR`: a recorded image series replayed one image per epoch.
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

/** An image series replayed one image per epoch; after the last it stays there. */
export class SeriesSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  #next = 0;
  constructor(readonly series: Series) {
    this.name = `series:${series.dir}`;
    this.images = [{
      id: imageIdFor(series.meta.name || series.dir),
      size: series.meta.size,
    }];
  }

  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    const t0 = performance.now();
    const k = Math.min(this.#next, this.series.meta.epochs - 1);
    await this.series.readImage(k, into[0]);
    this.#next++;
    return { pauseMs: performance.now() - t0 };
  }

  async close(): Promise<void> {}
}
