// Issue 12 item 1: `install --root DIR` file by file, twice; the upgrade of a device set up by hand; refusals.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ROOT } from "../helpers/agent-process.ts";
import { run as runProgram } from "../helpers/run.ts";

const BIN = join(ROOT, "dist", "outpost-linux-x64");
const ARM = join(ROOT, "dist", "outpost-linux-arm64");

const run = (argv: string[]) => runProgram(argv, { timeoutMs: 120_000 });

/** Every path under `dir` with its type, mode, link target or content hash, and mtime. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    const path = join(dir, rel);
    const st = lstatSync(path);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) out.set(rel, `link -> ${readlinkSync(path)}`);
    else if (st.isDirectory()) {
      out.set(rel, `dir ${mode}`);
      for (const name of readdirSync(path).sort()) walk(join(rel, name));
    } else {
      const sha = createHash("sha256").update(readFileSync(path)).digest("hex").slice(0, 12);
      out.set(rel, `file ${mode} ${sha} ${st.mtimeMs}`);
    }
  };
  walk(".");
  return out;
}

describe("outpost install --root and uninstall (built x64 binary)", () => {
  let dir: string;
  before(() => {
    assert.ok(existsSync(BIN), `${BIN} is missing: run npm run build first`);
    dir = mkdtempSync(join(tmpdir(), "outpost-install-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("lays out exactly the documented files, and a second run changes nothing", async () => {
    const root = join(dir, "fresh");
    const first = await run([BIN, "install", "--root", root]);
    assert.equal(first.code, 0, first.stderr);
    const tree = snapshot(root);
    const release = [...tree.keys()].find((p) => /^opt\/outpost\/releases\/0\.\d+\.\d+-[0-9a-f]{12}$/.test(p));
    assert.ok(release, [...tree.keys()].join("\n"));
    const sha = createHash("sha256").update(readFileSync(BIN)).digest("hex").slice(0, 12);
    assert.ok(release.endsWith(sha), "the release directory is named by the binary's hash");
    const rel = release.replace("opt/outpost/", "");
    const shape = [...tree].map(([p, v]) => {
      const kept = v.startsWith("link") ? v : v.split(" ").slice(0, 2).join(" ");
      return `${p} ${kept}`.replaceAll(rel, "releases/R");
    });
    assert.deepEqual(shape, [
      ". dir 755",
      "etc dir 755",
      "etc/outpost dir 750",
      "etc/outpost/config.yaml file 640",
      "etc/systemd dir 755",
      "etc/systemd/system dir 755",
      "etc/systemd/system/multi-user.target.wants dir 755",
      "etc/systemd/system/multi-user.target.wants/outpost-rollback.path link -> /etc/systemd/system/outpost-rollback.path",
      "etc/systemd/system/multi-user.target.wants/outpost-update.path link -> /etc/systemd/system/outpost-update.path",
      "etc/systemd/system/multi-user.target.wants/outpost.service link -> /etc/systemd/system/outpost.service",
      "etc/systemd/system/outpost-rollback.path file 644",
      "etc/systemd/system/outpost-rollback.service file 644",
      "etc/systemd/system/outpost-update.path file 644",
      "etc/systemd/system/outpost-update.service file 644",
      "etc/systemd/system/outpost.service file 644",
      "etc/systemd/system/outpost.service.d dir 755",
      "etc/systemd/system/outpost.service.d/exit-record.conf file 644",
      "opt dir 755",
      "opt/outpost dir 755",
      "opt/outpost/README.txt file 644",
      "opt/outpost/current link -> releases/R",
      "opt/outpost/releases dir 755",
      "opt/outpost/releases/R dir 755",
      "opt/outpost/releases/R/outpost file 755",
      "opt/outpost/rollback file 755",
      "opt/outpost/update dir 755",
      "usr dir 755",
      "usr/lib dir 755",
      "usr/lib/sysusers.d dir 755",
      "usr/lib/sysusers.d/outpost.conf file 644",
      "usr/lib/tmpfiles.d dir 755",
      "usr/lib/tmpfiles.d/outpost.conf file 644",
      "usr/local dir 755",
      "usr/local/bin dir 755",
      "usr/local/bin/outpost link -> /opt/outpost/current/outpost",
      "var dir 755",
      "var/lib dir 755",
      "var/lib/outpost dir 750",
    ]);
    assert.equal(readFileSync(join(root, release, "outpost")).equals(readFileSync(BIN)), true);
    assert.match(
      readFileSync(join(root, "usr/lib/sysusers.d/outpost.conf"), "utf8"),
      /^u outpost - "Outpost edge agent" \/var\/lib\/outpost \/usr\/sbin\/nologin$/m,
    );
    const tmpfiles = readFileSync(join(root, "usr/lib/tmpfiles.d/outpost.conf"), "utf8");
    assert.match(tmpfiles, /^d \/var\/lib\/outpost 0750 outpost outpost -$/m);
    assert.match(tmpfiles, /^Z \/var\/lib\/outpost - outpost outpost -$/m);
    // The example config is valid as it stands (all comments).
    const valid = await run([BIN, "config", "validate", join(root, "etc/outpost/config.yaml")]);
    assert.equal(valid.code, 0, valid.stderr);

    const second = await run([BIN, "install", "--root", root]);
    assert.equal(second.code, 0, second.stderr);
    assert.equal(second.stdout, "nothing to change\n");
    assert.deepEqual(snapshot(root), tree, "the second install touched something");
  });

  it("writes a unit that systemd-analyze verifies and rates at an exposure of 2.0 or below", async () => {
    const root = join(dir, "analyzed");
    assert.equal((await run([BIN, "install", "--root", root])).code, 0);
    const unit = join(root, "etc/systemd/system/outpost.service");
    const security = await run(["systemd-analyze", "security", "--offline=true", `--root=${root}`, "outpost.service"]);
    assert.equal(security.code, 0, security.stderr);
    const exposure = Number(/Overall exposure level for outpost\.service: ([\d.]+)/.exec(security.stdout)?.[1]);
    assert.ok(exposure <= 2.0, `exposure ${exposure}:\n${security.stdout}`);
    // verify checks that ExecStart exists: point it at a program this machine has, the rest unchanged.
    writeFileSync(unit, readFileSync(unit, "utf8").replace(/^ExecStart=\S+/m, "ExecStart=/bin/true"));
    const verify = await run(["systemd-analyze", "verify", unit]);
    assert.equal(verify.code, 0, verify.stderr);
    assert.equal(verify.stderr.trim(), "");
  });

  it("upgrades a tree set up by hand from the README's old unit", async () => {
    const root = join(dir, "by-hand");
    mkdirSync(join(root, "usr/local/bin"), { recursive: true });
    mkdirSync(join(root, "etc/systemd/system"), { recursive: true });
    mkdirSync(join(root, "etc/outpost"), { recursive: true });
    mkdirSync(join(root, "var/lib/outpost"), { recursive: true, mode: 0o755 });
    copyFileSync(BIN, join(root, "usr/local/bin/outpost"));
    writeFileSync(
      join(root, "etc/systemd/system/outpost.service"),
      "[Service]\nExecStart=/usr/local/bin/outpost run\n",
    );
    writeFileSync(
      join(root, "etc/outpost/config.yaml"),
      "telemetry: { interval: 5s }\nmqtt: { passwordFile: /etc/outpost/pw }\n",
      { mode: 0o644 },
    );
    writeFileSync(join(root, "etc/outpost/pw"), "secret\n", { mode: 0o600 });
    writeFileSync(join(root, "var/lib/outpost/outbox.db"), "rows");
    const up = await run([BIN, "install", "--root", root]);
    assert.equal(up.code, 0, up.stderr);
    assert.match(up.stdout, /^replaced +\/usr\/local\/bin\/outpost +\(a plain file was here\)$/m);
    assert.match(up.stdout, /^updated +\/etc\/systemd\/system\/outpost\.service$/m);
    assert.match(up.stdout, /^note +\/etc\/outpost\/pw: group set to outpost, mode 640/m);
    assert.equal(readlinkSync(join(root, "usr/local/bin/outpost")), "/opt/outpost/current/outpost");
    // The operator's config and the state are kept; tmpfiles hands them to the service user at boot.
    assert.match(readFileSync(join(root, "etc/outpost/config.yaml"), "utf8"), /interval: 5s/);
    assert.equal(readFileSync(join(root, "var/lib/outpost/outbox.db"), "utf8"), "rows");
    const tmpfiles = readFileSync(join(root, "usr/lib/tmpfiles.d/outpost.conf"), "utf8");
    assert.match(tmpfiles, /^z \/etc\/outpost\/pw 0640 - outpost -$/m);
    assert.match(readFileSync(join(root, "etc/systemd/system/outpost.service"), "utf8"), /^User=outpost$/m);
  });

  it("uninstall removes what install wrote (twice: the second finds nothing), --purge also config and state", async () => {
    const root = join(dir, "removed");
    assert.equal((await run([BIN, "install", "--root", root])).code, 0);
    const first = await run([BIN, "uninstall", "--root", root]);
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual(
      [...snapshot(root).keys()].filter(
        (p) =>
          !/^(\.|etc|etc\/systemd|etc\/systemd\/system|etc\/systemd\/system\/multi-user\.target\.wants|usr|usr\/lib|usr\/lib\/\w+\.d|usr\/local|usr\/local\/bin|opt|var|var\/lib)$/.test(
            p,
          ),
      ),
      ["etc/outpost", "etc/outpost/config.yaml", "var/lib/outpost"],
    );
    const second = await run([BIN, "uninstall", "--root", root]);
    assert.equal(second.stdout, "nothing to change\n");
    const purge = await run([BIN, "uninstall", "--root", root, "--purge"]);
    assert.match(purge.stdout, /^removed +\/etc\/outpost$/m);
    assert.match(purge.stdout, /^removed +\/var\/lib\/outpost$/m);
  });

  it("checks --config before writing: an invalid one exits 78 naming the key; under --root, files the config names need not exist here", async () => {
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "telemetry: { interval: soon }\n");
    const root = join(dir, "configs");
    const refused = await run([BIN, "install", "--root", root, "--config", bad]);
    assert.equal(refused.code, 78);
    assert.match(refused.stderr, /nothing installed\n {2}telemetry\.interval: expected a duration/);
    assert.equal(existsSync(root), false);
    const image = join(dir, "image.yaml");
    writeFileSync(image, "mqtt: { url: mqtts://broker:8883, passwordFile: /etc/outpost/in-the-image-only }\n");
    const accepted = await run([BIN, "install", "--root", root, "--config", image]);
    assert.equal(accepted.code, 0, accepted.stderr);
    assert.match(accepted.stdout, /^note +\/etc\/outpost\/in-the-image-only: named by the config but missing$/m);
  });

  it("refuses without root, without systemd, and for another architecture, and writes nothing", async () => {
    const notRoot = await run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BIN, "install"]);
    assert.equal(notRoot.code, 1);
    assert.match(notRoot.stderr, /install must run as root: sudo outpost install/);
    // A private /run without /run/systemd/system: a host that systemd did not boot.
    const noSystemd = await run(["unshare", "--mount", "sh", "-c", `mount -t tmpfs tmpfs /run && exec ${BIN} install`]);
    assert.equal(noSystemd.code, 1);
    assert.match(noSystemd.stderr, /systemd is not running here/);
    // The arm64 binary (under qemu) into a tree whose programs are x86-64.
    const root = join(dir, "x86-tree");
    mkdirSync(join(root, "bin"), { recursive: true });
    copyFileSync("/bin/sh", join(root, "bin/sh"));
    const wrong = await run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", ARM, "install", "--root", root]);
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /this binary is for aarch64 but .* runs x86_64: copy outpost-linux-x64 instead/);
    assert.deepEqual(readdirSync(root), ["bin"]);
  });
});
