/**
 * Test TLS material: one development CA and `localhost`/`127.0.0.1` leaf per
 * test process (see src/_dev_certs.ts), made on first use.
 * @module
 */

import { type DevCerts, makeDevCerts } from "../src/_dev_certs.ts";

let cached: Promise<DevCerts> | undefined;

/** The per-process test CA and leaf (generated on first call). */
export function testCerts(): Promise<DevCerts> {
  cached ??= makeDevCerts();
  return cached;
}
