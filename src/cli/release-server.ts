// Serves a release's chunks over MQTT (docs/mqtt-api.md, "update/get, update/data"): `ctl update` and a
// rollout's driver. Anyone may ask (the release is signed); only the release's two files are ever read.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { join } from "node:path";
import { constants, zstdCompressSync } from "node:zlib";
import type { MqttClient } from "mqtt";
import type { Manifest } from "../ota/manifest.ts";
import { chunkRequestSchema, encodeAnswer, ZSTD_ID } from "../ota/mqtt-source.ts";

/** Level 6: a full x64 binary in 1 MiB ranges goes 122.8 -> 51.4 MiB in 1.2 s (level 3: 53.4, 0.8 s). */
const ZSTD_LEVEL = 6;
/** Ranges kept compressed: a wave's devices ask for the same ones, one after another. */
const CACHED = 16;

export class ReleaseServer {
  readonly manifest: Manifest;
  private readonly artifact: { fd: number; size: number };
  private readonly index: { fd: number; size: number } | undefined;
  private readonly compressed = new Map<string, Buffer>();
  /** Bytes published, headers and all: what the devices' links carried. */
  wireBytes = 0;

  constructor(dir: string, m: Manifest) {
    const open = (name: string) => {
      const fd = openSync(join(dir, name), "r");
      return { fd, size: fstatSync(fd).size };
    };
    this.manifest = m;
    this.artifact = open(m.artifact);
    this.index = "chunks" in m.index ? undefined : open(`index-${m.index.sha256}.json`);
  }

  /**
   * Answers one request on `P/D/update/get` on `P/D/update/data`; returns the bytes served (0 for a request
   * that is refused: not for this release, past the end, or larger than `maxRange`).
   */
  serve(
    client: MqttClient,
    prefix: string,
    device: string,
    payload: Buffer,
    maxRange = Number.POSITIVE_INFINITY,
  ): number {
    let parsed: ReturnType<typeof chunkRequestSchema.safeParse>;
    try {
      parsed = chunkRequestSchema.safeParse(JSON.parse(payload.toString("utf8")));
    } catch {
      return 0;
    }
    if (!parsed.success) return 0;
    const r = parsed.data;
    const m = this.manifest;
    const reply = (header: Parameters<typeof encodeAnswer>[0], bytes?: Buffer) => {
      const answer = encodeAnswer(header, bytes);
      this.wireBytes += answer.length;
      client.publish(`${prefix}/${device}/update/data`, answer, { qos: 1 });
    };
    const file = r.file === "artifact" ? this.artifact : this.index;
    if (r.release !== m.sha256 || !file) {
      reply({ id: r.id, error: `this server serves ${m.version} (${m.sha256.slice(0, 12)})` });
      return 0;
    }
    // Devices ask for at most MQTT_MAX_RANGE at once: a larger request is no device's, and costs a read.
    if (r.size > maxRange) {
      reply({ id: r.id, error: `${r.size} bytes at once: at most ${maxRange}` });
      return 0;
    }
    if (r.offset + r.size > file.size) {
      reply({ id: r.id, error: `${r.offset}+${r.size} is past the end of the ${r.file} (${file.size} bytes)` });
      return 0;
    }
    const bytes = Buffer.allocUnsafe(r.size);
    readSync(file.fd, bytes, 0, r.size, r.offset);
    // Compressed for a device that says it takes zstd, when that is smaller; raw for every other.
    const packed = r.id.startsWith(ZSTD_ID) ? this.pack(`${r.file}:${r.offset}:${r.size}`, bytes) : undefined;
    if (packed) reply({ id: r.id, offset: r.offset, size: r.size, encoding: "zstd" }, packed);
    else reply({ id: r.id, offset: r.offset, size: r.size }, bytes);
    return r.size;
  }

  private pack(key: string, bytes: Buffer): Buffer | undefined {
    let packed = this.compressed.get(key);
    if (packed === undefined) {
      const made = zstdCompressSync(bytes, { params: { [constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL } });
      // Kept only when smaller (an empty buffer marks "send raw"); the most recently used stay.
      packed = made.length < bytes.length ? made : Buffer.alloc(0);
    } else this.compressed.delete(key);
    this.compressed.set(key, packed);
    const oldest = this.compressed.keys().next().value;
    if (this.compressed.size > CACHED && oldest !== undefined) this.compressed.delete(oldest);
    return packed.length > 0 ? packed : undefined;
  }

  close(): void {
    closeSync(this.artifact.fd);
    if (this.index) closeSync(this.index.fd);
  }
}
