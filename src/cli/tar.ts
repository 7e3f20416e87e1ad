// A gzipped tar of files held in memory (`ctl diag`'s bundle): POSIX ustar, regular files only, names under 100
// bytes. tar-stream would bring four packages into the single executable for what these lines do; GNU tar reads
// the result in the test.
import { gzipSync } from "node:zlib";

const BLOCK = 512;

function header(name: string, size: number, mtime: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  const put = (text: string, at: number, length: number) => h.write(text, at, length, "utf8");
  if (Buffer.byteLength(name) >= 100 || !/^[\w.-]+(\/[\w.-]+)*$/.test(name) || name.split("/").includes("..")) {
    throw new Error(`${name}: not a plain relative name under 100 bytes`);
  }
  put(name, 0, 100);
  const field = (n: number, at: number, length: number) =>
    put(`${n.toString(8).padStart(length - 1, "0")}\0`, at, length);
  field(0o644, 100, 8);
  field(0, 108, 8);
  field(0, 116, 8);
  field(size, 124, 12);
  // Eleven octal digits: 1970 to 6429.
  field(Math.min(Math.max(0, Math.floor(mtime / 1000)), 8 ** 11 - 1), 136, 12);
  put("        ", 148, 8); // the checksum counts its own field as spaces
  put("0", 156, 1);
  put("ustar\0", 257, 6);
  put("00", 263, 2);
  let sum = 0;
  for (const byte of h) sum += byte;
  put(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8);
  return h;
}

/** The files, in order, as a .tar.gz. */
export function tarGz(files: readonly { name: string; data: string | Uint8Array }[], mtime = Date.now()): Buffer {
  const parts: Buffer[] = [];
  for (const f of files) {
    const data = typeof f.data === "string" ? Buffer.from(f.data, "utf8") : Buffer.from(f.data);
    parts.push(header(f.name, data.length, mtime), data, Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK));
  }
  parts.push(Buffer.alloc(2 * BLOCK));
  return gzipSync(Buffer.concat(parts));
}
