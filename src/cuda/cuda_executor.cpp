// Executor "cuda", host side: device discovery, the plan/run object, and the host-data entry.
#include "cuda/cuda_executor.h"

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/kernel_launch.h"
#include "mixpa/error.h"

namespace mixpa::cuda {
namespace {

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }
// cp.async copies 16-byte pieces: every stride a multiple of 16 bytes.
bool strides_ok(const CacheStrides& s, std::int64_t elem_bytes) {
  const std::int64_t e = 16 / elem_bytes;
  return s.page % e == 0 && s.row % e == 0 && s.head % e == 0;
}

// Elements a cache view spans from its first element (strides are >= 0, validated).
std::int64_t cache_span(const Shape& sh, const CacheStrides& s) {
  return (sh.num_blocks - 1) * s.page + (sh.block_size - 1) * s.row + (sh.num_kv_heads - 1) * s.head + sh.head_dim;
}

class Stream {
 public:
  Stream() { check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
 private:
  cudaStream_t s_ = nullptr;
};

// Uploads a cache (elements of elem_bytes) as is when cp.async can read it in place, else
// repacked contiguous.
DeviceBuffer upload_cache(const Shape& sh, const void* host_data, std::size_t elem_bytes, const CacheStrides& s,
                          CacheStrides& device_strides) {
  const auto* host = static_cast<const unsigned char*>(host_data);
  const auto eb = static_cast<std::int64_t>(elem_bytes);
  if (strides_ok(s, eb)) {
    const std::int64_t span = cache_span(sh, s);
    DeviceBuffer d(static_cast<std::size_t>(span * eb));
    d.upload(host, static_cast<std::size_t>(span * eb));
    device_strides = s;
    return d;
  }
  device_strides = {sh.block_size * sh.num_kv_heads * sh.head_dim, sh.num_kv_heads * sh.head_dim, sh.head_dim};
  std::vector<unsigned char> packed(static_cast<std::size_t>(sh.num_blocks * device_strides.page * eb));
  for (std::int64_t p = 0; p < sh.num_blocks; ++p)
    for (std::int64_t r = 0; r < sh.block_size; ++r)
      for (std::int64_t h = 0; h < sh.num_kv_heads; ++h)
        std::copy_n(host + (p * s.page + r * s.row + h * s.head) * eb, sh.head_dim * eb,
                    packed.begin() + (p * device_strides.page + r * device_strides.row + h * device_strides.head) * eb);
  DeviceBuffer d(packed.size());
  d.upload(packed.data(), packed.size());
  return d;
}

}  // namespace

void check(cudaError_t e, const char* call) {
  if (e != cudaSuccess) throw Error(std::string("cuda: ") + call + ": " + cudaGetErrorString(e));
}

bool device_available() {
  static const bool available = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
      cudaGetLastError();  // clear the non-sticky error so later calls start clean
      return false;
    }
    if (kernel_image_check() != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return true;
  }();
  return available;
}

DeviceLimits current_device_limits() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  DeviceLimits l;
  check(cudaDeviceGetAttribute(&l.sm_count, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute(SM count)");
  check(cudaDeviceGetAttribute(&l.max_smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
        "cudaDeviceGetAttribute(shared memory per block)");
  return l;
}

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  if (bytes > 0) check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
}
DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_, bytes_ = o.bytes_;
    o.ptr_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}
