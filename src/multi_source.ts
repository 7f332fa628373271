/**
 * Several sources as one: one epoch across all of their images.
 * @module
 */

import type { ImageSpec } from "./encoder.ts";
import {
  type CaptureResult,
  checkInto,
  type Source,
  SourceError,
} from "./source.ts";

/** Several sources as one: their images side by side, captured together. */
export class MultiSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  constructor(readonly parts: Source[]) {
    this.name = parts.map((p) => p.name).join(" ");
    this.images = parts.flatMap((p) => p.images);
    const ids = new Set<string>();
    for (const s of this.images) {
      if (ids.has(s.id)) {
        throw new SourceError(
          `two sources give an image named "${s.id}"; image ids must differ`,
        );
      }
      ids.add(s.id);
    }
  }

  async capture(into: Uint8Array[]): Promise<CaptureResult> {
    checkInto(this.images, into);
    let at = 0, pauseMs = 0;
    const dirtyPages: (Uint32Array | null)[] = [];
    for (const p of this.parts) {
      const n = p.images.length;
      const r = await p.capture(into.slice(at, at + n));
      pauseMs += r.pauseMs;
      for (let i = 0; i < n; i++) dirtyPages.push(r.dirtyPages?.[i] ?? null);
      at += n;
    }
    return { pauseMs, dirtyPages };
  }

  async close(): Promise<void> {
    for (const p of this.parts) await p.close();
  }
}
