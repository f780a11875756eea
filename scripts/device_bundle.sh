#!/usr/bin/env bash
# Run HERE (the Debian dev machine) before calling the device tool: packs what the device
# machine lacks into .device/ (git-ignored), which the device call must carry:
#   run(command="bash scripts/device_check.sh", carry=[".device"], timeout_s=480)
# The device image has nvcc, CMake, ninja, python3 + torch, but no GoogleTest, CLI11 or
# nlohmann-json, and no network. We bring their headers / CMake configs, GoogleTest's source
# (built there in ~20 s), and prebuilt test/bench binaries as a fallback should the build
# there fail (Debian 12 binaries: glibc 2.36, static cudart; expected to run on newer images).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .device && mkdir -p .device/prefix/include .device/prefix/share/cmake
cp -r /usr/include/nlohmann .device/prefix/include/
cp -r /usr/share/cmake/nlohmann_json .device/prefix/share/cmake/
if [ -d /usr/include/CLI ]; then
  cp -r /usr/include/CLI .device/prefix/include/
  cp -r /usr/share/cmake/CLI11 .device/prefix/share/cmake/
fi
cp -r /usr/src/googletest .device/googletest
if [ "${MIXPA_BUNDLE_PREBUILT:-1}" = 1 ]; then
  cmake -S . -B build-device-prebuilt -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DMIXPA_CUDA=ON -DMIXPA_BUILD_PYTHON=OFF >/dev/null
  nice -n 19 cmake --build build-device-prebuilt -j"$(nproc)" --target test_cuda mixpa_cuda_bench mixpa
  mkdir -p .device/prebuilt
  cp build-device-prebuilt/tests/test_cuda build-device-prebuilt/bench/cuda/mixpa_cuda_bench build-device-prebuilt/mixpa \
    .device/prebuilt/
  strip .device/prebuilt/* || true
fi
du -sh .device
echo "now: run(command=\"bash scripts/device_check.sh\", carry=[\".device\"], timeout_s=480)"
