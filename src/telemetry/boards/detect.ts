import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Board } from "../../kernel/telemetry-port.ts";
import type { Roots } from "../sysfs.ts";

export type { Board, BoardKind } from "../../kernel/telemetry-port.ts";

function read(path: string): string | undefined {
  try {
    // Device-tree strings end in NUL; lists of them are NUL-separated.
    return readFileSync(path, "utf8").replace(/\0+$/, "").trim();
  } catch {
    return undefined;
  }
}

/** `# R36 (release), REVISION: 3.0, GCID: ...` -> `36.3.0`. */
export function parseTegraRelease(text: string): string | undefined {
  const match = /^#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)/m.exec(text);
  return match ? `${match[1]}.${match[2]}` : undefined;
}

/**
 * Tells the board from the device tree (`/proc/device-tree/model` and `compatible`, or the same nodes under
 * /sys/firmware/devicetree/base), `/etc/nv_tegra_release` for Jetson Linux, and DMI on x86. Synchronous and
 * read once at start: these files do not change while the system runs.
 */
export function detectBoard(roots: Roots): Board {
  const source: string[] = [];
  const dt = (name: string) => {
    for (const [shown, path] of [
      [`/proc/device-tree/${name}`, join(roots.proc, "device-tree", name)],
      [`/sys/firmware/devicetree/base/${name}`, join(roots.sys, "firmware", "devicetree", "base", name)],
    ] as const) {
      const value = read(path);
      if (value !== undefined) {
        source.push(shown);
        return value;
      }
    }
    return undefined;
  };
  const model = dt("model");
  const compatible = (dt("compatible") ?? "").split(/\0+/).filter(Boolean);
  const tegra = read(join(roots.host, "etc", "nv_tegra_release"));
  if (tegra !== undefined) source.push("/etc/nv_tegra_release");
  const l4t = tegra === undefined ? undefined : parseTegraRelease(tegra);

  if (
    compatible.some((c) => c.startsWith("raspberrypi,") || /^brcm,bcm27\d\d$/.test(c)) ||
    /^Raspberry Pi/.test(model ?? "")
  ) {
    return { kind: "raspberry-pi", model: model ?? "Raspberry Pi", compatible, source };
  }
  if (tegra !== undefined || compatible.some((c) => c.startsWith("nvidia,tegra"))) {
    return { kind: "jetson", model: model ?? "NVIDIA Jetson", compatible, ...(l4t ? { l4t } : {}), source };
  }
  if (model !== undefined) return { kind: "other", model, compatible, source };
  const dmi = (name: string) => read(join(roots.sys, "class", "dmi", "id", name));
  const vendor = dmi("sys_vendor");
  const product = dmi("product_name");
  if (vendor !== undefined || product !== undefined) {
    source.push("/sys/class/dmi/id");
    const name = [vendor, product].filter((s) => s && s !== "To Be Filled By O.E.M.").join(" ");
    return { kind: "x86", model: name || "x86 machine", compatible: [], source };
  }
  return { kind: "other", model: "unknown", compatible: [], source };
}
