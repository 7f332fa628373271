/** The stored QEMU command line and how a resume rewrites it for another host. */

import { assertEquals } from "./_assert.ts";
import {
  decodeMachine,
  encodeMachine,
  MACHINE_FORMAT,
  memoryBackendPath,
  netdevIds,
  parseOptionList,
  type QemuMachine,
  rewriteForResume,
} from "../src/qemu_machine.ts";

const machine: QemuMachine = {
  format: MACHINE_FORMAT,
  binary: "/usr/bin/qemu-system-x86_64",
  args: [
    "-m",
    "256M",
    "-object",
    "memory-backend-file,id=m,size=256M,mem-path=/old/ram,share=on",
    "-machine",
    "memory-backend=m",
    "-qmp",
    "unix:/old/qmp.sock,server,nowait",
    "-chardev",
    "socket,id=mon1,path=/old/mon1.sock,server=on,wait=off",
    "-mon",
    "chardev=mon1,mode=control",
    "-chardev",
    "socket,id=ser,path=/old/serial.sock,server=on,wait=off",
    "-netdev",
    "user,id=n0",
    "-netdev",
    "id=n1,type=user",
    "-serial",
    "stdio",
    "-pidfile",
    "/old/qemu.pid",
    "-daemonize",
    "-incoming",
    "defer",
  ],
  memPath: "/old/ram",
  memBackendId: "m",
  ramSize: 256 << 20,
  qemuVersion: "7.2.22",
  held: ["n0"],
};

Deno.test("a machine record round-trips through its image", () => {
  assertEquals(decodeMachine(encodeMachine(machine)), machine);
});

Deno.test("QEMU option lists: commas, doubled commas, bare words", () => {
  assertEquals(parseOptionList("file,path=/a,,b,share"), [
    ["file", null],
    ["path", "/a,b"],
    ["share", null],
  ]);
});

Deno.test("netdev ids and the memory backend's path are read from the command line", () => {
  assertEquals(netdevIds(machine.args), ["n0", "n1"]);
  assertEquals(memoryBackendPath(machine.args, "m"), {
    path: "/old/ram",
    size: "256M",
  });
  assertEquals(memoryBackendPath(machine.args, "other"), null);
});

Deno.test("resume rewrites the RAM file, sockets and console for this host, and drops the old host's monitor, pid file and -incoming", () => {
  const args = rewriteForResume(
    machine,
    "/new/ram",
    "/new/console.log",
    "/new",
  );
  assertEquals(args, [
    "-m",
    "256M",
    "-object",
    "memory-backend-file,id=m,size=256M,mem-path=/new/ram,share=on",
    "-machine",
    "memory-backend=m",
    "-chardev",
    "socket,id=mon1,path=/new/mon1.sock,server=on,wait=off",
    "-chardev",
    "socket,id=ser,path=/new/serial.sock,server=on,wait=off",
    "-netdev",
    "user,id=n0",
    "-netdev",
    "id=n1,type=user",
    "-serial",
    "file:/new/console.log",
  ]);
});
