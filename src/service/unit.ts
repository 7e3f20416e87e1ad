import { UNITS_REVISION } from "../version.ts";

/** Where `outpost install` puts things; the OTA issue's updater keeps to the same layout. */
export const LAYOUT = {
  opt: "/opt/outpost",
  releases: "/opt/outpost/releases",
  current: "/opt/outpost/current",
  previous: "/opt/outpost/previous",
  bin: "/usr/local/bin/outpost",
  etc: "/etc/outpost",
  config: "/etc/outpost/config.yaml",
  state: "/var/lib/outpost",
  unit: "/etc/systemd/system/outpost.service",
  wants: "/etc/systemd/system/multi-user.target.wants/outpost.service",
  /** The privileged half of an update (docs/ota.md): a `.path` unit on the agent's requests, and a oneshot. */
  updatePath: "/etc/systemd/system/outpost-update.path",
  updateService: "/etc/systemd/system/outpost-update.service",
  updateWants: "/etc/systemd/system/multi-user.target.wants/outpost-update.path",
  /** Returns to the previous release while a trial runs: OnFailure= of the service, or the agent's request. */
  rollbackPath: "/etc/systemd/system/outpost-rollback.path",
  rollbackService: "/etc/systemd/system/outpost-rollback.service",
  rollbackWants: "/etc/systemd/system/multi-user.target.wants/outpost-rollback.path",
  rollbackScript: "/opt/outpost/rollback",
  /** The unit's Documentation=: what to run on the device, and where the full docs are. */
  readme: "/opt/outpost/README.txt",
  /**
   * Root's own record of an update (src/ota/root-record.ts): root-owned, no ancestor the agent can write,
   * outside the tmpfiles line that hands state.dir to the agent, persistent like the releases.
   */
  updateRecords: "/opt/outpost/update",
  /**
   * ExecStopPost= of the service, in a drop-in so that a committed update brings it to devices installed before
   * (the unit itself carries install's options): what systemd says of each ending, for `ctl logs --previous`.
   */
  exitRecordDropIn: "/etc/systemd/system/outpost.service.d/exit-record.conf",
  /** Held only while an update is on trial; in /run, so that a reboot never keeps it. */
  trialDropIn: "/run/systemd/system/outpost.service.d/trial.conf",
  sysusers: "/usr/lib/sysusers.d/outpost.conf",
  tmpfiles: "/usr/lib/tmpfiles.d/outpost.conf",
  user: "outpost",
} as const;

export interface UnitOptions {
  /** MemoryMax= (systemd syntax): a safety net above the agent and its task workers. */
  memoryMax: string;
  /** WatchdogSec= in seconds; the agent pings every half of it. */
  watchdogSec: number;
}

export const UNIT_DEFAULTS: UnitOptions = { memoryMax: "384M", watchdogSec: 20 };

/**
 * The hardened Type=notify unit. The agent needs the network, its state directory, reading /proc and /sys,
 * and nothing else: no capabilities, no writes outside state.dir, no devices. What needs more (a reboot
 * command, the Pi's firmware interface) is listed in docs/service.md.
 */
export function unitText(o: UnitOptions = UNIT_DEFAULTS): string {
  return `# Written by \`outpost install\`; a second install rewrites it. Local changes belong in a drop-in:
#   systemctl edit outpost
[Unit]
Description=Outpost edge agent
Documentation=file:${LAYOUT.readme}
Wants=network-online.target
After=network-online.target time-sync.target
# Ten failed starts in five minutes and systemd gives up (the device stays reachable over ssh).
StartLimitIntervalSec=300
StartLimitBurst=10
# An update on trial that fails is returned to the previous release (the script does nothing otherwise).
OnFailure=outpost-rollback.service

[Service]
Type=notify
# READY, STATUS and WATCHDOG come from the agent's own process; "all" also admits the systemd-notify fallback.
NotifyAccess=all
ExecStart=${LAYOUT.bin} run --config ${LAYOUT.config}
ExecReload=/bin/kill -HUP $MAINPID
User=${LAYOUT.user}
Group=${LAYOUT.user}
WorkingDirectory=${LAYOUT.state}
# A single executable honours NODE_OPTIONS: nothing from the environment may change its flags.
UnsetEnvironment=NODE_OPTIONS
# READY waits for the broker at most service.readyTimeout (30s); the start timeout must be longer.
TimeoutStartSec=90
# The drain takes at most shutdown.deadline (10s).
TimeoutStopSec=30
WatchdogSec=${o.watchdogSec}
Restart=on-failure
RestartSec=2
# 78: invalid configuration, which a restart cannot fix. 75 (the restart command) is restarted.
RestartPreventExitStatus=78
MemoryMax=${o.memoryMax}
UMask=0077

NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ReadWritePaths=${LAYOUT.state}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
`;
}

