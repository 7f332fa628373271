/**
 * TCP_NODELAY for the listeners Deno gives no handle for (`Deno.listenTls`,
 * a TLS `Deno.serve`): their sockets have no `setNoDelay`, so Nagle's
 * algorithm holds a small write (an ack) while an earlier one is
 * unacknowledged — a whole round trip per commit on a WAN link. Through libc
 * (FFI) this finds the listening socket by its port and sets the option on
 * it; Linux copies it to every socket the listener accepts. Linux only;
 * elsewhere, or without FFI, it does nothing and says so.
 * @module
 */

import { openLibc } from "../src/_libc.ts";

const SYMBOLS = {
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getsockopt: {
    parameters: ["i32", "i32", "i32", "buffer", "buffer"],
    result: "i32",
  },
  setsockopt: {
    parameters: ["i32", "i32", "i32", "buffer", "u32"],
    result: "i32",
  },
} as const;

const SOL_SOCKET = 1, SO_ACCEPTCONN = 30, IPPROTO_TCP = 6, TCP_NODELAY = 1;
const AF_INET = 2, AF_INET6 = 10;
/** File descriptors scanned for the listener (a role has far fewer open). */
const MAX_FD = 4096;

let libc: Deno.DynamicLibrary<typeof SYMBOLS> | null | undefined;

function load(): Deno.DynamicLibrary<typeof SYMBOLS> | null {
  if (libc === undefined) {
    libc = Deno.build.os === "linux" ? openLibc(SYMBOLS) : null;
  }
  return libc;
}

/**
 * Sets TCP_NODELAY on this process's listening TCP socket bound to `port`;
 * true if it did.
 */
export function setListenerNoDelay(port: number): boolean {
  const lib = load();
  if (!lib) return false;
  const addr = new Uint8Array(128);
  const addrLen = new Uint32Array(1);
  const value = new Int32Array(1);
  const valueLen = new Uint32Array(1);
  for (let fd = 3; fd < MAX_FD; fd++) {
    addrLen[0] = addr.length;
    if (lib.symbols.getsockname(fd, addr, new Uint8Array(addrLen.buffer))) {
      continue; // not a socket, or not open
    }
    const family = addr[0] | (addr[1] << 8);
    if (family !== AF_INET && family !== AF_INET6) continue;
    if (((addr[2] << 8) | addr[3]) !== port) continue;
    valueLen[0] = 4;
    if (
      lib.symbols.getsockopt(
        fd,
        SOL_SOCKET,
        SO_ACCEPTCONN,
        new Uint8Array(value.buffer),
        new Uint8Array(valueLen.buffer),
      ) || value[0] !== 1
    ) continue; // a connection on that port, not the listener
    value[0] = 1;
    return lib.symbols.setsockopt(
      fd,
      IPPROTO_TCP,
      TCP_NODELAY,
      new Uint8Array(value.buffer),
      4,
    ) === 0;
  }
  return false;
}
