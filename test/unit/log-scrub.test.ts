// Issue 28, item 1: what a log line may never carry, enforced in the logger for every line, and the ring of
// recent lines that `ctl logs` reads.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { closeSync, openSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { render } from "../../src/config/problems.ts";
import { liveSecrets, redact, secretValues } from "../../src/config/redact.ts";
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

describe("log lines without secrets: what a first review found", () => {
  it("a password with an unencoded / or a stray %, the booted one after a reload: none escapes", () => {
    const slash = { mqtt: { url: "mqtts://pi:Xk9/2bQ+7Lr0vT@broker:8883" } };
    assert.deepEqual(secretValues(slash), ["Xk9/2bQ+7Lr0vT"]);
    const scrubber = new LogScrubber(() => secretValues(slash));
    const line = JSON.stringify({ msg: "agent starting", url: slash.mqtt.url });
    assert.ok(!scrubber.scrub(line).includes("Xk9"), scrubber.scrub(line));
    // Even unknown: the URL pattern takes the password up to its @.
    assert.ok(!new LogScrubber(() => []).scrub(line).includes("Xk9"));
    assert.deepEqual(secretValues({ mqtt: { url: "mqtt://pi:50%off-Sale@h" } }), ["50%off-Sale"]);
    // After a reload the link still uses the password it started with, until a restart: both are kept out.
    let current = { mqtt: { password: "new-password" } };
    const live = liveSecrets({
      booted: { config: { mqtt: { password: "booted-password" } } },
      current: () => ({ config: current }),
    });
    assert.deepEqual(live(), ["booted-password", "new-password"]);
    assert.equal(live(), live(), "the same array while nothing changed");
    current = { mqtt: { password: "newer-password" } };
    assert.deepEqual(live(), ["booted-password", "newer-password"]);
  });

  it("a secret that is also a number, a key or a word of the JSON leaves a line that parses", () => {
    for (const secret of ["1000", "time", "nope1"]) {
      const scrubber = new LogScrubber(() => [secret]);
      const line = `${JSON.stringify({ level: "info", time: "t", retryInMs: 1000, msg: `line\nope1 ${secret}` })}\n`;
      const out = scrubber.scrub(line);
      const parsed = JSON.parse(out) as Record<string, unknown>;
      assert.ok(out.endsWith("\n"));
      assert.equal(parsed.retryInMs, 1000, secret);
      assert.ok(!String(parsed.msg).includes(secret), `${secret}: ${out}`);
    }
  });

  it("a hostile line (a long run of letters, many ://) is scrubbed in linear time", { timeout: 60_000 }, () => {
    // The first pattern retried its unbounded scheme from every letter: minutes for a line like these.
    const scrubber = new LogScrubber(() => []);
    for (const line of [`${"x".repeat(1_000_000)}://`, "a://".repeat(250_000), `${"a:".repeat(100_000)}//`]) {
      assert.equal(scrubber.scrub(line).length > 0, true);
    }
  });

  it("a heap snapshot's strings: a secret cut at 1024 characters or split in pieces, a PEM without its end", () => {
    // A second review: V8 keeps a string's first 1024 characters, and a joined string's pieces apart.
    const secret = "Zq-secret-81234";
    const scrubber = new LogScrubber(() => [secret]);
    assert.equal(scrubber.scrubPiece(`${"A".repeat(1015)}${secret.slice(0, 9)}`), `${"A".repeat(1015)}[redacted]`);
    assert.equal(scrubber.scrubPiece(`${secret.slice(-6)}XYZ`), "[redacted]XYZ");
    assert.equal(scrubber.scrubPiece(`key: ${secret} and more`), "key: [redacted] and more");
    assert.equal(scrubber.scrubPiece("-----BEGIN PRIVATE KEY-----\nMC4CAQAw"), "[redacted] private key");
    assert.equal(scrubber.scrubPiece("an ordinary string"), "an ordinary string");
    // The configuration as printed, published and hashed: a broker URL's password is not in it.
    const printed = redact({ mqtt: { url: "mqtt://u:hunter22@h:1883", failover: ["mqtts://u:other99@h2:8883"] } });
    assert.deepEqual(printed, {
      mqtt: { url: "mqtt://u:[redacted]@h:1883", failover: ["mqtts://u:[redacted]@h2:8883"] },
    });
  });

  it("a value shown cut short in a configuration problem loses a URL's password first", () => {
    const url = `ssl://${"u".repeat(40)}:${"p".repeat(43)}@broker:8883`;
    const shown = render(url, ["mqtt", "url"]);
    assert.ok(!shown.includes("pppp"), shown);
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
    // A huge line is kept as a short JSON line of its own: its length and its head.
    const big = new LogRing(64 * 1024);
    big.push(`{"msg":"${"x".repeat(100_000)}"}`);
    const kept = JSON.parse(big.read().lines[0]?.text ?? "") as { cut: boolean; chars: number; head: string };
    assert.deepEqual([kept.cut, kept.chars, kept.head.length], [true, 100_010, 4096]);
    // Many pushes: the store is compacted, the numbering goes on.
    for (let i = 0; i < 5000; i++) ring.push(`n${i}`);
    const last = ring.read().lines.at(-1);
    assert.deepEqual(last, { seq: 5030, text: "n4999" });
  });
});
