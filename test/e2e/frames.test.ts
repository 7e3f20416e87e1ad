// Issue 21, items 1 and 5: camera frames against the built x64 binary installed as the real unit
// (`MemoryMax=384M`), under a real systemd (PID 1 of a private namespace, test/helpers/systemd.ts), 3 workers.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { crc32 } from "node:zlib";
import * as ort from "onnxruntime-node";
import { ROOT } from "../helpers/agent-process.ts";
import { frameJpeg, framePng, referenceTensor } from "../helpers/frames.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { PREFIX } from "../helpers/operator.ts";
import { FIXTURES, MODEL, sample } from "../helpers/parts-model.ts";
import { Systemd } from "../helpers/systemd.ts";

// FRAMES_BIN runs the file against another build (under ROOT, which the namespace sees), e.g. an older one.
const BIN = process.env.FRAMES_BIN ?? join(ROOT, "dist", "outpost-linux-x64");
const DEVICE = "dev-frames";
const FOLDER = "/var/lib/outpost/frames";
const INPUT = { width: 64, height: 64, channels: 1 as const };

/** The label a whole-image decode (pngjs or jpeg-js in this process) and this process's onnxruntime give. */
async function referenceLabel(session: ort.InferenceSession, bytes: Buffer): Promise<string> {
  const data = referenceTensor(bytes, { ...INPUT, scale: 1 / 255, mean: [0], std: [1] });
  const out = await session.run({ [session.inputNames[0] ?? ""]: new ort.Tensor("float32", data, [1, 1, 64, 64]) });
  const scores = Array.from(out[session.outputNames[0] ?? ""]?.data as Float32Array);
  return FIXTURES.labels[scores.indexOf(Math.max(...scores))] ?? "?";
}

/** A sample PNG made unique by a tEXt chunk (its pixels, and so its verdict, unchanged). */
function uniquePng(name: string, n: number): Buffer {
  const png = sample(name);
  const text = Buffer.from(`frame\0${n}`, "latin1");
  const chunk = Buffer.alloc(12 + text.length);
  chunk.writeUInt32BE(text.length, 0);
  chunk.write("tEXt", 4, "latin1");
  text.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + text.length)), 8 + text.length);
  return Buffer.concat([png.subarray(0, 33), chunk, png.subarray(33)]);
}

