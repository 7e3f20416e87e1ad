import { parseArgs } from "node:util";
import { errorMessage, isOutpostError } from "../core/errors.ts";
import { versionLine } from "../version.ts";
import { configCommand, DEFAULT_CONFIG } from "./config-command.ts";
import { EXIT, type Host, me, UsageError } from "./host.ts";
import { runCommand } from "./run-command.ts";

const HELP: Record<string, string> = {
  main: `Usage: outpost <command> [options]

Commands:
  run [--config PATH]        run the agent in the foreground (what systemd starts)
  demo                       embedded broker + agent + live view, nothing to install
  config validate PATH       check a config file; exit 78 and one line per problem if invalid
  config schema              print the JSON Schema of the config
  config print [PATH] [--sources]
                             the effective config (file + config.set overrides + environment), secrets
                             redacted; --sources: one line per key with where its value comes from
  keygen --out PREFIX [--release]
                             ed25519 key pair: PREFIX.key (private), PREFIX.pub; prints the config lines
                             that trust it (commands.trustedKeys, or update.trustedKeys with --release)
  release --binary FILE --key FILE --out DIR
                             a signed release (manifest, chunk index, artifact) for over-the-air updates
  ctl devices|watch|call|update|config
                             the operator side: list devices, watch telemetry, call signed commands,
                             send a release; settings from flags, environment, ~/.outpost/ctl.yaml
  install [--config FILE]    as root: service user, release layout, hardened systemd unit; started
  uninstall [--purge]        remove the service and binaries (--purge: config and state too)
  update-apply               as root, by outpost-update.service: install a staged update (docs/ota.md)

Options:
  --version                  print "outpost <semver> (<commit>) node <version> linux-<arch>"
  -h, --help                 help for outpost or for a command

Exit codes: 0 clean stop, 64 usage error, 69 ctl got no connection to the broker, 75 stopped by the
restart command, 78 invalid configuration, 1 anything else.`,
  run: `Usage: outpost run [--config PATH] [--log-format json|pretty]

Runs the agent until SIGTERM or SIGINT, then drains: stops intake, flushes the outbox, publishes
"offline", disconnects. A second signal, or a drain longer than shutdown.deadline, exits 1. After the
restart command it drains the same way and exits 75, for systemd to start it again.
SIGHUP or a change of the config file reloads the configuration (invalid: the old one is kept).

  --config PATH          config file (YAML or JSON); default ${DEFAULT_CONFIG}, which may be absent
  --log-format FORMAT    json (default, for journald) or pretty (for a terminal)

Every config key can be set from the environment: OUTPOST_MQTT__URL=mqtts://broker:8883
(double underscore = nesting, SNAKE_CASE = camelCase).`,
  demo: `Usage: outpost demo [--port N] [--interval DURATION]

Starts an embedded MQTT broker (aedes, MQTT 3.1.1) on localhost, the agent connected to it, and a live
view of its status and telemetry. Ctrl-C stops everything.

  --port N               broker port (default: a free one)
  --interval DURATION    telemetry interval (default 1s)`,
  config: `Usage: outpost config validate PATH | config schema | config print [PATH]

  validate PATH   exit 0 if valid; otherwise exit 78 with one line per problem: key path, expected, found
  schema          the JSON Schema (draft 2020-12) of the config file
  print [PATH] [--sources]
                  the effective config: defaults, the file, the overrides config.set stored in state.dir,
                  the environment; secrets redacted. --sources prints one line per key with its origin`,
};

/** Runs one command line; returns the process exit code. */
export async function cli(argv: string[], host: Host): Promise<number> {
  try {
    return await dispatch(argv, host);
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      host.stderr.write(`outpost: ${errorMessage(err)}\nRun '${me(host)} --help' for usage.\n`);
      return EXIT.USAGE;
    }
    host.stderr.write(`outpost: ${errorMessage(err)}\n`);
    return isOutpostError(err) && err.code === "BROKER_UNAVAILABLE" ? EXIT.UNAVAILABLE : EXIT.FAILURE;
  }
}

