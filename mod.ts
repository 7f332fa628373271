/**
 * patchwire: checkpoint replication for memory images.
 *
 * @example
 * ```ts
 * import { EpochDecoder, EpochEncoder } from "./mod.ts";
 * const specs = [{ id: "vm1", size: 1 << 20 }];
 * const encoder = new EpochEncoder(specs, { level: "fast" });
 * const decoder = new EpochDecoder(specs);
 * const image = new Uint8Array(1 << 20);
 * image[123] = 42;
 * decoder.applyEpoch(encoder.encode([image]).frames);
 * ```
 * @module
 */

export * from "./src/encoder.ts";
export * from "./src/decoder.ts";
export * from "./src/frame.ts";
export * from "./src/level.ts";
export * from "./src/digest.ts";
export * from "./src/content_index.ts";
export * from "./src/zero_run.ts";
export * from "./src/synthetic.ts";
export * from "./src/replay.ts";
export * from "./src/series.ts";
export * from "./src/hash/block_hash.ts";
export * from "./src/compress/zstd.ts";
export { ImageState, PAGE_SIZE } from "./src/image_state.ts";
export { BlockOpKind, OP_NAMES, OpKind, RefKind } from "./src/patch.ts";
export * from "./src/stream.ts";
export * from "./src/transport.ts";
export * from "./transports/mod.ts";
export * from "./src/protocol.ts";
export * from "./src/ack_policy.ts";
export * from "./src/retained_log.ts";
export * from "./src/base_sync.ts";
export * from "./src/source.ts";
export * from "./src/file_source.ts";
export * from "./src/multi_source.ts";
export * from "./src/open_source.ts";
export * from "./src/proc_source.ts";
export * from "./src/qemu_source.ts";
export * from "./src/qmp.ts";
export * from "./src/series_source.ts";
export * from "./src/synthetic_source.ts";
export * from "./src/peer_link.ts";
export * from "./src/primary.ts";
export * from "./src/relay.ts";
export * from "./src/backup.ts";
export * from "./src/backup_store.ts";
export * from "./src/control_plane.ts";
