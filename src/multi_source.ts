/**
 * Several sources as one: one epoch across all of their images.
 * @module
 */

import type { ImageSpec } from "./encoder.ts";
import {
  type CaptureResult,
  checkInto,
  type HeldOutput,
  type Source,
  SourceError,
} from "./source.ts";

/** Several sources as one: their images side by side, captured together. */
export class MultiSource implements Source {
  readonly name: string;
  readonly images: ImageSpec[];
  readonly held?: HeldOutput;
  readonly notice?: string;
  constructor(readonly parts: Source[]) {
    this.name = parts.map((p) => p.name).join(" ");
    this.images = parts.flatMap((p) => p.images);
    const notices = parts.flatMap((p) => p.notice ? [p.notice] : []);
    if (notices.length) this.notice = notices.join("\n");
    const held = parts.flatMap((p) => p.held ? [p.held] : []);
    if (held.length === 1) this.held = held[0];
    else if (held.length > 1) {
      this.held = {
        what: held.map((h) => h.what).join("; "),
        async committed(epoch) {
          for (const h of held) await h.committed(epoch);
        },
        status: () => ({ parts: held.map((h) => h.status()) }),
      };
    }
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

  async capture(into: Uint8Array[], epoch?: number): Promise<CaptureResult> {
    checkInto(this.images, into);
    let at = 0, pauseMs = 0;
    const dirtyPages: (Uint32Array | null)[] = [];
    const lengths: (number | undefined)[] = [];
    for (const p of this.parts) {
      const n = p.images.length;
      const r = await p.capture(into.slice(at, at + n), epoch);
      pauseMs += r.pauseMs;
      for (let i = 0; i < n; i++) {
        dirtyPages.push(r.dirtyPages?.[i] ?? null);
        lengths.push(r.lengths?.[i]);
      }
      at += n;
    }
    return { pauseMs, dirtyPages, lengths };
  }

  async halt(): Promise<void> {
    for (const p of this.parts) await p.halt?.();
  }

  async close(): Promise<void> {
    for (const p of this.parts) await p.close();
  }
}
