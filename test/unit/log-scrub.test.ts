// Issue 28, item 1: what a log line may never carry, enforced in the logger for every line, and the ring of
// recent lines that `ctl logs` reads.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { closeSync, openSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { secretValues } from "../../src/config/redact.ts";
import { LogRing } from "../../src/core/log-ring.ts";
import { LogScrubber, REDACTED } from "../../src/core/log-scrub.ts";
import { createLogger } from "../../src/core/logger.ts";
import { tempDir } from "../helpers/temp.ts";

const PASSWORD = 'pa"ss\\wörd-42';
const URL_PASSWORD = "hunter2:x/y@z";
const config = {
  mqtt: {
    url: `mqtt://dev:${encodeURIComponent(URL_PASSWORD)}@broker.example:1883`,
    failover: ["mqtts://dev:other-pass-77@node2.example:8883"],
    password: PASSWORD,
  },
};
const PEM = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString();

/** Every form a secret could take in a line: as it is, as a URL encodes it, JSON-escaped once or twice. */
const json = (s: string) => JSON.stringify(s).slice(1, -1);
const forms = (s: string) => [s, encodeURIComponent(s)].flatMap((f) => [f, json(f), json(json(f))]);
const SECRETS = [PASSWORD, URL_PASSWORD, "other-pass-77", PEM.split("\n")[1] ?? ""];

function assertClean(text: string, what: string): void {
  for (const secret of SECRETS) {
    for (const form of forms(secret)) assert.ok(!text.includes(form), `${what} carries ${JSON.stringify(form)}`);
  }
}

describe("log lines without secrets", () => {
  it("every secret, through every way a line is made, in both formats: none in the output, nor in the ring", async () => {
    const dir = tempDir("outpost-logscrub-");
    for (const format of ["json", "pretty"] as const) {
      const file = join(dir, `${format}.log`);
      const fd = openSync(file, "w");
      const { logger, flush, ring } = await createLogger({
        level: "trace",
        format,
        fd,
        secrets: () => secretValues(config),
      });
      const child = logger.child({ component: "mqtt", url: config.mqtt.url, password: PASSWORD });
      logger.info(`connecting to ${config.mqtt.url} with ${PASSWORD}`);
      logger.warn({ url: config.mqtt.failover[0], nested: { deep: [PASSWORD, { x: URL_PASSWORD }] } }, "failover");
      const err = new Error(`login refused for ${config.mqtt.url} (${PASSWORD})`, { cause: new Error(PASSWORD) });
      logger.error({ err }, "connect failed");
      logger.error(err);
      child.debug({ key: PEM }, "a key read");
      child.trace("%s and %o", PASSWORD, { p: PASSWORD });
      logger.fatal({ params: { password: PASSWORD, note: `mqtt://x:${URL_PASSWORD}@h` } }, "config.set");
      flush();
      closeSync(fd);
      const text = readFileSync(file, "utf8");
      assert.ok(text.includes(REDACTED), `${format}: ${text}`);
      assert.ok(text.includes("broker.example:1883"), `${format}: the URL stays, its password goes`);
      assertClean(text, format);
      const lines = ring.read().lines.map((l) => l.text);
      assert.equal(lines.length, 7, lines.join("\n"));
      assertClean(lines.join("\n"), `${format} ring`);
      for (const line of lines) JSON.parse(line);
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it("a secret that changes (a reload, config.set) is scrubbed from the next line on; short ones are not searched", () => {
    let current: readonly string[] = ["first-secret"];
    const scrubber = new LogScrubber(() => current);
    assert.equal(scrubber.scrub('{"msg":"first-secret"}'), `{"msg":"${REDACTED}"}`);
    current = ["second-secret"];
    assert.equal(scrubber.scrub('{"msg":"first-secret second-secret"}'), `{"msg":"first-secret ${REDACTED}"}`);
    // Longest first: a secret that contains another goes whole.
    current = ["abcd", "abcdefgh"];
    assert.equal(scrubber.scrub("abcdefgh"), REDACTED);
    current = ["abc"];
    assert.equal(scrubber.scrub("abc"), "abc");
    // Any URL's password, known or not; a URL without one is left alone.
    assert.equal(scrubber.scrub("https://u:p@h/x mqtt://h:1883"), `https://u:${REDACTED}@h/x mqtt://h:1883`);
  });
});

describe("the log ring", () => {
  it("keeps the newest lines within its bound, counts what it dropped, and reads from a sequence number", () => {
    const ring = new LogRing(100);
    for (let i = 1; i <= 30; i++) ring.push(`line-${String(i).padStart(3, "0")}\n`);
    const all = ring.read();
    // Each line is 8 characters: 12 fit in 100.
    assert.equal(all.lines.length, 12);
    assert.equal(all.first, 19);
    assert.equal(all.dropped, 18);
    assert.deepEqual(all.lines.map((l) => [l.seq, l.text]).slice(0, 2), [
      [19, "line-019"],
      [20, "line-020"],
    ]);
    assert.deepEqual(
      ring.read(28).lines.map((l) => l.seq),
      [29, 30],
    );
    assert.ok(ring.stats().bytes <= 100);
    // A line longer than the ring keeps its beginning, alone.
    ring.push("x".repeat(500));
    assert.deepEqual(
      ring.read().lines.map((l) => l.text.length),
      [100],
    );
    // Many pushes: the store is compacted, the numbering goes on.
    for (let i = 0; i < 5000; i++) ring.push(`n${i}`);
    const last = ring.read().lines.at(-1);
    assert.deepEqual(last, { seq: 5031, text: "n4999" });
  });
});
