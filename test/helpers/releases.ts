import { createHash } from "node:crypto";

/** Bytes that pass for an agent binary of `arch`: an ELF header, the build's version marker, a seeded body. */
export function fakeAgent(version: string, arch: "x64" | "arm64", size: number): Buffer {
  const elf = Buffer.alloc(64);
  elf.writeUInt32BE(0x7f454c46, 0);
  elf.writeUInt16LE(arch === "x64" ? 62 : 183, 18);
  const body = Buffer.alloc(size);
  for (let i = 0, b = 0; i < size; i += 32, b++) createHash("sha256").update(`agent-${b}`).digest().copy(body, i);
  return Buffer.concat([elf, Buffer.from(`outpost-release;version=${version};`), body]);
}
