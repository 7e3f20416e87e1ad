#!/usr/bin/env bash
# Installs the Debian packages that the build and the tests need, if any is missing:
#   build: binutils (strip) and binutils-aarch64-linux-gnu (strip for arm64), xz-utils, gcc and
#          gcc-aarch64-linux-gnu with libc6-dev-arm64-cross (the sd_notify addon, build/native)
#   tests: mosquitto (the broker, mosquitto_passwd), openssl (test CA), qemu-user and the arm64 runtime
#          libraries (to run the arm64 binary), python3-paho-mqtt and python3-cryptography (an independent
#          operator that signs commands), systemd (booted in a private namespace by the service tests),
#          openssh-server (the sshd that scripts/deploy.sh is tested against), prometheus (promtool checks
#          /metrics, and a real Prometheus scrapes it), prometheus-node-exporter (what npm run bench compares to),
#          strace (every path root's update units touch, test/e2e/root-boundary.test.ts), rabbitmq-server (a
#          two-node cluster, test/integration/rabbitmq.test.ts; never started as a service), protobuf-compiler
#          (protoc decodes ctl profile --pprof's output against pprof's own profile.proto)
# As root it runs apt-get; otherwise it prints the command to run and fails. `build` checks only the build's.
set -euo pipefail

# What the build needs: `install-deps.sh build`. The tests need the rest too: `install-deps.sh test` (the default).
declare -A build=(
  [xz-utils]=/usr/bin/xz
  [binutils]=/usr/bin/strip
  [gcc]=/usr/bin/gcc
  [gcc-aarch64-linux-gnu]=/usr/bin/aarch64-linux-gnu-gcc
  [libc6-dev-arm64-cross]=/usr/aarch64-linux-gnu/include/stdio.h
  [binutils-aarch64-linux-gnu]=/usr/bin/aarch64-linux-gnu-strip
)
declare -A tests=(
  [mosquitto]=/usr/sbin/mosquitto
  [mosquitto-clients]=/usr/bin/mosquitto_sub
  [openssl]=/usr/bin/openssl
  [systemd]=/lib/systemd/systemd
  [openssh-server]=/usr/sbin/sshd
  [openssh-client]=/usr/bin/ssh
  [qemu-user]=/usr/bin/qemu-aarch64
  [libc6-arm64-cross]=/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1
  [libstdc++6-arm64-cross]=/usr/aarch64-linux-gnu/lib/libstdc++.so.6
  [libgcc-s1-arm64-cross]=/usr/aarch64-linux-gnu/lib/libgcc_s.so.1
  [python3-paho-mqtt]=/usr/lib/python3/dist-packages/paho
  [python3-cryptography]=/usr/lib/python3/dist-packages/cryptography
  [prometheus]=/usr/bin/promtool
  [prometheus-node-exporter]=/usr/bin/prometheus-node-exporter
  [strace]=/usr/bin/strace
  [protobuf-compiler]=/usr/bin/protoc
  [rabbitmq-server]=/usr/lib/rabbitmq/lib/rabbitmq_server-3.10.8/sbin/rabbitmq-server
)

declare -A need=()
for pkg in "${!build[@]}"; do need[$pkg]=${build[$pkg]}; done
case "${1:-test}" in
  build) ;;
  test) for pkg in "${!tests[@]}"; do need[$pkg]=${tests[$pkg]}; done ;;
  *)
    echo "usage: install-deps.sh [build|test]" >&2
    exit 64
    ;;
esac

missing=()
for pkg in "${!need[@]}"; do
  [ -e "${need[$pkg]}" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "outpost: missing packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "outpost: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Packages that ship a service (rabbitmq-server, mosquitto) must not start it here: the tests start their own
# brokers on ports of their own. A policy-rc.d that refuses every start, for this install only.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  trap 'rm -f "$policy"' EXIT
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
