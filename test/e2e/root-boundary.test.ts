// Issue 20: code running as the agent, in the agent unit's own sandbox (a drop-in ExecStart of the installed
// outpost.service), attacks root's update units under a real systemd; none of it may gain anything. Then an
// update the old way: from the release before the root boundary (built from its commit, when the clone has
// it) to this one, which adopts that trial once and brings the units up to date. Root's two oneshots run
// under strace the whole time, and every path they touch must be on docs/ota.md's list. One systemd boot.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import type { SignedManifest } from "../../src/ota/manifest.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { ROOT } from "../helpers/agent-process.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../helpers/operator.ts";
import { RangeServer } from "../helpers/range-server.ts";
import { scriptRelease } from "../helpers/releases.ts";
import { checkTraces, documentedRootPaths } from "../helpers/strace.ts";
import { Systemd } from "../helpers/systemd.ts";

/** The binary under test; ROOT_BOUNDARY_BIN runs the same attacks against another build (an older one). */
const BIN = process.env.ROOT_BOUNDARY_BIN ?? join(ROOT, "dist", "outpost-linux-x64");
/** The last release before the root boundary: the transition is tested from it. */
const BEFORE = "b3c46f4a262562d52a8daa35911a93e8a086b002";
const DEVICE = "dev-root";
const V1 = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
const TRACES = "/run/outpost-strace";

const update = (state: string, version?: string) => (m: Received) =>
  m.topic === `${PREFIX}/${DEVICE}/update` && m.json.state === state && (!version || m.json.version === version);
const online = (version: string) => (m: Received) =>
  m.topic === `${PREFIX}/${DEVICE}/status` && m.json.state === "online" && m.json.version === version;

/** The release before the root boundary, built from its commit as 0.0.9; undefined when the clone lacks it. */
function buildBefore(out: string): string | undefined {
  try {
    execFileSync("git", ["-C", ROOT, "cat-file", "-e", `${BEFORE}^{commit}`], { stdio: "ignore" });
  } catch {
    return undefined;
  }
  const src = join(out, "src");
  mkdirSync(src, { recursive: true });
  execFileSync("sh", ["-c", `git -C '${ROOT}' archive ${BEFORE} | tar -x -C '${src}'`]);
  symlinkSync(join(ROOT, "node_modules"), join(src, "node_modules"));
  execFileSync(
    process.execPath,
    ["build/build.ts", "--target", "linux-x64", "--out", join(out, "bin"), "--set-version", "0.0.9"],
    { cwd: src, stdio: ["ignore", "ignore", "inherit"] },
  );
  return join(out, "bin", "outpost-linux-x64");
}

