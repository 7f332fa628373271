/**
 * How much a downstream role (relay or backup) lets an upstream's HELLO
 * name: the size of each image and of all of them together. A replica holds
 * every image it replicates in memory, so a HELLO naming more than the host
 * can hold is refused in the handshake — after the token and certificate
 * checks, before anything of the images is allocated — naming the flag that
 * raises the bound.
 *
 * @example
 * ```ts
 * import { helloExceeds } from "./image_limits.ts";
 *
 * const limits = { image: 1 << 30, total: 2 ** 31 };
 * helloExceeds([{ id: "vm1", size: 4 * 2 ** 30 }], 64, limits);
 * // 'image "vm1" of 4.00 GiB is more than --max-image-bytes 1.00 GiB …'
 * helloExceeds([{ id: "vm1", size: 1 << 20 }], 64, limits); // null
 * ```
 * @module
 */

import type { ImageInfo } from "./protocol.ts";
import { formatBytes } from "./_cli.ts";

/** Bounds on the images one HELLO may name, in bytes. */
export interface ImageLimits {
  /** Largest image (`--max-image-bytes`). */
  image: number;
  /** Largest sum of the images' sizes (`--max-total-image-bytes`). */
  total: number;
}

/** Most images one HELLO may name (each costs a replica some state of its own). */
export const MAX_IMAGES = 256;

/** Used where the host's memory cannot be read. */
const FALLBACK_BYTES = 64 * 2 ** 30;

/**
 * The defaults: this host's memory (MemTotal of /proc/meminfo), for each
 * image and for all together — a replica of more could not be held anyway.
 */
export function defaultImageLimits(): ImageLimits {
  let bytes = FALLBACK_BYTES;
  try {
    const m = /^MemTotal:\s+(\d+) kB$/m.exec(
      Deno.readTextFileSync("/proc/meminfo"),
    );
    if (m) bytes = Number(m[1]) * 1024;
  } catch {
    // Not Linux, or no permission to read it: the fallback.
  }
  return { image: bytes, total: bytes };
}

/**
 * Why a HELLO naming `images` with blocks of `blockSize` bytes is refused
 * under `limits`, or null if it is within them. Checked before the images
 * are allocated.
 */
export function helloExceeds(
  images: ImageInfo[],
  blockSize: number,
  limits: ImageLimits,
): string | null {
  if (
    !Number.isInteger(blockSize) || blockSize < 16 || blockSize > 4096 ||
    blockSize % 16 !== 0
  ) {
    return `block size ${blockSize}: expected a multiple of 16 from 16 to 4096`;
  }
  if (images.length > MAX_IMAGES) {
    return `${images.length} images named, at most ${MAX_IMAGES} expected`;
  }
  let total = 0;
  const ids = new Set<string>();
  for (const i of images) {
    if (ids.has(i.id)) return `image "${i.id}" is named twice`;
    ids.add(i.id);
    if (i.size > limits.image) {
      return `image "${i.id}" of ${
        formatBytes(i.size)
      } is more than --max-image-bytes ${
        formatBytes(limits.image)
      } (${limits.image} bytes) of this replica`;
    }
    total += i.size;
  }
  if (total > limits.total) {
    return `${images.length} images of ${
      formatBytes(total)
    } together are more than --max-total-image-bytes ${
      formatBytes(limits.total)
    } (${limits.total} bytes) of this replica`;
  }
  return null;
}
