import { assert, assertEquals } from "./_assert.ts";
import { EpochDecoder } from "../src/decoder.ts";
import { EpochEncoder } from "../src/encoder.ts";
import { createDecodeStream, createEncodeStream } from "../src/stream.ts";
import { SyntheticWorkload } from "../src/synthetic.ts";
import { bytesEqual } from "../src/replay.ts";

Deno.test("checkpoints piped through encode and decode streams arrive applied, in order", async () => {
  const w = new SyntheticWorkload({ seed: 41, images: 2, size: 96 * 4096 + 5 });
  const encoder = new EpochEncoder(w.specs);
  const decoder = new EpochDecoder(w.specs);
  const epochs = 5;
  const snapshots: Uint8Array[][] = [];
  const checkpoints = new ReadableStream<Uint8Array[]>({
    start(controller) {
      for (let e = 0; e < epochs; e++) {
        if (e > 0) w.step();
        snapshots.push(w.images.map((i) => i.slice()));
        controller.enqueue(w.images.map((i) => i.slice()));
      }
      controller.close();
    },
  });
  const seen: number[] = [];
  for await (
    const applied of checkpoints.pipeThrough(createEncodeStream(encoder))
      .pipeThrough(createDecodeStream(decoder))
  ) {
    seen.push(applied.epoch);
  }
  assertEquals(seen, [1, 2, 3, 4, 5]);
  snapshots.at(-1)!.forEach((image, i) =>
    assert(
      bytesEqual(decoder.images[i].committed.subarray(0, image.length), image),
    )
  );
  encoder.close();
  decoder.close();
});

Deno.test("a corrupted frame errors the decode stream", async () => {
  const w = new SyntheticWorkload({ seed: 43, images: 1, size: 32 * 4096 });
  const encoder = new EpochEncoder(w.specs);
  const decoder = new EpochDecoder(w.specs);
  const frames = encoder.encode(w.images).frames.map((f) => new Uint8Array(f));
  frames[0][frames[0].length - 3] ^= 1;
  let error: unknown;
  try {
    for await (
      const _ of ReadableStream.from(frames).pipeThrough(
        createDecodeStream(decoder),
      )
    ) {
      // nothing
    }
  } catch (e) {
    error = e;
  }
  assert(
    error instanceof Error && error.message.includes("rejected"),
    String(error),
  );
  assertEquals(decoder.epoch, 0);
  encoder.close();
  decoder.close();
});
