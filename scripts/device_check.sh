#!/usr/bin/env bash
# The one GPU check of executor "cuda", for a session that is lent a device machine (H100/H200).
# Prepare here with scripts/device_bundle.sh, then ONE call of the device tool:
#   run(command="bash scripts/device_check.sh", carry=[".device"], timeout_s=480)
# The whole script keeps to DEADLINE_S (default 420 s = 7 minutes): every step's time box is
# cut to what is left, a step with under 15 s left is skipped (and says so). Each step's
# outcome goes to $OUT/summary.txt the moment it ends, logs to $OUT/*.log, so a run cut short
# still reports. Steps, most important first:
#   0 gpu       nvidia-smi, nvcc, ncu, compute-sanitizer presence
#   1 build     Release, sm_90a, only test_cuda / mixpa_cuda_bench / mixpa; falls back to
#               .device/prebuilt if the build fails (MIXPA_PREBUILT=1 skips it)
#   2 selftest  the pipe protocol alone (mbarrier ring), before any attention math
#   3 test      test_cuda with MIXPA_REQUIRE_GPU=1 (a skip is a failure): coverage shapes,
#               variants, SPEC §6 dtypes/shapes (CudaServing: f16, fp8, q_len, head_dims, block
#               sizes, int64), device API, graph replay; each prints its max error vs exact f64
#   4 bench     mixpa_cuda_bench --verify (max error vs exact per case), L2 flushed before
#               every timed launch, stream read with 4 loads in flight per thread, + peers
#   5 origin    test_cuda's Slow origin cases (max error vs exact f64 each)
#   6 ncu       one pass on Case1: scheduler + memory sections (if ncu exists)
#   7 sanitize  compute-sanitizer memcheck, racecheck on small cases
#   8 cli       mixpa run --case SmallCase1 --executor cuda
# Never reports ok without a GPU: step 0 fails the run when nvidia-smi sees no device, and the
# tests run with MIXPA_REQUIRE_GPU=1. Paths are relative to the repository root.
set -u
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/mixpa_device_out}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
DEADLINE_S=${DEADLINE_S:-420}
JOBS=${JOBS:-16}
T0=$(date +%s)
FAILED=0
note() { echo "== $1"; echo "$1" >>"$OUT/summary.txt"; }
elapsed() { echo $(( $(date +%s) - T0 )); }
step() {  # step NAME LOG BOX_S CMD...   (the box is cut to the time left)
  local name=$1 log=$2 box=$3; shift 3
  local left=$(( DEADLINE_S - $(elapsed) ))
  if [ "$left" -lt 15 ]; then note "$name: SKIPPED (only ${left}s of the ${DEADLINE_S}s budget left)"; FAILED=1; return 1; fi
  [ "$box" -gt "$left" ] && box=$left
  local s=$(date +%s)
  echo "== [$(elapsed)s] $name: $*" >>"$OUT/$log"
  timeout --kill-after=5 "$box" "$@" >>"$OUT/$log" 2>&1
  local rc=$?
  local status=ok
  [ $rc -eq 124 ] && status="TIMEOUT(${box}s)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="FAILED(rc=$rc)"
  [ $rc -ne 0 ] && FAILED=1
  note "$name: $status in $(( $(date +%s) - s ))s (log $log)"
  return $rc
}

# ---- 0: the machine -------------------------------------------------------------------------
export PATH=$PATH:/usr/local/cuda/bin
{
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,memory.total --format=csv
  command -v nvcc && nvcc --version | tail -2
  command -v ncu || echo "no ncu"
  command -v compute-sanitizer || echo "no compute-sanitizer"
  cmake --version | head -1; python3 --version
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tail -1
} >"$OUT/build.log" 2>&1
# MIXPA_DEVICE_CHECK_NO_GPU_GATE=1 walks the steps without a GPU (a dry run of the script's
# logic on the dev machine: with MIXPA_REQUIRE_GPU=1 the tests then fail, as they must).
if [ "${MIXPA_DEVICE_CHECK_NO_GPU_GATE:-0}" = 1 ]; then
  note "gpu: gate skipped (MIXPA_DEVICE_CHECK_NO_GPU_GATE=1: dry run)"
elif ! nvidia-smi -L >>"$OUT/build.log" 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  note "gpu: FAILED: nvidia-smi finds no GPU on this machine: nothing here can be verified"
  echo "device_check.sh: FAILED (no GPU)" | tee -a "$OUT/summary.txt"
  exit 1
else
  note "gpu: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
fi
[ -d .device ] || note "no .device/ here: run scripts/device_bundle.sh on the dev machine and carry .device"

# ---- 1: build -------------------------------------------------------------------------------
PREFIX=""
if [ -d .device/googletest ] && [ "${MIXPA_PREBUILT:-0}" != 1 ]; then
  step "gtest build" build.log 60 bash -c "cmake -S .device/googletest -B .device/gtest-build -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX=$PWD/.device/prefix -DBUILD_GMOCK=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON >/dev/null && \
    cmake --build .device/gtest-build -j$JOBS >/dev/null && cmake --install .device/gtest-build >/dev/null"
