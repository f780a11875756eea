// The public device-resident API (include/mixpa/cuda.h) over cuda::DevicePlan. Built in every
// configuration: without the cuda executor it reports unavailable and throws.
#include "mixpa/cuda.h"

#include <string>

#include "core/plan.h"
#include "core/validate.h"
#include "mixpa/error.h"

#ifdef MIXPA_HAVE_CUDA
#include "cuda/cuda_executor.h"
#endif

namespace mixpa::cuda {

#ifdef MIXPA_HAVE_CUDA
namespace {

// An optional f32 [num_heads] device vector: shape checked, values not (they are on the device).
const float* device_head_vector(const TensorView& t, const char* name, std::int64_t num_heads) {
  if (!t.present()) return nullptr;
  if (t.dtype != DType::kF32 || t.rank != 1 || t.shape[0] != num_heads || !t.is_contiguous())
    throw Error(std::string(name) + ": must be a contiguous float32 [num_heads] tensor ([" + std::to_string(num_heads) +
                "]), got " + t.shape_string());
  return t.as<float>();
}

}  // namespace

// (page, row in page, kv head) element strides of a cache view in either layout (SPEC §6).
CacheStrides cache_strides(const TensorView& t, KvLayout layout) {
  return layout == KvLayout::kHND ? CacheStrides{t.strides[0], t.strides[2], t.strides[1]}
                                  : CacheStrides{t.strides[0], t.strides[1], t.strides[2]};
}

struct PagedAttention::Impl {
  Shape shape;
  KvLayout layout;
  KernelTypes types;
  DType table_dtype;
  DevicePlan plan;
  Impl(const Shape& s, KvLayout l, KernelTypes t, DType table, const Plan& p, IndexView lens, const Variant& v,
       float k_scale, float v_scale)
      : shape(s), layout(l), types(t), table_dtype(table), plan(p, lens, {}, v, t, k_scale, v_scale) {}
};

bool available() { return device_available(); }

namespace {
KernelTypes tensor_types(const Inputs& in) { return {in.query.dtype, in.key_cache.dtype}; }
}  // namespace

PagedAttention::PagedAttention(const Inputs& in, const std::int32_t* host_context_lens, const Options& options)
    : PagedAttention(in, host_context_lens, nullptr, options) {}
PagedAttention::PagedAttention(const Inputs& in, const std::int64_t* host_context_lens, const Options& options)
    : PagedAttention(in, nullptr, host_context_lens, options) {}

PagedAttention::PagedAttention(const Inputs& in, const std::int32_t* lens32, const std::int64_t* lens64,
                               const Options& options) {
  if (!device_available()) throw Error("cuda: no CUDA device with a kernel image for this build is available");
  const Shape shape = validate_shapes(in, options.kv_layout);
  Inputs host_side = in;  // the variant's vectors are device memory: their values are not read here
  host_side.alibi_slopes = {};
  host_side.sinks = {};
  const Variant variant = resolve_variant(host_side, options, shape);
  device_head_vector(in.alibi_slopes, "alibi_slopes", shape.num_heads);
  device_head_vector(in.sinks, "sinks", shape.num_heads);
  if (!lens32 && !lens64) throw Error("context_lens: the host copy is required to plan");
  const IndexView lens = lens64 ? IndexView(lens64) : IndexView(lens32);
  const KernelTypes types = tensor_types(in);
  if (const std::string why = unsupported_types(types.query, types.kv); !why.empty())
    throw Error("cuda: " + why + " not supported");
  const std::int64_t max_tokens = shape.max_blocks_per_req * shape.block_size;
  for (std::int64_t b = 0; b < shape.batch; ++b)  // the host copy: the plan's token ranges come from it
    if (lens[b] < 0 || lens[b] > max_tokens || (lens[b] > 0 && lens[b] < shape.q_len))
      throw Error("context_lens: request " + std::to_string(b) + " has " + std::to_string(lens[b]) +
                  " tokens, must be 0 or in [q_len, " + std::to_string(max_tokens) + "] (q_len " +
                  std::to_string(shape.q_len) + ")");
  Problem scales;  // k_scale / v_scale, checked as validate() checks them (fp8 caches only, positive, finite)
  resolve_kv_scales(options, types.kv, scales);
  impl_ = std::make_unique<Impl>(shape, options.kv_layout, types, in.block_table.dtype, make_plan(shape, variant.scale),
                                 lens, variant, scales.k_scale, scales.v_scale);
}

PagedAttention::~PagedAttention() = default;
PagedAttention::PagedAttention(PagedAttention&&) noexcept = default;
PagedAttention& PagedAttention::operator=(PagedAttention&&) noexcept = default;

void PagedAttention::run(const Inputs& in, float* out, float* lse, void* stream) const {
  const Shape s = validate_shapes(in, impl_->layout);
  const Shape& p = impl_->shape;
  if (s.batch != p.batch || s.num_heads != p.num_heads || s.num_kv_heads != p.num_kv_heads || s.head_dim != p.head_dim ||
      s.num_blocks != p.num_blocks || s.block_size != p.block_size || s.max_blocks_per_req != p.max_blocks_per_req ||
      s.q_len != p.q_len)
    throw Error("cuda: run's inputs do not have the shapes the plan was made for");
  const KernelTypes types = tensor_types(in);
  if (types.query != impl_->types.query || types.kv != impl_->types.kv || in.block_table.dtype != impl_->table_dtype)
    throw Error("cuda: run's inputs do not have the dtypes the plan was made for (query, caches, block_table)");
  DeviceTensors t;
  t.query = in.query.data;
  t.key_cache = in.key_cache.data;
  t.value_cache = in.value_cache.data;
  t.k_strides = cache_strides(in.key_cache, impl_->layout);
  t.v_strides = cache_strides(in.value_cache, impl_->layout);
  if (in.key_cache.strides[3] != 1 || in.value_cache.strides[3] != 1)
    throw Error("key_cache / value_cache: head_dim must have stride 1");
  if (in.block_table.dtype == DType::kI64) t.block_table64 = in.block_table.as<std::int64_t>();
  else t.block_table = in.block_table.as<std::int32_t>();
  t.alibi_slopes = device_head_vector(in.alibi_slopes, "alibi_slopes", s.num_heads);
  t.sinks = device_head_vector(in.sinks, "sinks", s.num_heads);
  impl_->plan.run(t, out, static_cast<cudaStream_t>(stream), lse);
}

int PagedAttention::read_error_flags(void* stream) const {
  return impl_->plan.read_error_flags(static_cast<cudaStream_t>(stream));
}
void PagedAttention::check_errors(void* stream) const { impl_->plan.check_errors(static_cast<cudaStream_t>(stream)); }
std::int64_t PagedAttention::work_items() const { return static_cast<std::int64_t>(impl_->plan.work().items.size()); }
int PagedAttention::grid() const { return impl_->plan.work().grid; }
int PagedAttention::stages() const { return impl_->plan.work().stages; }

#else  // no cuda executor in this build

struct PagedAttention::Impl {};
bool available() { return false; }
PagedAttention::PagedAttention(const Inputs&, const std::int32_t*, const Options&) {
  throw Error("cuda: this build of mixpa has no cuda executor (configure with a CUDA compiler)");
}
PagedAttention::PagedAttention(const Inputs&, const std::int64_t*, const Options&) {
  throw Error("cuda: this build of mixpa has no cuda executor (configure with a CUDA compiler)");
}
PagedAttention::PagedAttention(const Inputs&, const std::int32_t*, const std::int64_t*, const Options&) {
  throw Error("cuda: this build of mixpa has no cuda executor (configure with a CUDA compiler)");
}
PagedAttention::~PagedAttention() = default;
PagedAttention::PagedAttention(PagedAttention&&) noexcept = default;
PagedAttention& PagedAttention::operator=(PagedAttention&&) noexcept = default;
void PagedAttention::run(const Inputs&, float*, float*, void*) const {}
int PagedAttention::read_error_flags(void*) const { return 0; }
void PagedAttention::check_errors(void*) const {}
std::int64_t PagedAttention::work_items() const { return 0; }
int PagedAttention::grid() const { return 0; }
int PagedAttention::stages() const { return 0; }

#endif

}  // namespace mixpa::cuda
