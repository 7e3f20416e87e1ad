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
Documentation=man:systemd.service(5)
Wants=network-online.target
After=network-online.target time-sync.target
# Ten failed starts in five minutes and systemd gives up (the device stays reachable over ssh).
StartLimitIntervalSec=300
StartLimitBurst=10

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
${extra.map((line) => `${line}\n`).join("")}`;
}
