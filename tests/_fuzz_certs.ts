/**
 * Fixed certificate material for the fuzzing of client proofs (_fuzz.ts),
 * so that every case is the same on every run: a development CA, a leaf it
 * signed, a connection's challenge and the PROOF answering it made with
 * that leaf's key (the key itself is not kept), and a leaf of an unrelated
 * CA with its proof of the same challenge. Made once with
 * src/_dev_certs.ts, valid for 50 years from 2026-12-03.
 * Test material only: nothing here is secret.
 * @module
 */

/** The CA the fuzzed server trusts. */
export const FUZZ_CA = `-----BEGIN CERTIFICATE-----
MIIBezCCASKgAwIBAgIBATAKBggqhkjOPQQDAjAjMSEwHwYDVQQDExhwYXRjaHdp
cmUgZGV2ZWxvcG1lbnQgQ0EwIBcNMjYxMjAzMTE1NzA1WhgPMjA3NjExMjAxMjU3
MDVaMCMxITAfBgNVBAMTGHBhdGNod2lyZSBkZXZlbG9wbWVudCBDQTBZMBMGByqG
SM49AgEGCCqGSM49AwEHA0IABFBXihDiUt21wJPGF1ak9JHDrv2QkmZiYuSIAG7V
bv5u3sJK6J3WKvNJ7XPRL/T9ye8FUc+CETpBktgOYbapwJijRTBDMBIGA1UdEwEB
/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBRGZh8ZPTE5nCuO
/NxoQ+n1Ff4eWDAKBggqhkjOPQQDAgNHADBEAiBJ3XO3NotWA5ymUIoR8HosMUbR
Q64RXcQWxc0L9m57rwIgfE1/sDfOKKwir+3/bCpuDVg1Y4eiEZUJ6VIgHovCCCM=
-----END CERTIFICATE-----
`;

/** The challenge the fixed proofs answer. */
export const FUZZ_CHALLENGE =
  "0b30557a9fc4e90e33587da2c7ec11365b80a5caef14395e83a8cdf2173c6186";

/** A proof by a leaf of FUZZ_CA for server "localhost". */
export const FUZZ_PROOF = {
  chain: `-----BEGIN CERTIFICATE-----
MIIBpTCCAUqgAwIBAgIBAjAKBggqhkjOPQQDAjAjMSEwHwYDVQQDExhwYXRjaHdp
cmUgZGV2ZWxvcG1lbnQgQ0EwIBcNMjYxMjAzMTE1NzA1WhgPMjA3NjExMjAxMjU3
MDVaMBQxEjAQBgNVBAMTCWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABCO1bwLg4j6p3c5iu/0hsLHMB8ZRacxyP8V7M4WA0xzUYBfLmOQ9qM1tF1xM
Y4Fbt8WZnwF2lZXYFSdwjsV1lKWjfDB6MAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/
BAQDAgWgMB0GA1UdJQQWMBQGCCsGAQUFBwMBBggrBgEFBQcDAjAaBgNVHREEEzAR
gglsb2NhbGhvc3SHBH8AAAEwHwYDVR0jBBgwFoAURmYfGT0xOZwrjvzcaEPp9RX+
HlgwCgYIKoZIzj0EAwIDSQAwRgIhAL5FCRjqt+tAHjrtknQ/cQVlwR9ubeMMYKAJ
4vXJ2YD1AiEAht2/uIDohPfE+drBgqm0edRzFxlnEm/wgw7oS/PQOOI=
-----END CERTIFICATE-----`,
  serverName: "localhost",
  signature:
    "95e7a5a43e6cc43da0e67840ec685f3b4a3bf87c4e22161ce95624c44fe8da57bdb33196a13fb20fe945e5158029685b07407887a18dd99b9737725b53f1891b",
} as const;

/** A proof by a leaf of another CA. */
export const STRANGER_PROOF = {
  chain: `-----BEGIN CERTIFICATE-----
MIIBpDCCAUqgAwIBAgIBAjAKBggqhkjOPQQDAjAjMSEwHwYDVQQDExhwYXRjaHdp
cmUgZGV2ZWxvcG1lbnQgQ0EwIBcNMjYxMjAzMTE1NzA1WhgPMjA3NjExMjAxMjU3
MDVaMBQxEjAQBgNVBAMTCWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABD4u/yJwxKN3cfdDbkvAQrehJYdptkoiIJPIIk8P3ZJftTrWSibnWj+jFgB/
F5/9kLh384stH0PMlhukQS6sbzCjfDB6MAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/
BAQDAgWgMB0GA1UdJQQWMBQGCCsGAQUFBwMBBggrBgEFBQcDAjAaBgNVHREEEzAR
gglsb2NhbGhvc3SHBH8AAAEwHwYDVR0jBBgwFoAUIUeYTXAzlusSv7zdGPY6BRai
wzIwCgYIKoZIzj0EAwIDSAAwRQIhAJeGRz9U1seoSdSm3hcAVdNq4+uLEzPrTLbe
Ys4e8BioAiB79jC7RdIsI6eUyElY7d7iMiTsK/p13mWPGdCjgwjGww==
-----END CERTIFICATE-----`,
  serverName: "localhost",
  signature:
    "8acfa0f2f246a71d8e25bf62b9c43f86f3f52e5c8f0c1b21a62983aec978937fa75ab2943fb126591abbee8e37e747a7888bf7edd92cbd017598f9e5e7c5939e",
} as const;

/** When the fuzzed server checks the fixed proofs (its clock, for certificate validity). */
export const FUZZ_CHECK_TIME = Date.parse("2026-12-04T00:00:00Z");