async function dispatch(argv: string[], host: Host): Promise<number> {
  const [command, ...rest] = argv;
  const help = rest.includes("--help") || rest.includes("-h");
  const print = (text: string) => {
    host.stdout.write(`${text}\n`);
    return EXIT.OK;
  };
  switch (command) {
    case undefined:
      host.stderr.write(`${HELP.main}\n`);
      return EXIT.USAGE;
    case "--help":
    case "-h":
    case "help":
      return print(HELP.main ?? "");
    case "--version":
    case "version":
      return print(versionLine());
    case "run": {
      if (help) return print(HELP.run ?? "");
      const { values } = parseArgs({
        args: rest,
        options: { config: { type: "string", short: "c" }, "log-format": { type: "string" } },
        allowPositionals: false,
      });
      const format = values["log-format"];
      if (format !== undefined && format !== "json" && format !== "pretty") {
        throw new UsageError(`--log-format must be json or pretty, not ${format}`);
      }
      return runCommand(host, { config: values.config, logFormat: format });
    }
    case "probe-runtime": {
      // Not in the help: the agent starts it to try the native inference runtime (src/tasks/probe.ts).
      const [runtimeDir, binding] = rest;
      if (!runtimeDir || !binding) throw new UsageError("probe-runtime RUNTIME_DIR BINDING");
      const { probeRuntime } = await import("../tasks/probe.ts");
      const r = await probeRuntime(runtimeDir, binding);
      host.stdout.write(`${r.line}\n`);
      return r.ok ? EXIT.OK : EXIT.FAILURE;
    }
    case "exit-record": {
      // Not in the help: the unit's ExecStopPost= runs it (src/cli/exit-record-command.ts).
      const { exitRecordCommand } = await import("./exit-record-command.ts");
      return exitRecordCommand(host, rest);
    }
    case "demo": {
      if (help) return print(HELP.demo ?? "");
      const { values } = parseArgs({
        args: rest,
        options: { port: { type: "string" }, interval: { type: "string" } },
        allowPositionals: false,
      });
      const port = values.port === undefined ? undefined : Number(values.port);
      if (port !== undefined && !(Number.isInteger(port) && port >= 0 && port < 65536)) {
        throw new UsageError(`--port must be a port number, not ${values.port}`);
      }
      // The embedded broker is loaded only for the demo: `run` on a device never pays for it.
      const { demoCommand } = await import("./demo-command.ts");
      return demoCommand(host, { port, interval: values.interval });
    }
    case "config":
      if (help) return print(HELP.config ?? "");
      return configCommand(host, rest);
    // The operator's commands are loaded only when used: `run` on a device never pays for them.
    case "keygen": {
      const { KEYGEN_HELP, keygenCommand } = await import("./keygen-command.ts");
      if (help) return print(KEYGEN_HELP);
      return keygenCommand(host, rest);
    }
    case "release": {
      const { RELEASE_HELP, releaseCommand } = await import("./release-command.ts");
      if (help) return print(RELEASE_HELP);
      return releaseCommand(host, rest);
    }
    case "ctl": {
      const { CTL_HELP, ctlCommand } = await import("./ctl-command.ts");
      if (help) return print(CTL_HELP);
      return ctlCommand(host, rest);
    }
    case "update-apply": {
      const { UPDATE_APPLY_HELP, updateApplyCommand } = await import("./update-apply-command.ts");
      if (help) return print(UPDATE_APPLY_HELP);
      return updateApplyCommand(host, rest);
    }
    case "install":
    case "uninstall": {
      const { INSTALL_HELP, installCommand } = await import("./install-command.ts");
      if (help) return print(INSTALL_HELP);
      return installCommand(host, command, rest);
    }
    default:
      throw new UsageError(`unknown command ${command}`);
  }
}