describe("the root boundary: the agent's code against root's update units (real systemd)", () => {
  let sd: Systemd;
  let broker: Mosquitto;
  let watch: Watch;
  let operator: Operator;
  let server: RangeServer;
  let dir: string;
  let old: string | undefined;
  const releaseKey = generateKeys();
  const key = parsePrivateKey(releaseKey.privatePem);
  const inside = (...parts: string[]) => sd.path(join(...parts));
  const releases: Record<string, SignedManifest> = {};
  const current = async () => (await sd.sh("readlink /opt/outpost/current")).stdout.trim();
  const poll = async (what: string, check: () => Promise<boolean>, ms = 60_000) => {
    const deadline = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const rootFile = async (path: string) => (await sd.sh(`cat ${path} 2>/dev/null`)).stdout;

  /** Runs `body` (sh) as outpost.service itself, and waits until it says it is done. */
  async function asAgent(name: string, body: string): Promise<void> {
    const script = join(dir, `${name}.sh`);
    writeFileSync(
      script,
      `set -u\ncd /var/lib/outpost/update\nsystemd-notify --ready --pid=$$\n${body}\ntouch /var/lib/outpost/${name}.done\nexec sleep 600\n`,
    );
    // Each attack starts with root's units fresh: a burst of requests may have hit a oneshot's start limit.
    await sd.sh(
      "systemctl reset-failed outpost-update.service outpost-update.path outpost-rollback.service outpost-rollback.path; systemctl start outpost-update.path outpost-rollback.path",
    );
    const started = await sd.sh(
      `mkdir -p /etc/systemd/system/outpost.service.d && printf '[Service]\\nWatchdogSec=0\\nExecStart=\\nExecStart=/bin/sh ${inside(script)}\\n' > /etc/systemd/system/outpost.service.d/attack.conf && systemctl daemon-reload && systemctl restart outpost`,
      60_000,
    );
    assert.equal(started.code, 0, started.stderr + (await sd.journal("outpost")));
    try {
      await poll(`${name} done`, async () => (await sd.sh(`test -e /var/lib/outpost/${name}.done`)).code === 0, 90_000);
    } catch (err) {
      const units = "-u outpost -u outpost-update -u outpost-rollback -u outpost-update.path";
      const log = await sd.sh(`journalctl ${units} --no-pager -o cat | tail -40; ls -la /var/lib/outpost/update`);
      throw new Error(`${(err as Error).message}\n${log.stdout}`);
    }
    // Whatever root's units were started on has run to its end.
    await poll("root's units idle", async () => {
      const states = await sd.sh(
        "systemctl show -P ActiveState outpost-update.service outpost-rollback.service | sort -u",
      );
      return !/activating|deactivating/.test(states.stdout);
    });
  }

  /** A root-owned file only root can read: it must keep its bytes, owner and mode whatever the agent does. */
  async function victim(path: string): Promise<() => Promise<void>> {
    await sd.sh(`printf 'secret of ${path}\\n' > ${path} && chown root:root ${path} && chmod 0600 ${path}`);
    return async () => {
      const st = (await sd.sh(`stat -c '%u:%g %a' ${path} && cat ${path}`)).stdout;
      assert.equal(st, `0:0 600\nsecret of ${path}\n`, `${path} was changed`);
    };
  }

  before(async () => {
    assert.ok(existsSync(BIN), `${BIN} is missing: run npm run build first`);
    mkdirSync(join(ROOT, ".cache"), { recursive: true });
    dir = mkdtempSync(join(ROOT, ".cache", "root-boundary-"));
    // The attacker runs as the service user: it reads its scripts and the releases from here.
    chmodSync(dir, 0o755);
    old = process.env.ROOT_BOUNDARY_BIN ? undefined : buildBefore(join(dir, "before"));
    releases.current = makeRelease({
      file: BIN,
      privateKey: key,
      out: join(dir, "current"),
      kind: "agent",
      now: 1,
    }).signed;
    releases.exits = scriptRelease(join(dir, "exits"), "0.1.5", "exit 3", key);
    releases.older = scriptRelease(join(dir, "older"), "0.0.1", "exec sleep 600", key);
    releases.newer = scriptRelease(join(dir, "newer"), "0.9.0", "exec sleep 600", key);
    for (const name of ["older", "newer"])
      writeFileSync(join(dir, name, "manifest.json"), JSON.stringify(releases[name]));
    server = await RangeServer.start(dir);
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/${DEVICE}/#`]);
    const opKey = operatorKey();
    operator = await Operator.open(broker.port, opKey);
    const config = {
      device: { id: DEVICE },
      mqtt: { url: `mqtt://127.0.0.1:${broker.port}`, reconnectMax: "1s" },
      telemetry: { interval: "1s" },
      commands: { trustedKeys: [{ name: "ops", key: opKey.publicText, allow: ["*"] }] },
      update: { trustedKeys: [releaseKey.publicText], trialTimeout: "20s" },
      service: { readyTimeout: "2s" },
    };
    writeFileSync(join(dir, "config.json"), JSON.stringify(config));
    sd = await Systemd.boot(ROOT);
    const install = await sd.exec([inside(old ?? BIN), "install", "--config", inside(dir, "config.json")], 120_000);
    assert.equal(install.code, 0, install.stderr);
    // Root's two oneshots, traced: every path they touch (docs/ota.md, "The root boundary"). -ff writes a file
    // per process, -y names each descriptor's path. Each run's files go in a folder named for the release that
    // was current and the rollback script's revision when it started: the runs of the release before the
    // boundary (its update-apply, its rollback script) are not this code's. The lock is the units' own.
    for (const [name, command] of [
      ["update", "/usr/local/bin/outpost update-apply --config /etc/outpost/config.yaml"],
      ["rollback", "/opt/outpost/rollback"],
    ]) {
      writeFileSync(
        join(dir, `strace-${name}.sh`),
        `#!/bin/sh\nd=${TRACES}/$(readlink /opt/outpost/current | sed 's|^releases/||')+$(sed -n 's/^# outpost units revision //p' /opt/outpost/rollback)\nmkdir -p "$d"\nlock=""\n[ -d /opt/outpost/update ] && lock="/usr/bin/flock -w 240 /opt/outpost/update/.lock"\nexec $lock /usr/bin/strace -ff -y -qq -e trace=%file -o "$d/${name}" ${command}\n`,
        { mode: 0o755 },
      );
      writeFileSync(
        join(dir, `strace-${name}.conf`),
        `[Service]\nExecStart=\nExecStart=/bin/sh ${inside(dir, `strace-${name}.sh`)}\n`,
      );
    }
    const traced = await sd.sh(
      [
        `mkdir -p ${TRACES} /etc/systemd/system/outpost-update.service.d /etc/systemd/system/outpost-rollback.service.d /etc/systemd/system/outpost.service.d`,
        `cp ${inside(dir, "strace-update.conf")} /etc/systemd/system/outpost-update.service.d/strace.conf`,
        `cp ${inside(dir, "strace-rollback.conf")} /etc/systemd/system/outpost-rollback.service.d/strace.conf`,
        "printf '[Service]\\nTimeoutStartSec=10\\n' > /etc/systemd/system/outpost.service.d/test.conf",
        "systemctl daemon-reload",
      ].join(" && "),
    );
    assert.equal(traced.code, 0, traced.stderr);
    await watch.waitFor(online(old ? "0.0.9" : V1), 60_000, "the installed release online");
  });

  after(async () => {
    await sd?.shutdown();
    await operator?.close();
    await watch?.close();
    await broker?.stop();
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("from the release before the boundary: its installer's trial is adopted once, units and rollback script refreshed", async (t) => {
    if (!old) {
      t.skip(`the clone has no ${BEFORE.slice(0, 7)} (or another binary is under test): no transition to test`);
      return;
    }
    const before = await current();
    const call = await operator.call(
      DEVICE,
      "update",
      { manifest: releases.current, source: { http: server.url("current/") } },
      { timeoutMs: 120_000 },
    );
    assert.equal(call.finals[0]?.state, "succeeded", JSON.stringify(call.finals[0]));
    await watch.waitFor(update("committed", V1), 90_000, "committed");
    await poll("root's record of the adopted trial", async () =>
      /^{"state":"committed".*"request":"legacy"/.test(await rootFile("/opt/outpost/update/trial.json")),
    );
    assert.equal((await sd.sh("readlink /opt/outpost/previous")).stdout.trim(), before);
    assert.match(await rootFile("/opt/outpost/rollback"), /^# outpost units revision 2$/m);
    assert.match(await rootFile("/etc/systemd/system/outpost-update.path"), /^# outpost units revision 2$/m);
    // Issue 28: the drop-in that keeps systemd's word on each ending reaches a device installed before it.
    assert.match(
      await rootFile("/etc/systemd/system/outpost.service.d/exit-record.conf"),
      /^ExecStopPost=-\/usr\/local\/bin\/outpost exit-record --config \/etc\/outpost\/config.yaml$/m,
    );
    const describe = await operator.call(DEVICE, "describe", {}, { timeoutMs: 10_000 });
    const result = describe.finals[0]?.result as { modules?: Record<string, { unitsRevision?: number }> } | undefined;
    const ota = result?.modules?.ota;
    assert.equal(ota?.unitsRevision, 2);
  });

  it("every file under /opt/outpost is root's; release binaries are 0755", async () => {
    const notRoot = await sd.sh("find /opt/outpost ! -user root -printf '%p %u\\n'");
    assert.equal(notRoot.stdout, "");
    const binaries = await sd.sh("stat -c '%a %U' /opt/outpost/releases/*/outpost | sort -u");
    assert.equal(binaries.stdout.trim(), "755 root");
  });

  it("a symlink planted for the rollback script's writes, and the update directory swapped for root's, change nothing", async () => {
    if (!(await sd.sh("test -L /opt/outpost/previous")).code) {
      // there is a previous release: the old script would act
    } else await sd.sh('ln -s "$(readlink /opt/outpost/current)" /opt/outpost/previous');
    const was = await current();
    const check = await victim("/etc/outpost-victim-1");
    await asAgent(
      "attack-1",
      `rel=$(readlink /opt/outpost/current); rel=\${rel#releases/}
printf '{"state":"trial","release":"%s","from":{"name":"x","version":"0.0.1"},"to":{"name":"%s","version":"9.0.0"},"since":1}\\n' "$rel" "$rel" > journal.json
ln -sfn /etc/outpost-victim-1 rollback-reason.tmp
: > rollback.request
i=0; while [ -e rollback.request ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
sleep 2`,
    );
    await check();
    assert.equal(await current(), was);
    // A variant: the whole update directory replaced by a link to a directory of root's holding a request.
    await sd.sh("mkdir -p /etc/outpost-victim-dir && touch /etc/outpost-victim-dir/rollback.request");
    await asAgent(
      "attack-1b",
      "cd /var/lib/outpost && mv update update.real && ln -s /etc/outpost-victim-dir update && sleep 5 && rm update && mv update.real update",
    );
    assert.equal((await sd.sh("test -e /etc/outpost-victim-dir/rollback.request")).code, 0, "root's file was removed");
    assert.equal(await current(), was);
    await sd.sh(
      "systemctl reset-failed outpost-rollback.path outpost-rollback.service; systemctl restart outpost-rollback.path",
    );
  });

  it("a forged journal saying an older signed release is on trial does not skip root's checks", async () => {
    const was = await current();
    await asAgent(
      "attack-2",
      `m=${inside(dir, "older")}
sha=$(sha256sum $m/artifact | cut -d' ' -f1)
cp $m/artifact $sha.ready
id=""; grep -q 'units revision' /opt/outpost/rollback && id='"id":"attack-2",'
printf '{"state":"trial","release":"0.0.1-%s","from":{"name":"x","version":"0.0.1"},"to":{"name":"x","version":"0.0.1"},"since":1}\\n' "$(echo $sha | cut -c1-12)" > journal.json
printf '{%s"manifest":%s,"ready":"%s.ready"}' "$id" "$(cat $m/manifest.json)" "$sha" > install.tmp && mv install.tmp install.json
i=0; while [ -e install.json ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done`,
    );
    assert.equal(await current(), was, "the older release was installed");
    assert.match(await rootFile("/opt/outpost/update/request.json"), /"code":"OTA_DOWNGRADE"/);
  });

  it("a symlink swapped in for a file root writes in the agent's directory hands nothing to the agent", async () => {
    const check = await victim("/etc/outpost-victim-3");
    await asAgent(
      "attack-3",
      `# The racer waits for root to create the file, then renames a link over it before root's chown (python3
# when the device has it: a shell loop is too slow to win).
if command -v python3 >/dev/null; then
  python3 -c 'import os, stat
while True:
    try:
        if not os.path.lexists("j.tmp"):
            os.symlink("/etc/outpost-victim-3", "j.tmp")
        if stat.S_ISREG(os.lstat("journal.json.tmp").st_mode):
            os.rename("j.tmp", "journal.json.tmp")
    except OSError:
        pass' &
else
  ( while :; do [ -f journal.json.tmp ] && [ ! -L journal.json.tmp ] && ln -sfn /etc/outpost-victim-3 j.tmp && mv -fT j.tmp journal.json.tmp; done ) &
fi
racer=$!
# Spaced so that the oneshot's own start limit (5 in 10 s) is never what stops root.
for n in $(seq 1 8); do
  sleep 2.5
  printf '{"id":"attack-3-%s","manifest":1,"ready":"x"}' $n > install.tmp && mv install.tmp install.json
  i=0; while [ -e install.json ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
done
kill $racer`,
    );
    await check();
  });

  it("a FIFO staged in place of the release, swapped for a link once root reads it, leaves no copy anywhere", async () => {
    const check = await victim("/etc/outpost-victim-4");
    await asAgent(
      "attack-4",
      `m=${inside(dir, "newer")}
sha=$(sha256sum $m/artifact | cut -d' ' -f1)
rm -f $sha.ready && mkfifo $sha.ready
id=""; grep -q 'units revision' /opt/outpost/rollback && id='"id":"attack-4",'
printf '{%s"manifest":%s,"ready":"%s.ready"}' "$id" "$(cat $m/manifest.json)" "$sha" > install.tmp && mv install.tmp install.json
timeout 15 sh -c "exec 3>$sha.ready; ln -sfn /etc/outpost-victim-4 swap; mv -fT swap $sha.ready; cat $m/artifact >&3" || true
i=0; while [ -e install.json ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done`,
    );
    await check();
    const copies = await sd.sh(
      "find /opt/outpost -type f -name '*.new'; grep -rl 'secret of /etc/outpost-victim-4' /opt/outpost || true",
    );
    assert.equal(copies.stdout.trim(), "", "a copy of root's file is under /opt/outpost");
    assert.match(await rootFile("/opt/outpost/update/request.json"), /"code":"OTA_STAGED_INVALID"/);
  });

  it("after refused requests a good one is installed; a release that exits is rolled back, and the agent learns why from root's record", async () => {
    // The agent's online may come before the restart returns: count what arrives from before it.
    const mark = watch.items.length;
    await sd.sh(
      "rm -f /etc/systemd/system/outpost.service.d/attack.conf /var/lib/outpost/*.done && systemctl daemon-reload && systemctl restart outpost",
      60_000,
    );
    await watch.waitFor((m) => watch.items.indexOf(m) >= mark && online(V1)(m), 60_000, "the agent back");
    const was = await current();
    const call = await operator.call(
      DEVICE,
      "update",
      { manifest: releases.exits, source: { http: server.url("exits/") } },
      { timeoutMs: 60_000 },
    );
    assert.equal(call.finals[0]?.state, "succeeded", JSON.stringify(call.finals[0]));
    const back = await watch.waitFor(update("rolled-back", "0.1.5"), 90_000, "rolled-back");
    assert.match(String(back.json.reason), /result exit-code, status 3/);
    await watch.waitFor(online(V1), 60_000, "back online");
    assert.equal(await current(), was);
    assert.match(await rootFile("/opt/outpost/update/trial.json"), /^{"state":"rolled-back","release":"0\.1\.5-/);
    assert.equal(
      (await sd.sh("ls /var/lib/outpost/update | grep -c 'install.json\\|rollback.request'")).stdout.trim(),
      "0",
    );
    // The release root installed is root's, like every file there (Node's copyFileSync kept the agent's owner).
    const notRoot = await sd.sh("find /opt/outpost ! -user root -printf '%p %u\\n'");
    assert.equal(notRoot.stdout, "");
    // Consumed: neither path unit is stuck on a request or its trigger limit.
    assert.equal(await sd.show("outpost-update.path", "ActiveState"), "active");
    assert.equal(await sd.show("outpost-rollback.path", "ActiveState"), "active");
  });

  it("root's oneshots touched only the paths docs/ota.md lists, and the agent's directory only pinned", async () => {
    // Only this code's runs: a folder per release that was current when the run began.
    const listed = await sd.sh(`cd ${TRACES} && ls -d */*`);
    const files = listed.stdout
      .trim()
      .split("\n")
      .filter((f) => (/\/update\./.test(f) ? !f.startsWith("0.0.9-") : /^[^/]*\+2\//.test(f)));
    assert.ok(files.some((f) => /\/update\./.test(f)) && files.some((f) => /\/rollback\./.test(f)), files.join());
    const traces = await Promise.all(files.map(async (f) => (await sd.sh(`cat ${TRACES}/${f}`)).stdout));
    const problems = checkTraces(traces, documentedRootPaths(readFileSync(join(ROOT, "docs", "ota.md"), "utf8")));
    assert.deepEqual(problems, []);
  });
});
