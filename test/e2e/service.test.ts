// Issue 12: the built binary installed as a systemd service, under a real systemd (PID 1 of a private
// namespace, test/helpers/systemd.ts), one boot for the whole file.

import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fingerprintOf } from "../../src/commands/keys.ts";
import { ROOT } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../helpers/operator.ts";
import { makePki } from "../helpers/pki.ts";
import { freePort } from "../helpers/ports.ts";
import { run } from "../helpers/run.ts";
import { Systemd, TEST_HOSTS } from "../helpers/systemd.ts";

const BIN = join(ROOT, "dist", "outpost-linux-x64");
const DEVICE = "dev-systemd";
const WATCHDOG_SEC = 4;

const status = (state: string, session?: string) => (m: Received) =>
  m.topic === `${PREFIX}/${DEVICE}/status` &&
  m.json.state === state &&
  (session === undefined || m.json.session === session);

describe("the agent as a systemd service (real systemd, built x64 binary)", () => {
  let sd: Systemd;
  let broker: Mosquitto;
  let watch: Watch;
  let operator: Operator;
  // Visible from inside the namespace, which has its own /tmp.
  let dir: string;
  let config: Record<string, unknown>;
  let session: string;
  /** A host path as the namespace sees it. */
  const inside = (...parts: string[]) => sd.path(join(...parts));

  before(async () => {
    assert.ok(existsSync(BIN), `${BIN} is missing: run npm run build first`);
    mkdirSync(join(ROOT, ".cache"), { recursive: true });
    dir = mkdtempSync(join(ROOT, ".cache", "service-test-"));
    makePki(dir, { names: TEST_HOSTS });
    const tlsPort = await freePort();
    broker = await Mosquitto.start({
      listener: (port) => [
        `listener ${port} 127.0.0.1`,
        "allow_anonymous true",
        `listener ${tlsPort} 127.0.0.1`,
        `certfile ${join(dir, "server.pem")}`,
        `keyfile ${join(dir, "server.key")}`,
      ],
    });
    watch = await Watch.open(broker.port, [`${PREFIX}/${DEVICE}/#`]);
    const key = operatorKey();
    writeFileSync(join(dir, "ops.key"), key.privatePem, { mode: 0o600 });
    operator = await Operator.open(broker.port, key);
    // The broker by host name over TLS, its CA in /etc/outpost readable by root only until install says so.
    config = {
      device: { id: DEVICE },
      mqtt: { url: `mqtts://${TEST_HOSTS[0]}:${tlsPort}`, ca: "/etc/outpost/ca.pem", reconnectMax: "1s" },
      telemetry: { interval: "1s", fullInterval: "50ms" },
      commands: { trustedKeys: [{ name: "ops", key: key.publicText, allow: ["*", "debug.heap-snapshot"] }] },
      service: { debugCommands: true },
    };
    writeFileSync(join(dir, "config.json"), JSON.stringify(config));
    sd = await Systemd.boot(ROOT);
    const ca = await sd.sh(`install -D -m 0600 -o root -g root ${inside(dir, "ca.pem")} /etc/outpost/ca.pem`);
    assert.equal(ca.code, 0, ca.stderr);
  });

  /** `ctl logs --previous` through the operator's CLI: the run before's messages, and the ending it printed. */
  /** `outpost ctl VERB DEVICE ARGS` through the operator's CLI, against the plain listener. */
  const ctl = (verb: string, ...args: string[]) =>
    runCli([
      "ctl",
      verb,
      DEVICE,
      ...args,
      "--accept-new",
      "--broker",
      broker.url,
      "--key",
      join(dir, "ops.key"),
      // Not deploy.sh's pins (a test below reads them): a device reinstalled there has a new key.
      "--known-devices",
      join(dir, "logs-known_devices"),
    ]);
  const logsPrevious = async () => {
    const r = await ctl("logs", "--previous", "--json");
    assert.equal(r.code, 0, r.err);
    const msgs = r.out
      .trim()
      .split("\n")
      .map((l) => (JSON.parse(l) as { msg: string }).msg);
    return { msgs, ending: r.err };
  };

  after(async () => {
    await sd?.shutdown();
    await operator?.close();
    await watch?.close();
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("upgrades a device set up by hand (README's old unit, running as root) to the installed service", async () => {
    // The old way: a plain binary in /usr/local/bin, the unit from the README, state made by root.
    const oldUnit = [
      "[Unit]",
      "Description=Outpost edge agent",
      "[Service]",
      "ExecStart=/usr/local/bin/outpost run --config /etc/outpost/config.yaml",
      "ExecReload=/bin/kill -HUP $MAINPID",
      "Environment=NODE_OPTIONS=",
      "Restart=on-failure",
      "RestartPreventExitStatus=78",
      "[Install]",
      "WantedBy=multi-user.target",
    ].join("\\n");
    const setup = await sd.sh(
      [
        `install -m 0755 ${inside(BIN)} /usr/local/bin/outpost`,
        `install -m 0644 ${inside(dir, "config.json")} /etc/outpost/config.yaml`,
        `printf '${oldUnit}\\n' > /etc/systemd/system/outpost.service`,
        "systemctl daemon-reload",
        "systemctl start outpost",
      ].join(" && "),
    );
    assert.equal(setup.code, 0, setup.stderr);
    const old = await watch.waitFor(status("online"), 20_000, "online under the old unit");
    assert.equal(await sd.show("outpost", "User"), "");
    await watch.waitFor(
      (m) => m.topic.endsWith("/telemetry") && m.json.session === old.json.session,
      10_000,
      "telemetry",
    );
    const rootOwned = await sd.sh("stat -c '%U' /var/lib/outpost/outbox.db");
    assert.equal(rootOwned.stdout.trim(), "root");

    const args = [
      inside(BIN),
      "install",
      "--config",
      inside(dir, "config.json"),
      "--watchdog-sec",
      String(WATCHDOG_SEC),
    ];
    const run = await sd.exec(args, 120_000);
    assert.equal(run.code, 0, run.stderr + (await sd.journal("outpost")));
    assert.match(run.stdout, /^replaced +\/usr\/local\/bin\/outpost +\(a plain file was here\)$/m);
    assert.match(run.stdout, /^note +\/etc\/outpost\/ca\.pem: group set to outpost, mode 640/m);
    // Issue 25, item 1: once started, install prints the key the agent made, read from the state directory.
    const printed = /^key +(SHA256:\S+) /m.exec(run.stdout)?.[1];
    const pub = await sd.sh("cat /var/lib/outpost/device.pub");
    assert.equal(printed, fingerprintOf(pub.stdout.trim()), run.stdout);
    // Restarted into the new unit, as the service user, on the state the old one left.
    const next = await watch.waitFor(
      (m) => status("online")(m) && m.json.session !== old.json.session,
      20_000,
      "online under the installed unit",
    );
    assert.equal(await sd.show("outpost", "User"), "outpost");
    const facts = await sd.sh(
      "stat -c '%U:%G %a' /etc/outpost/ca.pem /etc/outpost/config.yaml /var/lib/outpost /var/lib/outpost/outbox.db && readlink /usr/local/bin/outpost && systemctl is-enabled outpost",
    );
    assert.deepEqual(facts.stdout.trim().split("\n"), [
      "root:outpost 640",
      "root:outpost 640",
      "outpost:outpost 750",
      "outpost:outpost 644",
      "/opt/outpost/current/outpost",
      "enabled",
    ]);
    const verify = await sd.exec(["systemd-analyze", "verify", "/etc/systemd/system/outpost.service"]);
    assert.equal(verify.code, 0, verify.stderr);
    assert.equal(verify.stderr.trim(), "");
    // A second install changes nothing, and leaves the running agent alone.
    const again = await sd.exec(args, 60_000);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(
      again.stdout,
      `nothing to change\nkey       ${printed}  (the device's own key: operators pin this fingerprint)\n` +
        `device    ${DEVICE} ${pub.stdout.trim()}\n`,
    );
    const same = await operator.final(DEVICE, "describe");
    assert.equal((same.result as { session: string }).session, next.json.session);
    assert.equal((await sd.exec(["systemctl", "stop", "outpost"], 60_000)).code, 0);
  });

  it("systemctl start returns only after READY: the agent is online by then, and STATUS says so", async () => {
    const started = await sd.exec(["systemctl", "start", "outpost"], 120_000);
    assert.equal(started.code, 0, started.stderr + (await sd.journal("outpost")));
    // READY goes out in one datagram with the first STATUS, once connected: "connected" proves the wait.
    assert.equal(await sd.show("outpost", "ActiveState"), "active");
    assert.match(
      await sd.show("outpost", "StatusText"),
      new RegExp(
        `^connected to ${TEST_HOSTS[0]}:\\d+, outbox \\d+ queued, (last telemetry \\d+s ago|no telemetry yet)$`,
      ),
    );
    assert.equal(await sd.show("outpost", "User"), "outpost");
    session = ((await operator.final(DEVICE, "describe")).result as { session: string }).session;
    await watch.waitFor(status("online", session), 5000, "online status");
  });

  it("under the hardening: telemetry flows over TLS, signed commands run, sd_notify goes through the addon", async () => {
    const sample = await watch.waitFor(
      (m) => m.topic.endsWith("/telemetry") && m.json.session === session,
      10_000,
      "telemetry",
    );
    // The board and storage collectors read what they need under ProtectSystem=strict and PrivateUsers.
    const metrics = sample.json.metrics as { statefs?: { path: string }; restarts?: { starts: number } };
    assert.equal(metrics.statefs?.path, "/var/lib/outpost");
    assert.ok((metrics.restarts?.starts ?? 0) >= 1);
    assert.equal(sample.json.errors, undefined, JSON.stringify(sample.json.errors));
    const reply = await operator.final(DEVICE, "describe");
    assert.equal(reply.state, "succeeded", JSON.stringify(reply));
    const described = reply.result as { modules: { service: { systemd: string; watchdogMs: number } } };
    assert.equal(described.modules.service.systemd, "addon");
    assert.equal(described.modules.service.watchdogMs, (WATCHDOG_SEC * 1000) / 2);
    // The outbox and replay records live in the one writable place.
    const files = await sd.sh("ls /var/lib/outpost");
    assert.match(files.stdout, /outbox/);
  });

  it("systemctl reload applies a changed config file without a restart", async () => {
    const interval = async () =>
      ((await operator.final(DEVICE, "config.get", { path: "telemetry.interval" })).result as { value: unknown }).value;
    assert.equal(await interval(), "1s");
    writeFileSync(
      join(dir, "config.json"),
      JSON.stringify({ ...config, telemetry: { interval: "2s", fullInterval: "50ms" } }),
    );
    const copy = await sd.sh(`install -m 0640 -g outpost ${inside(dir, "config.json")} /etc/outpost/config.yaml`);
    assert.equal(copy.code, 0, copy.stderr);
    const reloaded = await sd.exec(["systemctl", "reload", "outpost"]);
    assert.equal(reloaded.code, 0, reloaded.stderr);
    // ExecReload= sends SIGHUP and returns: the agent applies the file a moment later (a busy machine showed
    // the old value right after). Wait for it, with a deadline.
    const deadline = Date.now() + 15_000;
    let now = await interval();
    while (now !== "2s" && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      now = await interval();
    }
    assert.equal(now, "2s");
    assert.equal(await sd.show("outpost", "ActiveState"), "active");
    assert.equal(await sd.show("outpost", "NRestarts"), "0");
    const same = await operator.final(DEVICE, "describe");
    assert.equal((same.result as { session: string }).session, session, "reload must not restart the agent");
  });

  it("a wedged event loop is killed by the watchdog and the service is started again", async () => {
    const mainPid = await sd.show("outpost", "MainPID");
    // The reply never comes: the loop is blocked for longer than WatchdogSec.
    void operator.call(DEVICE, "debug.block", { ms: 600_000 }, { timeoutMs: 2000 }).catch(() => {});
    const next = await watch.waitForNext(
      (m) => status("online")(m) && m.json.session !== session,
      WATCHDOG_SEC * 1000 + 30_000,
      "online again after the watchdog",
    );
    assert.notEqual(await sd.show("outpost", "MainPID"), mainPid);
    assert.equal(await sd.show("outpost", "NRestarts"), "1");
    const journal = await sd.sh("journalctl --no-pager -o cat -u outpost | grep -i watchdog");
    assert.match(journal.stdout, /[Ww]atchdog timeout/);
    session = next.json.session as string;
    // Issue 28: what the run before wrote last, and systemd's word on its end (the unit's ExecStopPost=).
    const previous = await logsPrevious();
    assert.match(previous.ending, /systemd says watchdog \((killed|dumped), ABRT\)/);
    assert.ok(previous.msgs.includes("command accepted"), "the debug.block request, logged before the loop stopped");
  });

  it("ctl logs --previous after a SIGKILL and after an OOM kill: the last lines, and how each run ended", async () => {
    const restarted = async (what: string) => {
      const next = await watch.waitForNext(
        (m) => status("online")(m) && m.json.session !== session,
        60_000,
        `online again after ${what}`,
      );
      session = next.json.session as string;
    };
    await sd.sh("systemctl kill -s KILL outpost");
    await restarted("a SIGKILL");
    const killed = await logsPrevious();
    assert.match(killed.ending, /systemd says signal \(killed, KILL\)/);
    assert.match(killed.ending, /no stop line/);
    // An OOM kill: a limit the agent's use is under, then debug.alloc past it. systemd says oom-kill on
    // cgroup v2; on v1 (this machine) it sees the kernel's SIGKILL. The restart runs under the same limit (the
    // agent uses a third of it); it goes back after.
    const limited = await sd.sh("systemctl set-property --runtime outpost MemoryMax=160M MemoryLimit=160M");
    assert.equal(limited.code, 0, limited.stderr);
    const back = restarted("an OOM kill");
    void operator.call(DEVICE, "debug.alloc", { mib: 256 }, { timeoutMs: 5000 }).catch(() => {});
    await back;
    const restored = await sd.sh("systemctl set-property --runtime outpost MemoryMax=384M MemoryLimit=384M");
    assert.equal(restored.code, 0, restored.stderr);
    const oomed = await logsPrevious();
    assert.match(oomed.ending, /systemd says (oom-kill|signal) \(killed, KILL\)/);
    assert.ok(oomed.msgs.includes("command accepted"), "the debug.alloc request, logged before the kill");
  });

  it("a heap snapshot is refused while the unit's limit leaves less than twice the heap, taken once it does", async () => {
    const snapshot = () => ctl("profile", "--heap-snapshot", "--out", join(dir, "agent.heapsnapshot"));
    // What the cgroup uses now, and 24M more: less than twice a heap of tens of MiB.
    const usage = Number((await sd.show("outpost", "MemoryCurrent")) || "0");
    assert.ok(usage > 0, "systemd counts the unit's memory");
    const tight = Math.round(usage / 1024 / 1024) + 24;
    const set = await sd.sh(`systemctl set-property --runtime outpost MemoryMax=${tight}M MemoryLimit=${tight}M`);
    assert.equal(set.code, 0, set.stderr);
    try {
      const refused = await snapshot();
      assert.equal(refused.code, 1, refused.out);
      assert.match(refused.err, /DIAG_MEMORY_SHORT: \d+ MiB free \(limit \d+ MiB, in use \d+ MiB\), \d+ MiB needed/);
    } finally {
      await sd.sh("systemctl set-property --runtime outpost MemoryMax=384M MemoryLimit=384M");
    }
    const taken = await snapshot();
    assert.equal(taken.code, 0, taken.err);
    assert.equal(await sd.show("outpost", "ActiveState"), "active");
  });

  it("systemctl stop publishes offline", async () => {
    const stopped = await sd.exec(["systemctl", "stop", "outpost"], 60_000);
    assert.equal(stopped.code, 0, stopped.stderr);
    await watch.waitFor(status("offline", session), 5000, "offline status");
    assert.equal(await sd.show("outpost", "ActiveState"), "inactive");
  });

  it("with the broker unreachable, READY comes after service.readyTimeout and the agent works offline", async () => {
    const dead = await freePort();
    const offline = { ...config, mqtt: { url: `mqtt://127.0.0.1:${dead}` }, service: { readyTimeout: "2s" } };
    writeFileSync(join(dir, "offline.json"), JSON.stringify(offline));
    const copy = await sd.sh(`install -m 0640 -g outpost ${inside(dir, "offline.json")} /etc/outpost/config.yaml`);
    assert.equal(copy.code, 0, copy.stderr);
    const t0 = performance.now();
    const started = await sd.exec(["systemctl", "start", "outpost"], 60_000);
    const ms = performance.now() - t0;
    assert.equal(started.code, 0, started.stderr);
    assert.ok(ms >= 2000, `start returned after ${Math.round(ms)} ms, before the ready timeout`);
    assert.match(
      await sd.show("outpost", "StatusText"),
      /^offline: broker not reachable, messages kept, outbox \d+ queued/,
    );
    assert.equal((await sd.exec(["systemctl", "stop", "outpost"], 60_000)).code, 0);
  });

  it("exit 78 (invalid configuration) is not restarted", async () => {
    const bad = await sd.sh(`echo 'telemetry: { interval: fast }' > /etc/outpost/config.yaml`);
    assert.equal(bad.code, 0, bad.stderr);
    const started = await sd.exec(["systemctl", "start", "outpost"], 60_000);
    assert.notEqual(started.code, 0);
    assert.equal(await sd.show("outpost", "ExecMainStatus"), "78");
    // Not "auto-restart": systemd gave up at once, as RestartPreventExitStatus=78 says.
    assert.equal(await sd.show("outpost", "SubState"), "failed");
    assert.match(await sd.journal("outpost"), /telemetry\.interval/);
  });

  it("uninstall --purge removes the unit, the binaries, the config and the state", async () => {
    const run = await sd.exec([inside(BIN), "uninstall", "--purge"]);
    assert.equal(run.code, 0, run.stderr);
    const left = await sd.sh(
      "ls -d /etc/systemd/system/outpost.service /opt/outpost /usr/local/bin/outpost /etc/outpost /var/lib/outpost 2>/dev/null | wc -l",
    );
    assert.equal(left.stdout.trim(), "0");
    const again = await sd.exec([inside(BIN), "uninstall", "--purge"]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /nothing to change/);
  });

  describe("scripts/deploy.sh over a real sshd inside the namespace", () => {
    const DEPLOY = join(ROOT, "scripts", "deploy.sh");
    let ssh: string[];
    let ports: { x64: number; arm64: number };

    before(async () => {
      const keys = await sd.sh(
        [
          `ssh-keygen -q -t ed25519 -N '' -f ${inside(dir, "id")}`,
          `ssh-keygen -q -t ed25519 -N '' -f ${inside(dir, "hostkey")}`,
          `cp ${inside(dir, "id.pub")} ${inside(dir, "authorized_keys")}`,
          `mkdir -p ${inside(dir, "shim")}`,
          // The arm64 path on an x86 machine: this side says it is aarch64.
          `printf '#!/bin/sh\\necho aarch64\\n' > ${inside(dir, "shim", "uname")}`,
          `chmod 0755 ${inside(dir, "shim", "uname")}`,
        ].join(" && "),
      );
      assert.equal(keys.code, 0, keys.stderr);
      ports = { x64: await freePort(), arm64: await freePort() };
      for (const [name, port] of Object.entries(ports)) {
        const conf = [
          `Port ${port}`,
          "ListenAddress 127.0.0.1",
          `HostKey ${inside(dir, "hostkey")}`,
          `AuthorizedKeysFile ${inside(dir, "authorized_keys")}`,
          "PermitRootLogin prohibit-password",
          "PasswordAuthentication no",
          "KbdInteractiveAuthentication no",
          "UsePAM no",
          "StrictModes no",
          "PidFile none",
          "Subsystem sftp internal-sftp",
          ...(name === "arm64" ? [`SetEnv PATH=${inside(dir, "shim")}:/usr/sbin:/usr/bin:/sbin:/bin`] : []),
        ];
        writeFileSync(join(dir, `sshd-${name}.conf`), `${conf.join("\n")}\n`);
        // Debian's sshd tells systemd when it listens: systemd-run returns once it does.
        const started = await sd.exec([
          "systemd-run",
          `--unit=test-sshd-${name}`,
          "-p",
          "Type=notify",
          "-p",
          "RuntimeDirectory=sshd",
          "/usr/sbin/sshd",
          "-D",
          "-e",
          "-f",
          inside(dir, `sshd-${name}.conf`),
        ]);
        assert.equal(started.code, 0, started.stderr);
      }
      ssh = [
        "-i",
        join(dir, "id"),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
      ];
    });

    // ctl, as deploy.sh runs it to pin each device: the built binary, this test's broker and pin file.
    const ctlEnv = () => ({
      PATH: process.env.PATH ?? "",
      OUTPOST_CTL: BIN,
      OUTPOST_CTL_BROKER: broker.url,
      OUTPOST_CTL_KNOWN_DEVICES: join(dir, "known_devices"),
    });
    const deploy = (port: number, extra: string[] = []) =>
      run(["bash", DEPLOY, "-p", String(port), ...ssh, ...extra, "root@127.0.0.1"], {
        timeoutMs: 180_000,
        env: ctlEnv(),
      });
    const sums = () =>
      Object.fromEntries(
        readFileSync(join(ROOT, "dist", "SHA256SUMS"), "utf8")
          .trim()
          .split("\n")
          .map((l) => l.split(/\s+/).reverse()),
      ) as Record<string, string>;

    it("x86_64: copies the x64 binary, verifies it on the host, installs and starts the service", async () => {
      // The device after the purge above: only the CA the operator put in place.
      const ca = await sd.sh(`install -D -m 0600 ${inside(dir, "ca.pem")} /etc/outpost/ca.pem`);
      assert.equal(ca.code, 0, ca.stderr);
      writeFileSync(join(dir, "config.json"), JSON.stringify(config));
      const deployed = await deploy(ports.x64, ["--config", join(dir, "config.json")]);
      assert.equal(deployed.code, 0, deployed.stdout + deployed.stderr);
      assert.match(
        deployed.stdout,
        new RegExp(
          `^root@127\\.0\\.0\\.1: x86_64, copying outpost-linux-x64 \\(${sums()["outpost-linux-x64"]}\\)$`,
          "m",
        ),
      );
      assert.match(deployed.stdout, /^root@127\.0\.0\.1: installed$/m);
      assert.equal(await sd.show("outpost", "ActiveState"), "active");
      const described = await operator.final(DEVICE, "describe");
      assert.equal(described.state, "succeeded");
      // deploy.sh pinned the device's own key, read over its ssh session: ctl counts its signed answers.
      const pub = (await sd.sh("cat /var/lib/outpost/device.pub")).stdout.trim();
      const pins = readFileSync(join(dir, "known_devices"), "utf8");
      assert.match(
        pins,
        new RegExp(
          `^127\\.0\\.0\\.1:${broker.port} ${PREFIX} ${DEVICE} ${pub.replace(/[+/]/g, "\\$&")}  # trusted `,
          "m",
        ),
      );
      const called = await run([BIN, "ctl", "call", DEVICE, "ping", "--key", join(dir, "ops.key")], { env: ctlEnv() });
      assert.equal(called.code, 0, called.stderr);
      // The temporary copy is gone.
      assert.equal((await sd.sh("ls /tmp | grep -c outpost-deploy || true")).stdout.trim(), "0");
    });

    it("aarch64 (uname shim): picks the arm64 binary and verifies it there; an x86 host cannot run it", async () => {
      const run = await deploy(ports.arm64);
      assert.match(
        run.stdout,
        new RegExp(`: aarch64, copying outpost-linux-arm64 \\(${sums()["outpost-linux-arm64"]}\\)$`, "m"),
      );
      assert.doesNotMatch(run.stderr, /sha256 mismatch/);
      assert.equal(run.code, 1);
      assert.match(run.stderr, /install failed/);
    });

    it("a binary that does not match SHA256SUMS is not installed", async () => {
      const fake = mkdtempSync(join(dir, "dist-"));
      for (const f of ["outpost-linux-x64", "outpost-linux-arm64"]) {
        writeFileSync(join(fake, f), "not the agent\n");
      }
      writeFileSync(join(fake, "SHA256SUMS"), readFileSync(join(ROOT, "dist", "SHA256SUMS")));
      const before = await sd.show("outpost", "MainPID");
      const run = await deploy(ports.x64, ["--dist", fake]);
      assert.equal(run.code, 1);
      assert.match(run.stderr, /sha256 mismatch: not installed/);
      assert.equal(await sd.show("outpost", "MainPID"), before, "the running service was touched");
    });
  });
});
