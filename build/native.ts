// Native helpers compiled per target with Debian's gcc (build/native/*.c), carried inside the bundle.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";

interface NativeTarget {
  arch: string;
  cc: string;
}

/**
 * Compiles build/native/sd-notify.c for every target; returns base64 per Node arch. Reproducible: no debug
 * info, no build id, stripped, the source named by a relative path from a fixed directory.
 */
export function compileSdNotify(root: string, stage: string, targets: NativeTarget[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const { arch, cc } of targets) {
    const file = join(stage, `sd-notify-${arch}.node`);
    execFileSync(
      cc,
      [
        "-O2",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wl,--build-id=none",
        "-s",
        "-o",
        file,
        "build/native/sd-notify.c",
      ],
      { cwd: root, stdio: ["ignore", "ignore", "inherit"] },
    );
    out[arch] = readFileSync(file).toString("base64");
  }
  return out;
}
