#!/usr/bin/env bash
# Builds and runs every test: the README's test command, and what .ci/run runs.
# Sections are owned by the areas they name; each stays well inside CI's time budget on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${MIXPA_JOBS:-$(nproc)}

echo "== release build + all C++ tests =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build -j"$jobs" --output-on-failure

echo "== ASan + UBSan build, every fast test (names without 'Slow') =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMIXPA_SANITIZE=address,undefined -DMIXPA_CUDA=OFF \
  -DMIXPA_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -j"$jobs" -E Slow --output-on-failure

echo "== libFuzzer: safetensors reader + case file + validation + reference, time-boxed =="
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIXPA_FUZZ=ON -DMIXPA_CUDA=OFF \
  -DMIXPA_BUILD_BENCH=OFF -DMIXPA_BUILD_CLI=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_case_file make_seeds
rm -rf build-fuzz/corpus && mkdir -p build-fuzz/corpus
./build-fuzz/tests/fuzz/make_seeds build-fuzz/corpus
./build-fuzz/tests/fuzz/fuzz_case_file -max_total_time="${MIXPA_FUZZ_SECONDS:-60}" -max_len=65536 \
  -rss_limit_mb=2048 -print_final_stats=1 build-fuzz/corpus 2>&1 | tail -n 3

# (sections added by each area below)

echo "== ThreadSanitizer: cpu thread pool / split-KV, tile pipes, MIX launcher, sim =="
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIXPA_SANITIZE=thread -DMIXPA_CUDA=OFF \
  -DMIXPA_BUILD_BENCH=OFF >/dev/null
cmake --build build-tsan -j"$jobs" --target test_cpu test_pipe test_sim
./build-tsan/tests/test_cpu --gtest_filter='*Bitwise*:*CpuExecutor*:*SplitKv*'
./build-tsan/tests/test_pipe
./build-tsan/tests/test_sim --gtest_filter='-*Slow*'

echo "== python: pip install . + pytest tests/python =="
# CI needs: numpy ml_dtypes pytest scikit-build-core nanobind (torch optional: its tests skip without it).
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore numpy ml_dtypes pytest scikit-build-core nanobind
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-build-isolation .
python3 -m pytest tests/python -q
