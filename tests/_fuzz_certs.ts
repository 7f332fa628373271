/**
 * Fixed certificate material for the fuzzing of client proofs (_fuzz.ts),
 * so that every case is the same on every run: a development CA, a leaf it
 * signed and a HELLO proof made with that leaf's key (the key itself is not
 * kept), and a leaf of an unrelated CA with its proof. Made once with
 * src/_dev_certs.ts, valid for 50 years from 2026-11-22; proofs are
 * checked at their own time. Test material only: nothing here is secret.
 * @module
 */

/** The CA the fuzzed server trusts. */
export const FUZZ_CA = `-----BEGIN CERTIFICATE-----
MIIBfDCCASKgAwIBAgIBATAKBggqhkjOPQQDAjAjMSEwHwYDVQQDExhwYXRjaHdp
cmUgZGV2ZWxvcG1lbnQgQ0EwIBcNMjYxMTIyMDkyMjAyWhgPMjA3NjExMDkxMDIy
MDJaMCMxITAfBgNVBAMTGHBhdGNod2lyZSBkZXZlbG9wbWVudCBDQTBZMBMGByqG
SM49AgEGCCqGSM49AwEHA0IABCDZcCqPslK9nJlzB0Ov+9IrYAvQBTGWGjUarXx1
QjJftU0y0iXw4SzU2W3azEI/rcldPiVisNbwDXboPtQzBemjRTBDMBIGA1UdEwEB
/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBSwnU5mcd7LBpIB
fYq7wBYiR2JfqTAKBggqhkjOPQQDAgNIADBFAiB7LUd+kywN8Y5ZYA8M7YEOI6FV
Nv0PWOWZGwvpefp+swIhAOt6v5SezIASP1/fV24rEbdVZz4cMDhAfQTuJqQtnHGF
-----END CERTIFICATE-----
`;

/** A proof by a leaf of FUZZ_CA for server "localhost". */
export const FUZZ_PROOF = {
  chain: `-----BEGIN CERTIFICATE-----
MIIBpTCCAUqgAwIBAgIBAjAKBggqhkjOPQQDAjAjMSEwHwYDVQQDExhwYXRjaHdp
cmUgZGV2ZWxvcG1lbnQgQ0EwIBcNMjYxMTIyMDkyMjAyWhgPMjA3NjExMDkxMDIy
MDJaMBQxEjAQBgNVBAMTCWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABETQzPPqOm/OoEJUYZsBrXFFDlkAEhMpyrnwUDBDzUAJJ7Fi+X7n9pbC+GZq
GYpliB4mQ3omElRO8N5HmPPjPsWjfDB6MAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/
BAQDAgWgMB0GA1UdJQQWMBQGCCsGAQUFBwMBBggrBgEFBQcDAjAaBgNVHREEEzAR
gglsb2NhbGhvc3SHBH8AAAEwHwYDVR0jBBgwFoAUsJ1OZnHeywaSAX2Ku8AWIkdi
X6kwCgYIKoZIzj0EAwIDSQAwRgIhAMAJ8yCXAaUo7UTUaMEy/pC3WL+zctJZbqfO
zLSzdHL8AiEAthcLpTfq8xCXXS0uTyZcrNXUr/mPAD4R1kIzvPY/V7E=
-----END CERTIFICATE-----`,
  serverName: "localhost",
  time: 1795342922436,
  nonce: "22bbbeb44935b5c5b9a99af33a4706a9",
  signature:
    "cec5e371414637e6dcaecfc23fa05c2c0161ec5f7481cfa847fe7057046277d92082a8a9a9fc1b41ff55eba534bb02582330ae0405180a25eecde6ca16b93486",
} as const;

/** A proof by a leaf of another CA. */
export const STRANGER_PROOF = {
  chain: `-----BEGIN CERTIFICATE-----
MIIBpDCCAUqgAwIBAgIBAjAKBggqhkjOPQQDAjAjMSEwHwYDVQQDExhwYXRjaHdp
cmUgZGV2ZWxvcG1lbnQgQ0EwIBcNMjYxMTIyMDkyMjAyWhgPMjA3NjExMDkxMDIy
MDJaMBQxEjAQBgNVBAMTCWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABA0w9X5+I2nT3j53ZstZwwItPc8CXzZnhvkJ2qZCiWLoAilOldgpzAGFDMGV
pdTIdBD4Lu9gonSL7UtNv9RKKM2jfDB6MAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/
BAQDAgWgMB0GA1UdJQQWMBQGCCsGAQUFBwMBBggrBgEFBQcDAjAaBgNVHREEEzAR
gglsb2NhbGhvc3SHBH8AAAEwHwYDVR0jBBgwFoAUZKZd5MCjsxqaTgnV8nYowNPx
LAcwCgYIKoZIzj0EAwIDSAAwRQIgXHs6N6O/+i/XSs00u64dIFD1Y9L8LaIYRD7h
TqC0TuICIQDZKw47zgsfNtt5jlH6l11c2IYXA0cxeihjPScP7jHHnQ==
-----END CERTIFICATE-----`,
  serverName: "localhost",
  time: 1795342922438,
  nonce: "49ae99221ab102367a7e01bff08bd18d",
  signature:
    "0c81c8ae0625bf7ad32333c346738983aff683375d8bcde4b4b02ceae0db6fb8fc73a73c7f6939803c1f03f30ad41426ee6c03a6d40734caf63325743ab96e7b",
} as const;
