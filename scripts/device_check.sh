#!/usr/bin/env bash
# The one GPU check of executor "cuda", for a session with a device machine (H100/H200).
# Prepare here with scripts/device_bundle.sh, then call the device tool once:
#   run(command="bash scripts/device_check.sh", carry=[".device"], timeout_s=540)
# Steps (each time-boxed, each logged to $OUT; a failure never stops the later steps):
#   0 gpu      nvidia-smi, nvcc, compute-sanitizer presence
#   1 build    Release, CUDA for sm_90a, only test_cuda / mixpa_cuda_bench / mixpa (-j16);
#              falls back to .device/prebuilt binaries if the build fails
#   2 test     test_cuda without the Slow origin cases, then the Slow ones
#   3 cli      mixpa run --case SmallCase1 --executor cuda (verify against exact)
#   4 bench    mixpa_cuda_bench on Case1, Case2, SmallCase1, Decode32k (+ --sweep) with the GPU peers
#   5 sanitize compute-sanitizer memcheck + racecheck (+ synccheck) on small cases
# MIXPA_PREBUILT=1 skips the build and uses .device/prebuilt (a quick rerun).
# Total target: under 8 minutes. At most 8 files come back: the logs below + summary.txt.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mixpa_device_out}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
[ -d .device ] || echo "no .device/ here: run scripts/device_bundle.sh on the dev machine and carry .device" | tee -a "$OUT/summary.txt"
JOBS=${JOBS:-16}
T0=$(date +%s)
declare -a SUMMARY=()
note() { SUMMARY+=("$1"); echo "== $1"; echo "$1" >>"$OUT/summary.txt"; }  # survives a kill
elapsed() { echo $(( $(date +%s) - T0 )); }
step() {  # step NAME LOG TIMEOUT_S CMD...
  local name=$1 log=$2 limit=$3; shift 3
  local s=$(date +%s)
  echo "== [$(elapsed)s] $name: $*" | tee -a "$OUT/$log"
  timeout --kill-after=10 "$limit" "$@" >>"$OUT/$log" 2>&1
  local rc=$?
  local status=ok
  [ $rc -eq 124 ] && status="TIMEOUT(${limit}s)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="FAILED(rc=$rc)"
  note "$name: $status in $(( $(date +%s) - s ))s (log $log)"
  return $rc
}

# ---- 0: the machine -------------------------------------------------------------------------
{
  nvidia-smi || true
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,memory.total --format=csv || true
  command -v nvcc && nvcc --version | tail -2
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo "no compute-sanitizer"
  cmake --version | head -1; (g++ --version || true) | head -1; python3 --version
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tail -1
} >"$OUT/build.log" 2>&1
export PATH=$PATH:/usr/local/cuda/bin

# ---- 1: build -------------------------------------------------------------------------------
PREFIX=""
if [ -d .device/googletest ]; then
  step "gtest build" build.log 120 bash -c "cmake -S .device/googletest -B .device/gtest-build -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX=$PWD/.device/prefix -DBUILD_GMOCK=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON >/dev/null && \
    cmake --build .device/gtest-build -j$JOBS && cmake --install .device/gtest-build >/dev/null"
  PREFIX="-DCMAKE_PREFIX_PATH=$PWD/.device/prefix"
fi
GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
BIN=build-device
if [ "${MIXPA_PREBUILT:-0}" != 1 ] && step "configure" build.log 120 cmake -S . -B build-device $GEN -DCMAKE_BUILD_TYPE=Release -DMIXPA_CUDA=ON \
     -DCMAKE_CUDA_ARCHITECTURES=90a -DMIXPA_BUILD_PYTHON=OFF $PREFIX \
   && step "build" build.log 240 cmake --build build-device -j"$JOBS" --target test_cuda mixpa_cuda_bench mixpa; then
  TEST=$BIN/tests/test_cuda; BENCH=$BIN/bench/cuda/mixpa_cuda_bench; CLI=$BIN/mixpa
else
  note "build skipped or failed: using .device/prebuilt binaries (built on the dev machine)"
  TEST=.device/prebuilt/test_cuda; BENCH=.device/prebuilt/mixpa_cuda_bench; CLI=.device/prebuilt/mixpa
fi
[ -x "$TEST" ] || note "no test binary at $TEST"
# Registers / shared memory / spills per instantiation, as ptxas reports them on this build.
if command -v cuobjdump >/dev/null && [ -f $BIN/src/cuda/libmixpa_cuda_kernels.a ]; then
  cuobjdump --dump-resource-usage $BIN/src/cuda/libmixpa_cuda_kernels.a >>"$OUT/build.log" 2>&1 || true
fi

# ---- 2: tests -------------------------------------------------------------------------------
step "pipe self-test (first: isolates the mbarrier protocol)" test.log 60 "$TEST" --gtest_filter=CudaDeviceApi.PipeProtocolSelfTest
step "test_cuda (fast)" test.log 180 "$TEST" --gtest_filter='-*Slow*' --gtest_brief=1
step "test_cuda (Slow: origin cases)" test.log 150 "$TEST" --gtest_filter='*Slow*'

# ---- 3: the CLI -----------------------------------------------------------------------------
step "mixpa run SmallCase1 --executor cuda" test.log 120 "$CLI" run --case SmallCase1 --executor cuda

# ---- 4: bench -------------------------------------------------------------------------------
step "bench" bench.log 200 env PYTHONUNBUFFERED=1 "$BENCH" --cases Case1,Case2,SmallCase1,Decode32k --reps 30 --sweep \
  --peer-dir /tmp/mixpa_peer

# ---- 5: compute-sanitizer on small cases ----------------------------------------------------
SMALL='CudaDeviceApi.PipeProtocolSelfTest:Shapes/CudaCoverage.AgreesWithExact/lens_edge_bs16:Shapes/CudaCoverage.AgreesWithExact/q64:Shapes/CudaCoverage.AgreesWithExact/split_hd64_bs16:Shapes/CudaCoverage.AgreesWithExact/hd256:CudaDeviceApi.DeviceSidePageIdCheckRaisesAnError'
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck synccheck; do
    step "compute-sanitizer $tool" sanitizer.log 90 env MIXPA_PIPE_SELFTEST_ROUNDS=40 compute-sanitizer --tool $tool --error-exitcode 3 \
      "$TEST" --gtest_filter="$SMALL"
  done
else
  note "compute-sanitizer not found: sanitizer checks skipped"
fi

# ---- summary --------------------------------------------------------------------------------
{
  echo "device_check.sh finished in $(elapsed)s"
  echo "--- test failures ---"; grep -E "^\[  FAILED  \]|Failure|error" "$OUT/test.log" | head -40
  echo "--- sanitizer findings ---"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Hazard" "$OUT/sanitizer.log" 2>/dev/null | head -20
  echo "--- bench ---"; grep -vE "^==" "$OUT/bench.log" 2>/dev/null
} | tee -a "$OUT/summary.txt"
