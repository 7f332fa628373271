/**
 * The `Source` interface: what a primary replicates. A source gives a fixed
 * set of images and captures their current contents once per epoch. The
 * kinds (opened by spec in `open_source.ts`):
 *
 * - `file:PATH` — a file or device whose contents are one image (`file_source.ts`)
 * - `qemu:QMP_SOCKET?mem=PATH` — a live QEMU guest's RAM (`qemu_source.ts`)
 * - `series:DIR` — an image series, one image per epoch (`series_source.ts`)
 * - `synthetic:SPEC` — the seeded synthetic workload (`synthetic_source.ts`)
 *
 * Several at once are one `MultiSource` (`multi_source.ts`).
 * @module
 */

import type { ImageSpec } from "./encoder.ts";

/** What one capture did. */
export interface CaptureResult {
  /** How long the source was paused (or read, if it is not paused), ms. */
  pauseMs: number;
  /**
   * Per image, a bitmap of the pages that may have changed since the last
   * capture (bit `p & 31` of word `p >>> 5`), when the source keeps a dirty
   * log; null or absent: unknown, the encoder scans the whole image.
   */
  dirtyPages?: (Uint32Array | null)[];
  /**
   * Per image, the length in use of a sized image (`ImageSpec.sized`): its
   * contents are the first `length` bytes, and the source zeroed the rest.
   * Absent or undefined for an image: all of its size.
   */
  lengths?: (number | undefined)[];
}

/** Output a source holds until the checkpoint that produced it is committed (Remus's output commit). */
export interface HeldOutput {
  /** What is held, for messages: e.g. `network output of netdev n0`. */
  readonly what: string;
  /**
   * Every epoch up to and including `epoch` is committed: releases what the
   * source holds for them. Called in order, never twice for an epoch.
   */
  committed(epoch: number): Promise<void>;
  /** Figures for /status (and, flattened, /metrics). */
  status(): Record<string, unknown>;
}

/** Something with images to replicate. */
export interface Source {
  /** What it is, for logs: the spec it was opened from. */
  readonly name: string;
  readonly images: ImageSpec[];
  /**
   * Writes each image's current contents into `into[i]` (exactly
   * `images[i].size` bytes). Callers pass the same buffers every time, so a
   * source with a dirty log may write only the pages it reports in
   * `dirtyPages`.
   *
   * `epoch` is the epoch this capture will be committed as: a source that
   * holds output ties what the workload emits up to this capture to it.
   */
  capture(into: Uint8Array[], epoch?: number): Promise<CaptureResult>;
  /** Present when the source holds output until its epoch commits. */
  readonly held?: HeldOutput;
  /** Something the operator should know about what is replicated; the role prints it at start. */
  readonly notice?: string;
  /**
   * Optional: stops the workload for good, because this node is no longer
   * the primary (a newer term exists) and nothing it does may reach the
   * outside world: a QEMU guest is paused, with its held output never
   * released; a process is stopped. Sources without a workload of their
   * own (files, recordings) have nothing to stop.
   */
  halt?(): Promise<void>;
  close(): Promise<void>;
}

/** A source spec was bad or its target unusable. */
export class SourceError extends Error {
  override name = "SourceError";
}

/** Throws unless `into` holds one buffer of the right size per image. */
export function checkInto(images: ImageSpec[], into: Uint8Array[]): void {
  if (into.length !== images.length) {
    throw new RangeError(
      `capture into ${into.length} buffers, expected ${images.length}`,
    );
  }
  images.forEach((s, i) => {
    if (into[i].length !== s.size) {
      throw new RangeError(
        `capture buffer for "${s.id}" is ${
          into[i].length
        } bytes, expected ${s.size}`,
      );
    }
  });
}

/** A spec `KIND:TARGET?key=value&...` split up; `fail` throws a SourceError naming the spec. */
export interface SourceSpec {
  target: string;
  params: URLSearchParams;
  fail: (what: string) => never;
}

/**
 * Splits `KIND:TARGET?key=value&...`, refusing options not in `options`
 * (name → what its value is, for the message).
 * @example
 * ```ts
 * import { parseSourceSpec } from "./source.ts";
 * const { target, params } = parseSourceSpec("proc:42?size=1G", { size: "SIZE" });
 * console.log(target, params.get("size")); // 42 1G
 * ```
 */
export function parseSourceSpec(
  spec: string,
  options: Record<string, string>,
): SourceSpec {
  const rest = spec.slice(spec.indexOf(":") + 1);
  const q = rest.indexOf("?");
  const fail = (what: string): never => {
    throw new SourceError(`${spec}: ${what}`);
  };
  const params = new URLSearchParams(q < 0 ? "" : rest.slice(q + 1));
  for (const key of params.keys()) {
    if (!(key in options)) {
      fail(
        `unknown option "${key}"; expected ${
          Object.entries(options).map(([k, v]) => `${k}=${v}`).join(", ")
        }`,
      );
    }
  }
  return { target: q < 0 ? rest : rest.slice(0, q), params, fail };
}

/** An image id from a file name (without a `.img` suffix): the characters image ids allow. */
export function imageIdFor(path: string): string {
  const base = (path.split("/").filter(Boolean).at(-1) ?? "image").replace(
    /\.img$/,
    "",
  );
  const id = base.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 128);
  return id === "." || id === ".." || id === "" ? "image" : id;
}