const UPDATE = `${LAYOUT.state}/update`;

/**
 * The revision of the update units and the rollback script (src/version.ts), in a comment of each. A commit
 * brings them up to the committed release's own (update-apply); `describe` reports what is installed. 1:
 * before root kept its own records; 2: the root boundary.
 */
/** Held by update-apply and the rollback script while they run (root's directory; flock creates it). */
const UPDATE_LOCK = `${LAYOUT.updateRecords}/.lock`;
const REVISION_LINE = `# outpost units revision ${UNITS_REVISION}`;

/**
 * The units of an update's privileged half (docs/ota.md). The agent only writes requests into its state
 * directory; root acts on them: outpost-update.service runs the committed binary to verify and install a
 * staged release (or to finish a committed trial), outpost-rollback.service runs a shell script that needs
 * nothing from the release on trial.
 */
/** The page the unit's Documentation= names: the commands an operator on the device needs first. */
export function deviceReadme(): string {
  return `Outpost edge agent, installed by \`outpost install\` (a second install rewrites this file).

  systemctl status outpost            what it is doing (its STATUS line), and whether it is up
  journalctl -u outpost -f            its log (JSON lines; --output cat for the bare lines)
  outpost config validate ${LAYOUT.config}
                                      check a change of the config, then: systemctl reload outpost
  outpost config print --sources      what the agent uses, and where each value comes from
  outpost --help                      every command

Layout: ${LAYOUT.releases}/<version>-<sha12>/outpost (${LAYOUT.current} and ${LAYOUT.bin} link to the
running one), ${LAYOUT.config}, ${LAYOUT.state} (the service user's), ${LAYOUT.unit}.
Updates are installed by outpost-update.service and undone by outpost-rollback.service (root's records in
${LAYOUT.updateRecords}). The full documentation is README.md and docs/ (service.md, ota.md, mqtt-api.md,
security.md) of the Outpost source the binary was built from.
`;
}

export function updateUnits(): Record<
  "updatePath" | "updateService" | "rollbackPath" | "rollbackService" | "exitRecordDropIn",
  string
> {
  const head = `# Written by \`outpost install\` and by a committed update; docs/ota.md explains the update's units.\n${REVISION_LINE}\n`;
  return {
    exitRecordDropIn: `# Written by \`outpost install\` and by a committed update (docs/diagnostics.md): what systemd says of
# the agent's ending ($SERVICE_RESULT, $EXIT_CODE, $EXIT_STATUS), kept in its state directory for the next run
# (ctl logs --previous). "-": a release without the command fails it harmlessly.
${REVISION_LINE}
[Service]
ExecStopPost=-${LAYOUT.bin} exit-record --config ${LAYOUT.config}
`,
    updatePath: `${head}[Unit]
Description=Outpost: watch for an update to install or a trial to finish

[Path]
PathExists=${UPDATE}/install.json
PathExists=${UPDATE}/commit.request
Unit=outpost-update.service

[Install]
WantedBy=multi-user.target
`,
    updateService: `${head}[Unit]
Description=Outpost: verify and install a staged update, or finish a committed one

[Service]
Type=oneshot
# One lock with the rollback script: the two never act on root's record and the links at once.
ExecStart=/usr/bin/flock -w 240 ${UPDATE_LOCK} ${LAYOUT.bin} update-apply --config ${LAYOUT.config}
# A oneshot has no start timeout by default; hashing and copying a release takes seconds, even on a Pi.
TimeoutStartSec=5min
UnsetEnvironment=NODE_OPTIONS
UMask=0022
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
`,
    rollbackPath: `${head}[Unit]
Description=Outpost: watch for a failed trial

[Path]
PathExists=${UPDATE}/rollback.request
Unit=outpost-rollback.service

[Install]
WantedBy=multi-user.target
`,
    rollbackService: `${head}[Unit]
Description=Outpost: return to the previous release if an update on trial failed

[Service]
Type=oneshot
ExecStart=/usr/bin/flock -w 100 ${UPDATE_LOCK} ${LAYOUT.rollbackScript}
TimeoutStartSec=2min
UMask=0022
`,
  };
}

/**
 * The rollback, in sh: it runs when the release on trial cannot even start, so it must need nothing from it.
 * It acts only while root's own record says a trial runs and `current` is still that release: a committed
 * release that fails later (a config edit, a start limit) is never switched away from. It writes only in
 * root's directories; the agent's it enters pinned (cd, then `.` must be the service user's directory) and
 * only to remove the request, by its plain name (docs/ota.md, "The root boundary").
 */
