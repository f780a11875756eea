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

echo "== install + downstream consumer (examples/cmake_consumer, C++17): CMake package and pkg-config =="
prefix=$PWD/build-install/prefix
rm -rf build-install && cmake --install build --prefix "$prefix" >/dev/null
cmake -S examples/cmake_consumer -B build-install/consumer -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CXX_STANDARD=17 \
  -DCMAKE_BUILD_TYPE=Release | grep 'mixpa '
cmake --build build-install/consumer -j"$jobs" >/dev/null
./build-install/consumer/consumer
pc_dir=$(dirname "$(find "$prefix" -name mixpa.pc)")
pc_flags=$(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs mixpa)
echo "pkg-config --cflags --libs mixpa: $pc_flags"
# shellcheck disable=SC2086  # the flags are words
c++ -std=c++17 -O2 -o build-install/consumer_pc examples/cmake_consumer/main.cpp $pc_flags
./build-install/consumer_pc | tail -n 1
"$prefix/bin/mixpa" --version

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

echo "== python: pip install . into the venv + pytest tests/python =="
# The venv (.venv, or $MIXPA_VENV) holds numpy ml_dtypes pytest scikit-build-core nanobind; .ci/deps.sh
# made it (scripts/venv.sh). torch is optional: its tests skip without it, and -rs prints why.
venv=${MIXPA_VENV:-.venv}
[ -x "$venv/bin/python" ] || bash scripts/venv.sh
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation .
MIXPA_CLI=$PWD/build/mixpa "$venv/bin/python" -m pytest tests/python -q -rs

echo "== wheel: pip wheel . -> auditwheel -> fresh venv -> the README's Python snippet outside the tree =="
bash scripts/wheel_smoke.sh