fi
[ -d .device/prefix ] && PREFIX="-DCMAKE_PREFIX_PATH=$PWD/.device/prefix"
GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
BIN=build-device
if [ "${MIXPA_PREBUILT:-0}" != 1 ] && step "configure" build.log 40 cmake -S . -B $BIN $GEN -DCMAKE_BUILD_TYPE=Release -DMIXPA_CUDA=ON \
     -DCMAKE_CUDA_ARCHITECTURES=90a -DMIXPA_BUILD_PYTHON=OFF $PREFIX \
   && step "build" build.log 170 cmake --build $BIN -j"$JOBS" --target test_cuda mixpa_cuda_bench mixpa; then
  TEST=$BIN/tests/test_cuda; BENCH=$BIN/bench/cuda/mixpa_cuda_bench; CLI=$BIN/mixpa
else
  note "build skipped or failed: using .device/prebuilt binaries (built on the dev machine)"
  TEST=.device/prebuilt/test_cuda; BENCH=.device/prebuilt/mixpa_cuda_bench; CLI=.device/prebuilt/mixpa
fi
[ -x "$TEST" ] || note "no test binary at $TEST"
PEER_SCRIPT=bench/cuda/peer_torch_cuda.py  # relative to the repository root, in both cases
if command -v cuobjdump >/dev/null && [ -f $BIN/src/cuda/libmixpa_cuda_kernels.a ]; then
  cuobjdump --dump-resource-usage $BIN/src/cuda/libmixpa_cuda_kernels.a >>"$OUT/build.log" 2>&1 || true
fi
export MIXPA_REQUIRE_GPU=1

# ---- 2-3: correctness -----------------------------------------------------------------------
step "pipe self-test (isolates the mbarrier protocol)" test.log 40 "$TEST" --gtest_filter=CudaDeviceApi.PipeProtocolSelfTest
step "test_cuda (fast, MIXPA_REQUIRE_GPU=1)" test.log 90 "$TEST" --gtest_filter='-*Slow*' --gtest_brief=1

# ---- 4: bench -------------------------------------------------------------------------------
step "bench (--verify, L2 flushed, sweep, + peers)" bench.log 130 env PYTHONUNBUFFERED=1 "$BENCH" --cases Case1,Case2,SmallCase1,Decode32k \
  --reps 20 --verify --window-left 4095 --sweep --peer-script "$PEER_SCRIPT" --peer-dir /tmp/mixpa_peer

# ---- 5: origin cases ------------------------------------------------------------------------
step "test_cuda (Slow: origin cases)" test.log 60 "$TEST" --gtest_filter='*Slow*'

# ---- 6: one ncu pass on Case1 ---------------------------------------------------------------
if command -v ncu >/dev/null; then
  step "ncu Case1 (scheduler + memory)" ncu.log 60 ncu --target-processes all -k regex:paged_attention_kernel --launch-skip 1 \
    --launch-count 1 --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    --section SpeedOfLight "$BENCH" --cases Case1 --reps 5 --no-peer --stream-gib 0.25
else
  note "ncu not found: profile skipped"
fi

# ---- 7: compute-sanitizer on small cases ----------------------------------------------------
SMALL='CudaDeviceApi.PipeProtocolSelfTest:Shapes/CudaCoverage.AgreesWithExact/lens_edge_bs16:Shapes/CudaCoverage.AgreesWithExact/q64:Shapes/CudaCoverage.AgreesWithExact/split_hd64_bs16:CudaDeviceApi.DeviceSidePageIdCheckRaisesAnError:Serving/CudaServing.AgreesWithExact/e4m3_q64:Serving/CudaServing.AgreesWithExact/qlen16_gqa32_8:Serving/CudaServing.AgreesWithExact/mix_qlen4_e4m3'
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool" sanitizer.log 40 env MIXPA_PIPE_SELFTEST_ROUNDS=20 compute-sanitizer --tool $tool --error-exitcode 3 \
      "$TEST" --gtest_filter="$SMALL"
  done
  # The control: the warp-elected TFREE (one arrival per warp after __syncwarp) is a form
  # racecheck cannot follow; it must report hazards there (exit 3), else the step above proves
  # nothing about the kernels' per-lane form.
  step "compute-sanitizer racecheck control (warp-elected TFREE must be flagged)" sanitizer.log 40 bash -c \
    "MIXPA_PIPE_SELFTEST_ROUNDS=20 MIXPA_PIPE_SELFTEST_RELEASE=warp compute-sanitizer --tool racecheck --error-exitcode 3 \
     $TEST --gtest_filter=CudaDeviceApi.PipeProtocolSelfTest; [ \$? -eq 3 ]"
else
  note "compute-sanitizer not found: sanitizer checks skipped"
fi

# ---- 8: the CLI -----------------------------------------------------------------------------
step "mixpa run SmallCase1 --executor cuda" test.log 30 "$CLI" run --case SmallCase1 --executor cuda

# ---- summary --------------------------------------------------------------------------------
{
  echo "device_check.sh finished in $(elapsed)s of ${DEADLINE_S}s"
  echo "--- accuracy (max abs error vs exact float64) ---"; grep -hE "cuda accuracy|verify:" "$OUT/test.log" "$OUT/bench.log" 2>/dev/null
  echo "--- test failures ---"; grep -E "^\[  FAILED  \]|Failure" "$OUT/test.log" | head -40
  echo "--- sanitizer findings ---"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Hazard" "$OUT/sanitizer.log" 2>/dev/null | head -20
  echo "--- bench ---"; grep -vE "^==|verify:" "$OUT/bench.log" 2>/dev/null
  [ $FAILED -eq 0 ] && echo "device_check.sh: ok" || echo "device_check.sh: FAILED (see above)"
} >>"$OUT/summary.txt"
cat "$OUT/summary.txt"
exit $FAILED
