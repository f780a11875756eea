// The tile pipe of SPEC §2 on a GPU: a ring of shared-memory stages, each guarded by a
// *full* and an *empty* mbarrier (DESIGN.md's protocol table):
//   tpush = producer_acquire (wait on empty) + write the stage + producer_commit (arrive on full)
//   tpop  = consumer_wait (wait on full)
//   tfree = consumer_release (every consumer lane arrives on empty)
// Slot index and phase live in PipeState, which advances with ++; kernels never compute
// (i / stages) % 2 themselves. The producer starts at phase 1: a fresh barrier reports its
// "preceding phase" complete, so the first `stages` acquires pass at once (ring empty).
#pragma once

#include <cstdint>
#include <cstdio>

namespace mixpa::cuda {

struct PipeState {
  int index = 0;
  std::uint32_t phase = 0;
  int stages = 1;

  __device__ PipeState& operator++() {
    if (++index == stages) {
      index = 0;
      phase ^= 1u;
    }
    return *this;
  }
};

__device__ inline std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

__device__ inline void mbarrier_init(std::uint64_t* bar, std::uint32_t count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(smem_address(bar)), "r"(count) : "memory");
}

__device__ inline void mbarrier_arrive(std::uint64_t* bar) {
  asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.shared.b64 state, [%0];\n}" ::"r"(smem_address(bar)) : "memory");
}

// Arrives on `bar` once every cp.async this thread issued before has landed (the arrival
// counts towards the barrier's expected count: .noinc).
__device__ inline void mbarrier_arrive_on_cp_async(std::uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];" ::"r"(smem_address(bar)) : "memory");
}

__device__ inline bool mbarrier_test_parity(std::uint64_t* bar, std::uint32_t parity) {
  std::uint32_t done;
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
      : "=r"(done) : "r"(smem_address(bar)), "r"(parity) : "memory");
#else
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.test_wait.parity.shared.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
      : "=r"(done) : "r"(smem_address(bar)), "r"(parity) : "memory");
#endif
  return done != 0;
}

// A legitimate wait lasts microseconds (one stage of loads or math); one of 2^34 cycles
// (about 8 s) means the pipe protocol is broken. Then the kernel says which barrier and traps,
// so a deadlock becomes a launch error on the host instead of a hung process.
inline constexpr long long kPipeWatchdogCycles = 1ll << 34;

__device__ __noinline__ inline void pipe_watchdog_fire(const std::uint64_t* bar, std::uint32_t parity) {
  printf("mixpa cuda: pipe wait timed out (deadlock?): block %d thread %d barrier smem+%u parity %u\n", blockIdx.x,
         threadIdx.x, smem_address(bar), parity);
  __trap();
}

__device__ inline void mbarrier_wait_parity(std::uint64_t* bar, std::uint32_t parity) {
  if (mbarrier_test_parity(bar, parity)) return;
  const long long start = clock64();
  while (!mbarrier_test_parity(bar, parity))
    if (clock64() - start > kPipeWatchdogCycles) pipe_watchdog_fire(bar, parity);
}

// One ring: stages of stage_bytes each, the producer side filled by cp.async.
class SmemPipe {
 public:
  enum class Release { kEveryLane, kWarpElected };

  __device__ SmemPipe(std::uint64_t* full, std::uint64_t* empty, unsigned char* ring, int stage_bytes, int stages,
                      Release release = Release::kEveryLane)
      : full_(full), empty_(empty), ring_(ring), stage_bytes_(stage_bytes), stages_(stages), release_(release) {}

  // One thread, before any other use; then a __syncthreads() by the caller.
  // full: every producer lane arrives once per stage (through cp.async); empty: every lane of
  // every consumer warp arrives once per stage (Release::kEveryLane), or one lane per warp.
  __device__ void init(std::uint32_t producer_lanes, std::uint32_t consumer_warps) const {
    const std::uint32_t per_warp = release_ == Release::kEveryLane ? 32u : 1u;
    for (int s = 0; s < stages_; ++s) {
      mbarrier_init(&full_[s], producer_lanes);
      mbarrier_init(&empty_[s], consumer_warps * per_warp);
    }
  }

  __device__ PipeState producer_start_state() const { return {0, 1u, stages_}; }
  __device__ PipeState consumer_start_state() const { return {0, 0u, stages_}; }
  __device__ unsigned char* stage(const PipeState& s) const { return ring_ + static_cast<std::int64_t>(s.index) * stage_bytes_; }

  // TPUSH, producer side: wait for a free stage, (caller issues its cp.asyncs), publish.
  __device__ void producer_acquire(const PipeState& s) const { mbarrier_wait_parity(&empty_[s.index], s.phase); }
  __device__ void producer_commit(const PipeState& s) const { mbarrier_arrive_on_cp_async(&full_[s.index]); }
  // TPOP: wait until the stage's copies have landed.
  __device__ void consumer_wait(const PipeState& s) const { mbarrier_wait_parity(&full_[s.index], s.phase); }
  // TFREE: each lane's own arrival (release semantics) orders its reads of the stage before
  // the producer's refill, so the happens-before edge is direct for every reader. The
  // warp-elected form (__syncwarp, then lane 0 arrives) relies on __syncwarp's memory ordering
  // carrying the other lanes' reads to lane 0's arrival: valid in the PTX memory model, but
  // compute-sanitizer's racecheck does not follow that edge and reports every refill of the
  // ring as a read/write hazard (seen on an H200: 28 reports). The self-test keeps that form
  // to show racecheck flags it and passes the per-lane form.
  __device__ void consumer_release(const PipeState& s) const {
    if (release_ == Release::kEveryLane) {
      mbarrier_arrive(&empty_[s.index]);
    } else {
      __syncwarp();
      if ((threadIdx.x & 31) == 0) mbarrier_arrive(&empty_[s.index]);
    }
  }

 private:
  std::uint64_t* full_;
  std::uint64_t* empty_;
  unsigned char* ring_;
  int stage_bytes_;
  int stages_;
  Release release_;
};

// The seed's verbs, as the kernel's programs spell them.
__device__ inline unsigned char* tpush_begin(const SmemPipe& p, const PipeState& s) {
  p.producer_acquire(s);
  return p.stage(s);
}
__device__ inline void tpush_end(const SmemPipe& p, PipeState& s) {
  p.producer_commit(s);
  ++s;
}
__device__ inline const unsigned char* tpop(const SmemPipe& p, const PipeState& s) {
  p.consumer_wait(s);
  return p.stage(s);
}
__device__ inline void tfree(const SmemPipe& p, PipeState& s) {
  p.consumer_release(s);
  ++s;
}

}  // namespace mixpa::cuda
