#!/usr/bin/env bash
# Deploys the built agent to devices over ssh and installs it as a service:
#   scripts/deploy.sh [-p PORT] [-i IDENTITY] [-o SSH_OPTION]... [--config FILE] [--dist DIR] HOST...
# For each host: asks `uname -m`, copies dist/outpost-linux-x64 or -arm64 to a private temporary directory
# there, checks its sha256 on the host against dist/SHA256SUMS, and runs `outpost install` (with sudo when the
# ssh user is not root). A host that fails is reported and the others go on; the exit status is 1 if any failed.
# Then it pins the device's key, which install printed over this ssh session (the channel already trusted):
# `outpost ctl trust DEVICE --public-key KEY FINGERPRINT`, with ctl's own settings (~/.outpost/ctl.yaml, the
# OUTPOST_CTL_* variables). The ctl run is $OUTPOST_CTL, else `outpost` on the PATH, else this machine's
# dist/ binary; with none, the command is printed for the operator to run.
set -uo pipefail

dist="$(cd "$(dirname "$0")/.." && pwd)/dist"
config=""
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10)
scp_opts=(-o BatchMode=yes -o ConnectTimeout=10)
hosts=()
while [ $# -gt 0 ]; do
  case "$1" in
    -p) ssh_opts+=(-p "$2"); scp_opts+=(-P "$2"); shift 2 ;;
    -i) ssh_opts+=(-i "$2"); scp_opts+=(-i "$2"); shift 2 ;;
    -o) ssh_opts+=(-o "$2"); scp_opts+=(-o "$2"); shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --dist) dist="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "deploy: unknown option $1" >&2; exit 64 ;;
    *) hosts+=("$1"); shift ;;
  esac
done
[ ${#hosts[@]} -gt 0 ] || { echo "deploy: name at least one HOST" >&2; exit 64; }
[ -f "$dist/SHA256SUMS" ] || { echo "deploy: $dist/SHA256SUMS missing: run npm run build" >&2; exit 1; }
[ -z "$config" ] || [ -f "$config" ] || { echo "deploy: no config file $config" >&2; exit 1; }

deploy_one() {
  local host="$1" machine file sum tmp sudo=""
  machine=$(ssh "${ssh_opts[@]}" "$host" uname -m) || { echo "$host: ssh failed" >&2; return 1; }
  case "$machine" in
    x86_64|amd64) file=outpost-linux-x64 ;;
    aarch64|arm64) file=outpost-linux-arm64 ;;
    *) echo "$host: no build for $machine" >&2; return 1 ;;
  esac
  sum=$(awk -v f="$file" '$2 == f { print $1 }' "$dist/SHA256SUMS")
  [ -n "$sum" ] && [ -f "$dist/$file" ] || { echo "$host: $dist/$file is not built" >&2; return 1; }
  tmp=$(ssh "${ssh_opts[@]}" "$host" 'mktemp -d /tmp/outpost-deploy.XXXXXX') || return 1
  echo "$host: $machine, copying $file ($sum)"
  scp -q "${scp_opts[@]}" "$dist/$file" "$host:$tmp/outpost" || { echo "$host: copy failed" >&2; return 1; }
  local args="install"
  if [ -n "$config" ]; then
    scp -q "${scp_opts[@]}" "$config" "$host:$tmp/config.yaml" || return 1
    args="install --config $tmp/config.yaml"
  fi
  # The hash is checked where the file landed: a truncated or altered copy is never run.
  local out
  out=$(ssh "${ssh_opts[@]}" "$host" "set -e
    cd $tmp
    trap 'rm -rf $tmp' EXIT
    echo '$sum  outpost' | sha256sum -c --quiet - || { echo 'sha256 mismatch: not installed' >&2; exit 1; }
    chmod 0755 outpost
    [ \"\$(id -u)\" = 0 ] || sudo='sudo -n'
    \$sudo ./outpost $args") || { printf '%s\n' "$out"; echo "$host: install failed" >&2; return 1; }
  printf '%s\n' "$out"
  echo "$host: installed"
  pin "$host" "$out"
}

# The device's key from install's `device ID KEY` and `key FINGERPRINT` lines, pinned for ctl.
pin() {
  local host="$1" out="$2" device key fingerprint
  device=$(printf '%s\n' "$out" | awk '$1 == "device" { print $2 }' | tail -n 1)
  key=$(printf '%s\n' "$out" | awk '$1 == "device" { print $3 }' | tail -n 1)
  fingerprint=$(printf '%s\n' "$out" | awk '$1 == "key" { print $2 }' | tail -n 1)
  if [ -z "$device" ] || [ -z "$key" ]; then
    echo "$host: install printed no device key: not pinned (see journalctl -u outpost there)" >&2
    return 0
  fi
  # Only what install prints is taken: an id, a key and a fingerprint of their own forms, never an option or a
  # path (the host's output is data; `--` ends ctl's options).
  if ! [[ "$device" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ && "$key" =~ ^ed25519:[A-Za-z0-9+/]{43}=$ &&
    ( -z "$fingerprint" || "$fingerprint" =~ ^SHA256:[A-Za-z0-9+/]{43}$ ) ]]; then
    echo "$host: install printed a device key line of another form: not pinned" >&2
    return 0
  fi
  local args=(ctl trust --public-key "$key" -- "$device")
  [ -z "$fingerprint" ] || args+=("$fingerprint")
  if [ -n "${ctl_run:-}" ]; then
    "$ctl_run" "${args[@]}" || echo "$host: $device not pinned: outpost ${args[*]}" >&2
  else
    echo "$host: pin $device with: outpost ${args[*]}"
  fi
}

# What runs `outpost ctl` here: $OUTPOST_CTL, `outpost`, or the dist/ binary for this machine.
ctl_run="${OUTPOST_CTL:-}"
if [ -z "$ctl_run" ]; then
  if command -v outpost >/dev/null 2>&1; then ctl_run=outpost
  else
    case "$(uname -m)" in
      x86_64|amd64) [ -x "$dist/outpost-linux-x64" ] && ctl_run="$dist/outpost-linux-x64" ;;
      aarch64|arm64) [ -x "$dist/outpost-linux-arm64" ] && ctl_run="$dist/outpost-linux-arm64" ;;
    esac
  fi
fi

failed=0
for host in "${hosts[@]}"; do
  deploy_one "$host" || failed=1
done
exit $failed