export function rollbackScript(): string {
  return `#!/bin/sh
# Written by outpost install and by a committed update: returns to the previous release while an update is on
# trial (docs/ota.md).
${REVISION_LINE}
set -u
umask 022
opt=${LAYOUT.opt}
records=${LAYOUT.updateRecords}
dir=${UPDATE}
dropin=${LAYOUT.trialDropIn}
requested=no
uid=$(id -u ${LAYOUT.user} 2>/dev/null || echo none)
if cd -P "$dir" 2>/dev/null && [ "$(stat -c %u:%F .)" = "$uid:directory" ]; then
  if [ -e rollback.request ] || [ -L rollback.request ]; then
    requested=yes
    # By its name in the pinned directory (a directory planted there is removed if empty, else left).
    rm -f rollback.request 2>/dev/null || rmdir rollback.request 2>/dev/null
  fi
fi
cd /
state=$(systemctl show -P ActiveState outpost.service)
if [ "$requested" = no ] && { [ "$state" = active ] || [ "$state" = activating ] || [ "$state" = reloading ]; }; then
  echo "outpost: outpost.service is $state again: nothing to do"
  exit 0
fi
if [ "$(systemctl is-system-running 2>/dev/null)" = stopping ]; then
  echo "outpost: the system is stopping: a trial resumes at the next start"
  exit 0
fi
release=""
if [ -f "$records/trial.json" ] && grep -q '^{"state":"trial","release":"' "$records/trial.json"; then
  release=$(sed -n 's/^{"state":"trial","release":"\\([^"]*\\)".*/\\1/p' "$records/trial.json")
fi
current=$(readlink "$opt/current" || true)
restart=no
if [ -n "$release" ] && [ "$current" = "releases/$release" ]; then
  previous=$(readlink "$opt/previous" || true)
  if [ -n "$previous" ] && [ -x "$opt/$previous/outpost" ]; then
    why="the release on trial asked for it"
    if [ "$requested" = no ]; then
      why="systemd: outpost.service failed (result $(systemctl show -P Result outpost.service), status $(systemctl show -P ExecMainStatus outpost.service))"
    fi
    why=$(printf '%s' "$why" | tr -cd 'A-Za-z0-9 ,.:()_-')
    ln -sfn "$previous" "$opt/current.rollback" && mv -T "$opt/current.rollback" "$opt/current" && sync
    at=$(date +%s)000
    # The release checked above, literally: the record is rewritten only while it still names that trial.
    pattern=$(printf '%s' "$release" | sed 's/[.]/\\\\./g')
    sed 's/^{"state":"trial","release":"'"$pattern"'",/{"state":"rolled-back","release":"'"$release"'","reason":"'"$why"'","at":'"$at"',/' \\
      "$records/trial.json" > "$records/trial.json.tmp" && sync && mv -T "$records/trial.json.tmp" "$records/trial.json" && sync
    echo "outpost: $release failed its trial ($why): back on $previous"
    restart=yes
  else
    echo "outpost: $release failed its trial, but there is no previous release to return to"
  fi
elif [ -n "$release" ]; then
  echo "outpost: $release is on trial but not current: nothing to switch"
else
  echo "outpost: no update on trial: nothing to do"
fi
# The trial's Restart=no ends with it; a service it left failed is started again under the usual rules.
if [ -e "$dropin" ]; then
  rm -f "$dropin" && systemctl daemon-reload
  restart=yes
fi
if [ "$restart" = yes ]; then
  systemctl reset-failed outpost.service
  systemctl restart --no-block outpost.service
fi
exit 0
`;
}

/** The service user, for systemd-sysusers (and image builders). */
export function sysusersText(): string {
  return `# Written by \`outpost install\`.
u ${LAYOUT.user} - "Outpost edge agent" ${LAYOUT.state} /usr/sbin/nologin
`;
}

/**
 * Directories and ownership, for systemd-tmpfiles. `Z` hands a state directory made by hand as root over to
 * the service user; `extra` makes the files the config names (password, CA, client key) readable by it.
 */
export function tmpfilesText(extra: readonly string[] = []): string {
  return `# Written by \`outpost install\`.
d ${LAYOUT.etc} 0750 root ${LAYOUT.user} -
z ${LAYOUT.config} 0640 root ${LAYOUT.user} -
d ${LAYOUT.state} 0750 ${LAYOUT.user} ${LAYOUT.user} -
Z ${LAYOUT.state} - ${LAYOUT.user} ${LAYOUT.user} -
d ${UPDATE} 0700 ${LAYOUT.user} ${LAYOUT.user} -
${extra.map((line) => `${line}\n`).join("")}`;
}
