/**
 * Worker side of `runFuzzIsolated` (_fuzz.ts): runs the cases and beats a
 * shared counter per case, so the parent can tell a hang from slow progress.
 * @module
 */
/// <reference lib="deno.worker" />

import { type FuzzOptions, runFuzz, TARGETS } from "./_fuzz.ts";

self.onmessage = async (ev: MessageEvent) => {
  const { options, marker } = ev.data as {
    options: FuzzOptions;
    marker: SharedArrayBuffer;
  };
  const view = new Int32Array(marker);
  try {
    const summary = await runFuzz({
      ...options,
      onCase(target, index) {
        Atomics.store(view, 0, TARGETS.indexOf(target));
        Atomics.store(view, 1, index);
        Atomics.add(view, 2, 1);
      },
      onProgress: (progress) =>
        self.postMessage({ kind: "progress", progress }),
      onResult: (result) => self.postMessage({ kind: "result", result }),
    });
    self.postMessage({ kind: "done", summary });
  } catch (e) {
    self.postMessage({
      kind: "error",
      message: (e as Error)?.stack ?? String(e),
    });
  }
};
