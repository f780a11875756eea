#!/usr/bin/env bash
# Installs what mixpa's build and tests need on Debian 12 (run as root): compilers, CMake,
# GoogleTest, Google Benchmark, CLI11, nlohmann-json, clang for the fuzzer, and the Python
# packages the extension build and its tests use. torch is optional (its tests skip without it).
set -euo pipefail
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then exec sudo -E bash "$0" "$@"; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  cmake g++ make clang libclang-rt-14-dev \
  libgtest-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev libsimde-dev \
  python3 python3-pip >/dev/null
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  numpy ml_dtypes pytest scikit-build-core nanobind
