/**
 * The C library through FFI, for the few system calls Deno does not offer
 * (mmap, process_vm_readv, setsockopt on a listener). Linux and macOS;
 * `null` elsewhere, or where FFI is not permitted, and callers then keep to
 * Deno's own APIs.
 * @module
 */

/**
 * Opens libc with `symbols`, or returns null. Checks the FFI permission
 * first, so a role without it never prompts.
 * @example
 * ```ts
 * const libc = openLibc({ getpid: { parameters: [], result: "i32" } });
 * libc?.symbols.getpid();
 * ```
 */
export function openLibc<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
): Deno.DynamicLibrary<S> | null {
  const name = Deno.build.os === "linux"
    ? "libc.so.6"
    : Deno.build.os === "darwin"
    ? "libSystem.B.dylib"
    : null;
  if (name === null) return null;
  try {
    if (
      Deno.permissions.querySync({ name: "ffi", path: name }).state !==
        "granted"
    ) return null;
    return Deno.dlopen(name, symbols);
  } catch {
    return null;
  }
}
