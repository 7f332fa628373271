/**
 * Web Streams faces of the codec, so roles compose the pipeline with
 * `pipeThrough`: checkpoints → {@linkcode createEncodeStream} → frames →
 * (transport, relays) → {@linkcode createDecodeStream} → applied epochs.
 * @module
 */

import type { AppliedEpoch, EpochDecoder } from "./decoder.ts";
import type { EncodedEpoch, EpochEncoder } from "./encoder.ts";

/**
 * Encodes each checkpoint (one array of images, in the encoder's order)
 * into its frames. `onEpoch` sees every epoch's figures.
 *
 * @example
 * ```ts
 * const frames = checkpoints.pipeThrough(createEncodeStream(encoder));
 * ```
 */
export function createEncodeStream(
  encoder: EpochEncoder,
  onEpoch?: (epoch: EncodedEpoch) => void,
): TransformStream<Uint8Array[], Uint8Array> {
  return new TransformStream({
    transform(images, controller) {
      const encoded = encoder.encode(images);
      onEpoch?.(encoded);
      for (const frame of encoded.frames) controller.enqueue(frame);
    },
  });
}

/**
 * Applies frames as they arrive; emits one {@linkcode AppliedEpoch} per
 * committed epoch. A rejected epoch errors the stream with the
 * DecodeError (nothing of it was applied).
 *
 * @example
 * ```ts
 * for await (const applied of frames.pipeThrough(createDecodeStream(decoder))) {
 *   console.log(applied.epoch);
 * }
 * ```
 */
export function createDecodeStream(
  decoder: EpochDecoder,
): TransformStream<Uint8Array, AppliedEpoch> {
  return new TransformStream({
    transform(frame, controller) {
      const applied = decoder.receive(frame);
      if (applied) controller.enqueue(applied);
    },
  });
}