void DeviceBuffer::upload(const void* host, std::size_t bytes) {
  if (bytes > 0) check(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy(host to device)");
}
void DeviceBuffer::zero() {
  // A synchronous copy of zeros, not cudaMemset (asynchronous, on the legacy stream, which a
  // non-blocking run stream does not wait for).
  if (bytes_ > 0) {
    const std::vector<unsigned char> zeros(bytes_, 0);
    upload(zeros.data(), bytes_);
  }
}

DevicePlan::DevicePlan(const Plan& plan, IndexView host_context_lens, const WorkPlanOptions& options,
                       const Variant& variant, KernelTypes types, float k_scale, float v_scale)
    : plan_(plan),
      softcap_(variant.softcap),
      k_scale_(k_scale),
      v_scale_(v_scale),
      work_(plan_work(plan, host_context_lens, current_device_limits(), options, variant.window_left, types)) {
  check(prepare_kernel(work_.geometry.head_dim, work_.geometry.row_frags, work_.dtype, work_.smem_bytes),
        "cudaFuncSetAttribute");
  items_ = DeviceBuffer(work_.items.size() * sizeof(WorkItem));
  items_.upload(work_.items.data(), work_.items.size() * sizeof(WorkItem));
  merges_ = DeviceBuffer(work_.merges.size() * sizeof(MergeItem));
  merges_.upload(work_.merges.data(), work_.merges.size() * sizeof(MergeItem));
  counters_ = DeviceBuffer(work_.merges.size() * sizeof(unsigned int));
  counters_.zero();  // the kernel's merger resets each counter after its merge
  const std::size_t rows = static_cast<std::size_t>(work_.num_partials) * work_.q_tile;
  part_o_ = DeviceBuffer(rows * work_.geometry.head_dim * sizeof(float));  // the kernel's head_dim
  part_m_ = DeviceBuffer(rows * sizeof(float));
  part_l_ = DeviceBuffer(rows * sizeof(float));
  error_flag_ = DeviceBuffer(sizeof(int));
  error_flag_.zero();
}

void DevicePlan::run(const DeviceTensors& t, float* out, cudaStream_t stream, float* lse) const {
  if (!aligned16(t.query) || !aligned16(t.key_cache) || !aligned16(t.value_cache) || !aligned16(out))
    throw Error("cuda: query, key_cache, value_cache and out must be 16-byte aligned device pointers");
  const std::int64_t eb = kv_elem_bytes(work_.dtype);
  if (!strides_ok(t.k_strides, eb) || !strides_ok(t.v_strides, eb))
    throw Error("cuda: key_cache / value_cache strides must be multiples of 16 bytes (" + std::to_string(16 / eb) +
                " elements)");
  if (!t.block_table && !t.block_table64) throw Error("cuda: block_table: no device pointer");
  KernelParams p = kernel_params(plan_, work_, softcap_, k_scale_, v_scale_);
  p.query = static_cast<const std::uint16_t*>(t.query);
  p.key_cache = t.key_cache;
  p.value_cache = t.value_cache;
  p.k_page = t.k_strides.page, p.k_row = t.k_strides.row, p.k_head = t.k_strides.head;
  p.v_page = t.v_strides.page, p.v_row = t.v_strides.row, p.v_head = t.v_strides.head;
  p.block_table = t.block_table64 ? nullptr : t.block_table;
  p.block_table64 = t.block_table64;
  p.alibi_slopes = t.alibi_slopes;
  p.sinks = t.sinks;
  p.items = items_.as<WorkItem>();
  p.merges = merges_.as<MergeItem>();
  p.merge_counters = counters_.as<unsigned int>();
  p.out = out;
  p.lse = lse;
  p.part_o = part_o_.as<float>();
  p.part_m = part_m_.as<float>();
  p.part_l = part_l_.as<float>();
  p.error_flag = error_flag_.as<int>();
  check(launch_paged_attention(p, work_.geometry.head_dim, work_.geometry.row_frags, work_.dtype, work_.grid,
                               work_.smem_bytes, stream),
        "kernel launch");
}

int DevicePlan::read_error_flags(cudaStream_t stream) const {
  int flag = 0;
  check(cudaMemcpyAsync(&flag, error_flag_.as<int>(), sizeof(int), cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync(error flag)");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (kernel)");
  if (flag != 0) {
    check(cudaMemsetAsync(error_flag_.as<int>(), 0, sizeof(int), stream), "cudaMemsetAsync(error flag)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (error flag)");
  }
  return flag;
}

void DevicePlan::check_errors(cudaStream_t stream) const {
  const int flag = read_error_flags(stream);
  if (flag & kErrorPageOutOfRange)
    throw Error("block_table: a page id among the pages a request uses is outside [0, " +
                std::to_string(plan_.shape.num_blocks) + ") (found on the device; the output is not valid)");
  if (flag != 0) throw Error("cuda: the kernel raised error flag " + std::to_string(flag));
}

}  // namespace mixpa::cuda

namespace mixpa {

bool cuda_available() { return cuda::device_available(); }

std::string cuda_unsupported(const Problem& pr) {
  if (const std::string why = cuda::unsupported_types(pr.query_dtype, pr.kv_dtype); !why.empty()) return why;
  const std::int64_t hd = pr.shape.head_dim;
  if (hd < 16 || hd > 256 || hd % 16 != 0) return "head_dim " + std::to_string(hd);
  return {};
}

void run_cuda(const Problem& pr, const Plan& plan, const Options& options, const Results& res) {
  using namespace cuda;
  if (!device_available()) throw Error("cuda: no CUDA device with a kernel image for this build is available");
  const Shape& sh = pr.shape;
  const std::size_t out_elements = static_cast<std::size_t>(sh.num_rows() * sh.head_dim);
  if (out_elements == 0) return;
  const KernelTypes types{pr.query_dtype, pr.kv_dtype};
  DevicePlan pa(plan, pr.context_lens, {}, pr.variant, types, pr.k_scale, pr.v_scale);
  if (options.report) {
    std::ostringstream s;
    s << "cuda: " << pa.work().items.size() << " work items (" << pa.work().merges.size() << " split blocks), grid "
      << pa.work().grid << ", " << pa.work().stages << " stages, " << pa.work().smem_bytes << " B shared memory";
    options.report(s.str());
  }
  DeviceTensors t;
  DeviceBuffer q(out_elements * dtype_size(pr.query_dtype));
  q.upload(pr.query_data, q.bytes());
  const std::size_t eb = dtype_size(pr.kv_dtype);
  const DeviceBuffer k = upload_cache(sh, pr.key_data, eb, pr.k_strides, t.k_strides);
  const DeviceBuffer v = upload_cache(sh, pr.value_data, eb, pr.v_strides, t.v_strides);
  // The table goes to the device in its own width (int64 read in place by the kernel).
  const std::size_t table_elems = static_cast<std::size_t>(sh.batch * sh.max_blocks_per_req);
  DeviceBuffer table(table_elems * (pr.block_table.wide ? sizeof(std::int64_t) : sizeof(std::int32_t)));
  table.upload(pr.block_table.data, table.bytes());
  const std::size_t head_bytes = static_cast<std::size_t>(sh.num_heads) * sizeof(float);
  DeviceBuffer slopes(pr.variant.has_alibi() ? head_bytes : 0), sinks(pr.variant.has_sinks() ? head_bytes : 0);
  if (pr.variant.has_alibi()) slopes.upload(pr.variant.alibi_slopes, head_bytes);
  if (pr.variant.has_sinks()) sinks.upload(pr.variant.sinks, head_bytes);
  const std::size_t rows = static_cast<std::size_t>(sh.num_rows());
  DeviceBuffer d_out(out_elements * sizeof(float)), d_lse(res.lse ? rows * sizeof(float) : 0);
  t.query = q.as<void>();
  t.key_cache = k.as<void>();
  t.value_cache = v.as<void>();
  if (pr.block_table.wide) t.block_table64 = table.as<std::int64_t>();
  else t.block_table = table.as<std::int32_t>();
  t.alibi_slopes = slopes.as<float>();
  t.sinks = sinks.as<float>();
  Stream stream;
  pa.run(t, d_out.as<float>(), stream.get(), res.lse ? d_lse.as<float>() : nullptr);
  pa.check_errors(stream.get());
  check(cudaMemcpy(res.out, d_out.as<float>(), out_elements * sizeof(float), cudaMemcpyDeviceToHost),
        "cudaMemcpy(device to host)");
  if (res.lse)
    check(cudaMemcpy(res.lse, d_lse.as<float>(), rows * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy(lse)");
}

}  // namespace mixpa