describe("camera frames under the installed unit (real systemd, built x64 binary, 3 workers)", () => {
  let sd: Systemd;
  let broker: Mosquitto;
  let watch: Watch;
  let dir: string;
  const inside = (...parts: string[]) => sd.path(join(...parts));
  const results = (m: Received) => m.topic === `${PREFIX}/${DEVICE}/results/inspect` && m.json.source === "watch";

  before(async () => {
    assert.ok(existsSync(BIN), `${BIN} is missing: run npm run build first`);
    mkdirSync(join(ROOT, ".cache"), { recursive: true });
    dir = mkdtempSync(join(ROOT, ".cache", "frames-test-"));
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/${DEVICE}/#`]);
    const config = {
      device: { id: DEVICE },
      mqtt: { url: broker.url, reconnectMax: "1s" },
      telemetry: { interval: "5s" },
      tasks: {
        workers: 3,
        define: {
          inspect: {
            type: "classify-image",
            model: "/etc/outpost/parts.onnx",
            labels: FIXTURES.labels,
            input: INPUT,
            pass: { labels: ["good"] },
            watch: { dir: FOLDER, settle: "0s", poll: "50ms" },
          },
        },
      },
    };
    writeFileSync(join(dir, "config.json"), JSON.stringify(config));
    sd = await Systemd.boot(ROOT);
    const model = await sd.sh(`install -D -m 0644 ${inside(MODEL)} /etc/outpost/parts.onnx`);
    assert.equal(model.code, 0, model.stderr);
    const install = await sd.exec([inside(BIN), "install", "--config", inside(dir, "config.json")], 120_000);
    assert.equal(install.code, 0, install.stderr + (await sd.journal("outpost")));
    await watch.waitFor(
      (m) => m.topic === `${PREFIX}/${DEVICE}/status` && m.json.state === "online",
      30_000,
      "online under the unit",
    );
    const deadline = Date.now() + 30_000;
    while ((await sd.sh(`test -d ${FOLDER}/inbox`)).code !== 0) {
      assert.ok(Date.now() < deadline, "the watched folder was not made");
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  after(async () => {
    await sd?.shutdown();
    await watch?.close();
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Drops files into the inbox the documented atomic way: written beside it under a dot name, renamed in. */
  const drop = (files: { from: string; as: string }[]) =>
    sd.sh(
      [
        ...files.map(
          (f) => `cp ${inside(f.from)} ${FOLDER}/.${f.as}.tmp && chown outpost:outpost ${FOLDER}/.${f.as}.tmp`,
        ),
        ...files.map((f) => `mv ${FOLDER}/.${f.as}.tmp ${FOLDER}/inbox/${f.as}`),
      ].join(" && "),
    );

  it("three 24 MP PNGs and a 12.3 MP JPEG at once: judged as the reference judges them, NRestarts stays 0", async (t) => {
    const frames = [
      { as: "a.png", bytes: framePng("chip-1.png", 6000, 4000) },
      { as: "b.png", bytes: framePng("good-1.png", 6000, 4000) },
      { as: "c.png", bytes: framePng("scratch-1.png", 6000, 4000) },
      { as: "d.jpg", bytes: frameJpeg("good-2.png", 4056, 3040) },
    ];
    const session = await ort.InferenceSession.create(MODEL);
    const expected = new Map<string, string>();
    for (const f of frames) {
      writeFileSync(join(dir, f.as), f.bytes);
      expected.set(f.as, await referenceLabel(session, f.bytes));
    }
    await session.release();
    assert.deepEqual([...expected.values()], ["chip", "good", "scratch", "good"], "the frames show their samples");
    const from = watch.items.length;
    const dropped = await drop(frames.map((f) => ({ from: join(dir, f.as), as: f.as })));
    assert.equal(dropped.code, 0, dropped.stderr);
    const seen = new Map<string, Record<string, unknown>>();
    const deadline = Date.now() + 120_000;
    while (seen.size < frames.length) {
      assert.ok(Date.now() < deadline, `results for ${[...seen.keys()].join(", ")} only`);
      for (const m of watch.items.slice(from).filter(results)) {
        const file = (m.json.input as { file?: string } | undefined)?.file ?? "";
        seen.set(file, m.json);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    for (const f of frames) {
      const r = seen.get(f.as);
      assert.equal(r?.ok, true, `${f.as}: ${JSON.stringify(r?.error)}`);
      assert.equal(r?.label, expected.get(f.as), f.as);
      assert.equal(
        (r?.input as { sha256?: string } | undefined)?.sha256,
        createHash("sha256").update(f.bytes).digest("hex"),
      );
    }
    assert.equal(await sd.show("outpost", "NRestarts"), "0");
    assert.equal(await sd.show("outpost", "ActiveState"), "active");
    const peak = await sd.sh("cat /sys/fs/cgroup/system.slice/outpost.service/memory.peak 2>/dev/null || true");
    if (peak.stdout.trim()) t.diagnostic(`the unit's memory peak: ${(Number(peak.stdout) / 2 ** 20).toFixed(0)} MiB`);
  });

  it("300 frames of one reused name, SIGKILLed twice: every frame exactly once, its result beside it", async (t) => {
    const COUNT = 300;
    const cam = join(dir, "camera");
    mkdirSync(cam);
    const hashes = new Set<string>();
    const names = ["good-1.png", "chip-1.png", "scratch-1.png"];
    for (let i = 0; i < COUNT; i++) {
      const bytes = uniquePng(names[i % names.length] ?? "good-1.png", i);
      hashes.add(createHash("sha256").update(bytes).digest("hex"));
      writeFileSync(join(cam, `${String(i).padStart(3, "0")}.png`), bytes);
    }
    assert.equal(hashes.size, COUNT);
    // The camera: renames its next latest.png in as soon as the previous one left inbox/.
    const script = [
      "set -e",
      `for f in ${inside(cam)}/[0-9]*.png; do`,
      `  cp "$f" ${FOLDER}/.latest.tmp && chown outpost:outpost ${FOLDER}/.latest.tmp`,
      `  mv ${FOLDER}/.latest.tmp ${FOLDER}/inbox/latest.png`,
      `  while [ -e ${FOLDER}/inbox/latest.png ]; do sleep 0.01; done`,
      "done",
    ].join("\n");
    writeFileSync(join(cam, "camera.sh"), script);
    const started = await sd.sh(`systemd-run --unit=camera --quiet bash ${inside(cam, "camera.sh")}`);
    assert.equal(started.code, 0, started.stderr);
    const judged = async () =>
      Number(
        (await sd.sh(`ls ${FOLDER}/done ${FOLDER}/failed | grep -c '^latest\\.png\\(\\.[0-9]*\\)\\?$' || true`)).stdout,
      );
    // Already judged before this test: none of that name.
    const deadline = Date.now() + 240_000;
    for (const at of [80, 180]) {
      while ((await judged()) < at) {
        assert.ok(Date.now() < deadline, `only ${await judged()} frames judged`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const killed = await sd.sh("systemctl kill -s KILL outpost");
      assert.equal(killed.code, 0, killed.stderr);
      t.diagnostic(`SIGKILL after ${await judged()} frames`);
    }
    while ((await judged()) < COUNT) {
      assert.ok(Date.now() < deadline, `only ${await judged()} frames judged`);
      await new Promise((r) => setTimeout(r, 200));
    }
    // Each image beside its result: the sha256 of the file and its result's input.sha256.
    const listed = await sd.sh(
      `cd ${FOLDER} && for f in done/latest.png* failed/latest.png*; do [ -e "$f" ] || continue; case "$f" in *.json) ;; *) printf '%s %s ' "$f" "$(sha256sum < "$f" | cut -c1-64)"; tr -d '\\n' < "$f.json"; echo;; esac; done`,
    );
    const lines = listed.stdout.trim().split("\n");
    assert.equal(lines.length, COUNT, listed.stderr);
    const seen = new Set<string>();
    for (const line of lines) {
      const [file, sha, ...json] = line.split(" ");
      const result = JSON.parse(json.join(" ")) as { ok: boolean; code?: string; input?: { sha256: string } };
      assert.equal(result.input?.sha256, sha, `${file}: its result is another frame's`);
      assert.ok(hashes.has(sha ?? ""), `${file}: not a frame the camera made`);
      assert.ok(!seen.has(sha ?? ""), `${file}: a frame judged twice`);
      seen.add(sha ?? "");
    }
    assert.equal(seen.size, COUNT);
    assert.equal(await sd.show("outpost", "NRestarts"), "2");
    assert.equal((await sd.sh(`find ${FOLDER}/work ${FOLDER}/inbox -mindepth 1 | wc -l`)).stdout.trim(), "0");
  });
});
