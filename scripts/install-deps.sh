#!/usr/bin/env bash
# Installs the Debian 12 packages asyncd needs to build, test and run.
# Idempotent: when everything is present it installs nothing and touches no
# package index. Works as root, or as a user with sudo.
set -euo pipefail

packages=(
  build-essential cmake pkg-config ninja-build
  liburing-dev libboost-dev libspdlog-dev libfmt-dev libabsl-dev
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev
  libsystemd-dev libtomlplusplus-dev help2man
  zlib1g-dev  # CRC-32 of checkpoints (protobuf depends on it already)
)
# Test-only tools: the Python interop client, fio for the comparison bench,
# openssl for TLS test certificates; for the real-systemd test, cpack's DEB
# generator (dpkg-shlibdeps from dpkg-dev, which runs file) and debootstrap +
# nspawn; lintian for the package test; clang for libFuzzer. (help2man,
# above: the build makes the man pages with it.)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(python3 python3-grpcio python3-protobuf protobuf-compiler-grpc fio clang openssl
             file dpkg-dev debootstrap systemd-container lintian
             libclang-rt-14-dev systemd)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo_cmd=()
if ((EUID != 0)); then
  sudo_cmd=(sudo)
fi
echo "install-deps: installing ${missing[*]}" >&2
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
  "${missing[@]}"
