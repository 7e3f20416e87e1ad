import { closeSync, openSync, readSync } from "node:fs";

const ELF_MACHINE: Record<number, string> = { 62: "x86_64", 183: "aarch64" };

/** The ELF machine of a file's first bytes ("x86_64", "aarch64", or the number), or undefined when not ELF. */
export function elfMachineOf(head: Uint8Array): string | undefined {
  const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  if (b.length < 20 || b.readUInt32BE(0) !== 0x7f454c46) return undefined;
  const machine = b.readUInt16LE(18);
  return ELF_MACHINE[machine] ?? `machine ${machine}`;
}

/** The ELF machine of a file ("x86_64", "aarch64", or the number), or undefined when it is not ELF. */
export function elfMachine(path: string): string | undefined {
  const head = Buffer.alloc(20);
  const fd = openSync(path, "r");
  try {
    readSync(fd, head, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  return elfMachineOf(head);
}
