// Issue 27: the native inference runtime (46 MiB for x64) is extracted from the binary on the first start.
// Decompressed whole in memory, it left the agent about 100 MiB bigger for the rest of its run (the first
// worker cost +155 MiB of RSS instead of +54 on a later start): it is streamed to its files now.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { zstdCompressSync } from "node:zlib";
import { isOutpostError } from "../../src/core/errors.ts";
import { extractNative, type NativeManifest } from "../../src/tasks/runtime.ts";

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** A runtime of these files, as build/build.ts stores it: concatenated, zstd-compressed, and its manifest. */
function packed(files: Record<string, Buffer>): { manifest: NativeManifest; data: Uint8Array } {
  const whole = Buffer.concat(Object.values(files));
  return {
    manifest: {
      sha256: sha(whole),
      binding: Object.keys(files).at(-1) ?? "",
      files: Object.entries(files).map(([name, bytes]) => ({ name, size: bytes.length, sha256: sha(bytes) })),
    },
    data: zstdCompressSync(whole),
  };
}

describe("extracting the native runtime", () => {
  const dirs: string[] = [];
  const temp = () => {
    const d = mkdtempSync(join(tmpdir(), "outpost-extract-"));
    dirs.push(d);
    return d;
  };
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("writes every file (an empty one too), bytes for bytes, and a later start only checks them", async () => {
    const files = {
      "libonnxruntime.so.1": randomBytes(3 * 1024 * 1024 + 7),
      "empty.txt": Buffer.alloc(0),
      "onnxruntime_binding.node": randomBytes(70_001),
    };
    const { manifest, data } = packed(files);
    const dir = temp();
    let reads = 0;
    const first = await extractNative(dir, manifest, () => {
      reads += 1;
      return data;
    });
    assert.deepEqual(first, { binding: join(dir, manifest.sha256, "onnxruntime_binding.node"), extracted: true });
    for (const [name, bytes] of Object.entries(files)) {
      assert.ok(readFileSync(join(dir, manifest.sha256, name)).equals(bytes), name);
    }
    assert.deepEqual(readdirSync(dir), [manifest.sha256], "no temporary left");
    const again = await extractNative(dir, manifest, () => {
      reads += 1;
      return data;
    });
    assert.equal(again.extracted, false);
    assert.equal(reads, 1, "the stored runtime is read only to extract it");
  });

  it("damaged data, a file damaged inside a whole that matches, bytes short or left over: refused, nothing left", async () => {
    const a = randomBytes(200_000);
    const b = randomBytes(50_000);
    const good = packed({ a, b });
    const cases: [string, NativeManifest, Uint8Array][] = [
      ["not zstd", good.manifest, randomBytes(5000)],
      ["truncated", good.manifest, good.data.subarray(0, good.data.length - 100)],
      ["another whole", good.manifest, packed({ a: b, b: a }).data],
      // The whole's sha256 matches, a file's does not (the manifest lies about where the files split).
      [
        "a file damaged",
        {
          ...good.manifest,
          files: [
            { ...(good.manifest.files[0] as NativeManifest["files"][0]), sha256: sha(b) },
            ...good.manifest.files.slice(1),
          ],
        },
        good.data,
      ],
      [
        "bytes short",
        { ...good.manifest, files: [...good.manifest.files, { name: "c", size: 10, sha256: sha(Buffer.alloc(10)) }] },
        good.data,
      ],
      ["bytes left over", { ...good.manifest, files: good.manifest.files.slice(0, 1) }, good.data],
    ];
    for (const [what, manifest, data] of cases) {
      const dir = temp();
      await assert.rejects(
        extractNative(dir, manifest, () => data),
        (err) => isOutpostError(err) && err.code === "TASK_RUNTIME_UNAVAILABLE",
        what,
      );
      assert.deepEqual(existsSync(dir) ? readdirSync(dir) : [], [], `${what}: nothing left`);
    }
  });

  it("is streamed: extracting 192 MiB raises the process's peak RSS by far less than the runtime's size", (t) => {
    // In child processes, so that the peak is this extraction's alone: a first one makes the runtime (one
    // random MiB repeated, which zstd's window finds, so the compressed input is small, as the binary's asset is
    // file-backed) without ever holding it whole; a second extracts it.
    const dir = temp();
    const maker = `
      import { createHash, randomBytes } from "node:crypto";
      import { writeFileSync } from "node:fs";
      import { createZstdCompress } from "node:zlib";
      const block = randomBytes(1 << 20);
      const hash = createHash("sha256");
      for (let i = 0; i < 192; i++) hash.update(block);
      const sha256 = hash.digest("hex");
      const z = createZstdCompress();
      const out = [];
      z.on("data", (c) => out.push(c));
      for (let i = 0; i < 192; i++) z.write(block);
      z.end();
      await new Promise((r) => z.on("end", r));
      writeFileSync(process.argv[1] + "/data.zst", Buffer.concat(out));
      writeFileSync(process.argv[1] + "/manifest.json", JSON.stringify({ sha256, binding: "lib", files: [{ name: "lib", size: 192 << 20, sha256 }] }));
    `;
    execFileSync(process.execPath, ["--input-type=module", "-e", maker, dir]);
    const measure = `
      import { readFileSync } from "node:fs";
      import { extractNative } from ${JSON.stringify(join(import.meta.dirname, "..", "..", "src", "tasks", "runtime.ts"))};
      const data = readFileSync(process.argv[1] + "/data.zst");
      const manifest = JSON.parse(readFileSync(process.argv[1] + "/manifest.json", "utf8"));
      const start = process.resourceUsage().maxRSS;
      await extractNative(process.argv[1] + "/runtime", manifest, () => data);
      console.log(JSON.stringify({ grewMiB: (process.resourceUsage().maxRSS - start) / 1024 }));
    `;
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", measure, dir], { encoding: "utf8" });
    const { grewMiB } = JSON.parse(out) as { grewMiB: number };
    t.diagnostic(`peak RSS +${grewMiB.toFixed(1)} MiB`);
    assert.ok(grewMiB < 64, `the peak RSS grew by ${grewMiB.toFixed(1)} MiB while 192 MiB were extracted`);
    assert.equal(
      readFileSync(join(dir, "runtime", JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")).sha256, "lib"))
        .length,
      192 << 20,
    );
  });
});
