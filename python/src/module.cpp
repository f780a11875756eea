// The _mixpa extension: paged_attention over Python tensors (zero-copy, GIL released,
// interruptible by Ctrl-C), executors, cases (generate / load / save). mixpa::Error becomes
// ValueError, message unchanged.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

#include "case_arrays.h"
#include "core/cases.h"
#include "core/validate.h"
#include "mixpa/decode_plan.h"
#include "mixpa/error.h"
#include "mixpa/paged_attention.h"
#include "mixpa/version.h"
#include "tensor_import.h"
#if MIXPA_PYTHON_HAVE_IO
#include "io/safetensors.h"
#endif

namespace nb = nanobind;
using namespace nb::literals;

namespace mixpa::python {
namespace {

std::atomic<bool> gil_held_during_run{true};  // for the tests: was the GIL released?

constexpr const char* kNames[] = {"query", "key_cache", "value_cache", "block_table", "context_lens"};

// A fresh zero-filled float32 NumPy array of `shape` owned by a capsule (out: the query's
// shape; lse: that without head_dim).
nb::object new_array(const std::vector<std::int64_t>& shape, float*& data) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= std::max<std::int64_t>(d, 0);
  auto* heap = new std::vector<float>(static_cast<size_t>(n));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  data = heap->data();
  const std::vector<size_t> dims(shape.begin(), shape.end());
  return nb::ndarray<nb::numpy, float>(data, dims.size(), dims.data(), owner).cast();
}

// The output view of an output of `shape` (rank 3, or rank 4 with q_len).
OutputView view_of(const std::vector<std::int64_t>& shape, float* data) {
  OutputView v;
  v.data = data;
  const std::size_t r = shape.size();
  v.shape = {shape[0], shape[r - 2], shape[r - 1]};
  v.q_len = r == 4 ? shape[1] : 1;
  return v;
}

// The query's shape as the output's ([batch, (q_len,) num_heads, head_dim]).
std::vector<std::int64_t> query_shape(const TensorView& q) {
  return std::vector<std::int64_t>(q.shape.begin(), q.shape.begin() + q.rank);
}

// [lo, hi) bytes a view spans (strides of any sign); empty for an absent or empty view.
std::pair<std::uintptr_t, std::uintptr_t> byte_extent(const TensorView& t) {
  if (!t.present() || t.numel() == 0) return {0, 0};
  std::int64_t lo = 0, hi = 0;
  for (int d = 0; d < t.rank; ++d) {
    const std::int64_t span = (t.shape[d] - 1) * t.strides[d];
    (span < 0 ? lo : hi) += span;
  }
  const auto base = reinterpret_cast<std::uintptr_t>(t.data);
  const auto size = static_cast<std::int64_t>(dtype_size(t.dtype));
  return {base + static_cast<std::uintptr_t>(lo * size), base + static_cast<std::uintptr_t>((hi + 1) * size)};
}

// A bf16 / f16 output is computed into a float32 buffer, so validate() checks that buffer: the
// caller's array is checked against the inputs here, with the same message.
void require_disjoint_16bit_out(const Inputs& in, const OutputArray& o) {
  const auto begin = reinterpret_cast<std::uintptr_t>(o.data);
  const std::uintptr_t end = begin + static_cast<std::uintptr_t>(o.numel()) * 2;
  const std::pair<const TensorView*, const char*> inputs[] = {
      {&in.query, "query"},         {&in.key_cache, "key_cache"},       {&in.value_cache, "value_cache"},
      {&in.block_table, "block_table"}, {&in.context_lens, "context_lens"}, {&in.alibi_slopes, "alibi_slopes"},
      {&in.sinks, "sinks"}};
  for (const auto& [t, name] : inputs) {
    const auto [lo, hi] = byte_extent(*t);
    if (lo < hi && begin < end && lo < end && begin < hi)
      throw Error(std::string("out: overlaps the memory of ") + name +
                  " (the output must not share memory with an input)");
  }
}

// float32 results into the caller's bf16 / f16 output (round to nearest even).
void convert_output(const std::vector<float>& src, const OutputArray& o) {
  if (o.dtype == DType::kBF16) {
    bf16* dst = static_cast<bf16*>(o.data);
    for (std::size_t i = 0; i < src.size(); ++i) dst[i] = bf16::from_float(src[i]);
  } else {
    f16* dst = static_cast<f16*>(o.data);
    for (std::size_t i = 0; i < src.size(); ++i) dst[i] = f16::from_float(src[i]);
  }
}

// Multiply-adds below which a call runs on the calling thread: too short to need Ctrl-C.
constexpr std::int64_t kInterruptibleWork = std::int64_t{1} << 22;

// run() with the GIL released. A long call runs on a helper thread while this thread waits
// and every 20 ms takes the GIL to run Python's signal handlers (PyErr_CheckSignals: Ctrl-C
// raises KeyboardInterrupt there). Then the executors are asked to stop at their next work
// item (Options::cancelled), the helper is joined, and the KeyboardInterrupt propagates.
void run_interruptibly(const Inputs& in, Options options, const OutputView& view) {
  const Problem problem = validate(in, options, view);  // the errors first, and the size of the work
  std::int64_t work = 0;
  for (std::int64_t b = 0; b < problem.shape.batch; ++b) work += problem.context_len(b);
  work *= problem.shape.num_heads * problem.shape.head_dim * 2;

  std::atomic<bool> cancel{false};
  options.cancelled = [&cancel] { return cancel.load(std::memory_order_relaxed); };
  std::exception_ptr error;
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  auto body = [&] {
    try {
      run(in, options, view);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard lock(m);
    done = true;
    cv.notify_all();
  };
  bool interrupted = false;
  {
    nb::gil_scoped_release release;
    gil_held_during_run = PyGILState_Check() != 0;
    std::thread helper;
    if (work >= kInterruptibleWork) {
      try {
        helper = std::thread(body);
      } catch (const std::system_error&) {  // no thread to spare: run here, not interruptible
      }
    }
    if (!helper.joinable()) {
      body();
    } else {
      std::unique_lock lock(m);
      while (!cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return done; })) {
        if (interrupted) continue;
        lock.unlock();
        {
          nb::gil_scoped_acquire acquire;
          // On -1 the exception (KeyboardInterrupt) stays set in this thread until raised below.
          if (PyErr_CheckSignals() != 0) {
            interrupted = true;
            cancel = true;
          }
        }
        lock.lock();
      }
      lock.unlock();
      helper.join();
    }
  }
  if (interrupted) throw nb::python_error();
  if (error) std::rethrow_exception(error);
}

nb::object paged_attention(nb::handle query, nb::handle key_cache, nb::handle value_cache, nb::handle block_table,
                           nb::handle context_lens, unsigned raw_mask, std::optional<double> scale,
                           const std::string& executor, nb::handle out, unsigned out_raw, int hw_blocks,
                           int pipe_depth, int num_threads, double softcap, std::int64_t window_left,
                           nb::handle alibi_slopes, nb::handle sinks, bool return_lse, const std::string& kv_layout,
                           std::optional<double> k_scale, std::optional<double> v_scale) {
  std::vector<ReadArray> keep;
  const nb::handle objs[] = {query, key_cache, value_cache, block_table, context_lens};
  TensorView views[5];
  std::vector<SeenTensor> seen;
  for (int i = 0; i < 5; ++i) {
    views[i] = import_tensor(kNames[i], objs[i], raw_code(raw_mask, i), keep);
    seen.push_back(seen_of(kNames[i], views[i]));
  }
  const TensorView slopes = import_tensor("alibi_slopes", alibi_slopes, false, keep);
  const TensorView sink_view = import_tensor("sinks", sinks, false, keep);
  const Inputs in{views[0], views[1], views[2], views[3], views[4], slopes, sink_view};
  Options options;
  options.scale = scale;
  options.softcap = softcap;
  options.window_left = window_left;
  options.k_scale = k_scale;
  options.v_scale = v_scale;
  options.kv_layout = parse_kv_layout(kv_layout);
  options.executor = executor;
  options.hw_blocks = hw_blocks;
  options.pipe_depth = pipe_depth;
  options.num_threads = num_threads;

  OutputView view;
  nb::object result;
  OutputArray given;
  std::vector<std::int64_t> out_shape;
  std::vector<float> staging;  // a bf16 / f16 out: the float32 results before conversion
  if (out.is_none()) {
    // Shapes first, so a malformed (e.g. broadcast) query is reported before any allocation.
    validate_shapes(in, options.kv_layout);
    out_shape = query_shape(in.query);
    float* data = nullptr;
    result = new_array(out_shape, data);
    view = view_of(out_shape, data);
  } else {
    given = import_output(out, out_raw);
    out_shape = given.shape;
    if (given.dtype == DType::kF32) {
      view = view_of(out_shape, static_cast<float*>(given.data));
    } else {
      validate_shapes(in, options.kv_layout);
      require_disjoint_16bit_out(in, given);
      staging.resize(static_cast<std::size_t>(std::max<std::int64_t>(given.numel(), 0)));
      view = view_of(out_shape, staging.data());
    }
    result = nb::borrow(out);
  }
  SeenTensor out_seen;
  out_seen.name = "out";
  out_seen.data = reinterpret_cast<std::uintptr_t>(given.data ? given.data : view.data);
  out_seen.shape = out_shape;
  seen.push_back(std::move(out_seen));
  record_seen(std::move(seen));
  nb::object lse;
  if (return_lse) lse = new_array(std::vector<std::int64_t>(out_shape.begin(), out_shape.end() - 1), view.lse);
  run_interruptibly(in, std::move(options), view);
  if (!staging.empty()) {
    nb::gil_scoped_release release;
    convert_output(staging, given);
  }
  if (return_lse) return nb::make_tuple(result, lse);
  return result;
}

// merge_states over float32 arrays o [..., head_dim] and lse [...] (same leading shape).
nb::tuple merge_states_py(nb::ndarray<const float, nb::c_contig, nb::device::cpu> o_a,
                          nb::ndarray<const float, nb::c_contig, nb::device::cpu> lse_a,
                          nb::ndarray<const float, nb::c_contig, nb::device::cpu> o_b,
                          nb::ndarray<const float, nb::c_contig, nb::device::cpu> lse_b) {
  auto shape_of = [](const auto& a) {
    std::vector<std::int64_t> s;
    for (size_t d = 0; d < a.ndim(); ++d) s.push_back(static_cast<std::int64_t>(a.shape(d)));
    return s;
  };
  const std::vector<std::int64_t> so = shape_of(o_a), sl = shape_of(lse_a);
  if (so.empty()) throw Error("merge_states: o_a must have at least one dimension (head_dim)");
  if (shape_of(o_b) != so) throw Error("merge_states: o_b's shape differs from o_a's");
  if (shape_of(lse_b) != sl) throw Error("merge_states: lse_b's shape differs from lse_a's");
  if (std::vector<std::int64_t>(so.begin(), so.end() - 1) != sl)
    throw Error("merge_states: lse's shape must be o's shape without its last dimension (head_dim)");
  const std::int64_t dim = so.back();
  std::int64_t rows = 1;
  for (std::int64_t d : sl) rows *= d;
  auto* o = new std::vector<float>(static_cast<size_t>(rows * dim));
  auto* l = new std::vector<float>(static_cast<size_t>(rows));
  nb::capsule own_o(o, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  nb::capsule own_l(l, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  {
    nb::gil_scoped_release release;
    merge_states(o_a.data(), lse_a.data(), o_b.data(), lse_b.data(), o->data(), l->data(), rows, dim);
  }
  std::vector<size_t> shape_o(so.begin(), so.end()), shape_l(sl.begin(), sl.end());
  return nb::make_tuple(nb::ndarray<nb::numpy, float>(o->data(), shape_o.size(), shape_o.data(), own_o).cast(),
                        nb::ndarray<nb::numpy, float>(l->data(), shape_l.size(), shape_l.data(), own_l).cast());
}

// mixpa.DecodePlan's core: validated and planned once (block_table and context_lens copied),
// then run() per layer imports three tensors and the output, checks their shapes and computes
// with the GIL released. No per-call bookkeeping of what was seen (the tests use
// paged_attention for that), so a call costs the imports and the run.
class PyDecodePlan {
 public:
  PyDecodePlan(nb::handle query, nb::handle key_cache, nb::handle value_cache, nb::handle block_table,
               nb::handle context_lens, unsigned raw_mask, std::optional<double> scale, const std::string& executor,
               int hw_blocks, int pipe_depth, int num_threads, const std::string& kv_layout,
               std::optional<double> k_scale, std::optional<double> v_scale) {
    std::vector<ReadArray> keep;
    const nb::handle objs[] = {query, key_cache, value_cache, block_table, context_lens};
    TensorView views[5];
    for (int i = 0; i < 5; ++i) views[i] = import_tensor(kNames[i], objs[i], raw_code(raw_mask, i), keep);
    Options options;
    options.scale = scale;
    options.k_scale = k_scale;
    options.v_scale = v_scale;
    options.executor = executor;
    options.hw_blocks = hw_blocks;
    options.pipe_depth = pipe_depth;
    options.num_threads = num_threads;
    options.kv_layout = parse_kv_layout(kv_layout);
    const Inputs in{views[0], views[1], views[2], views[3], views[4]};
    nb::gil_scoped_release release;  // the first plan may calibrate the cpu kernels (a few ms)
    plan_ = std::make_unique<DecodePlan>(in, options);
    out_shape_ = query_shape(views[0]);
  }

  nb::object run(nb::handle query, nb::handle key_cache, nb::handle value_cache, unsigned raw_mask, nb::handle out) {
    std::vector<ReadArray> keep;
    keep.reserve(3);
    const LayerInputs layer{import_tensor("query", query, raw_code(raw_mask, 0), keep),
                            import_tensor("key_cache", key_cache, raw_code(raw_mask, 1), keep),
                            import_tensor("value_cache", value_cache, raw_code(raw_mask, 2), keep)};
    OutputView view;
    nb::object result;
    OutputArray given;
    if (out.is_none()) {
      float* data = nullptr;
      result = new_array(out_shape_, data);
      view = view_of(out_shape_, data);
    } else {
      given = import_output(out, kAsIs);
      if (given.dtype != DType::kF32)
        throw Error("out: DecodePlan.run writes float32 outputs only (got " + std::string(dtype_name(given.dtype)) +
                    "); use paged_attention for a bf16 / f16 out");
      view = view_of(given.shape, static_cast<float*>(given.data));
      result = nb::borrow(out);
    }
    {
      nb::gil_scoped_release release;
      gil_held_during_run = PyGILState_Check() != 0;
      plan_->run(layer, view);
    }
    return result;
  }

  std::string executor() const { return std::string(plan_->executor()); }
  std::string kernels() const { return plan_->kernels(); }
  std::string kernels_reason() const { return plan_->kernels_reason(); }

 private:
  std::unique_ptr<DecodePlan> plan_;
  std::vector<std::int64_t> out_shape_;
};

nb::list seen_list() {
  nb::list r;
  for (const SeenTensor& s : last_seen())
    r.append(nb::make_tuple(s.name, s.data, nb::cast(s.shape), nb::cast(s.strides)));
  return r;
}

nb::dict make_case(const std::string& name, std::uint64_t seed) {
  const CaseSpec& spec = find_case(name);
  std::unique_ptr<Case> c;
  {
    nb::gil_scoped_release release;
    c = std::make_unique<Case>(generate_case(spec, seed));
  }
  return case_to_dict(std::move(*c));
}

nb::list case_names() {
  nb::list r;
  for (const CaseSpec& c : case_table()) r.append(c.name);
  return r;
}

#if MIXPA_PYTHON_HAVE_IO
nb::dict load_case_file(const std::string& path) {
  std::unique_ptr<Case> c;
  {
    nb::gil_scoped_release release;
    c = std::make_unique<Case>(load_case(path));
  }
  return case_to_dict(std::move(*c));
}

void save_case_file(const std::string& path, nb::handle query, nb::handle key_cache, nb::handle value_cache,
                    nb::handle block_table, nb::handle context_lens, unsigned raw_mask, double scale,
                    std::optional<double> k_scale, std::optional<double> v_scale) {
  const Case c = case_from_tensors(query, key_cache, value_cache, block_table, context_lens, raw_mask, scale, k_scale,
                                   v_scale);
  nb::gil_scoped_release release;
  save_case(path, c);
}
#endif

}  // namespace
}  // namespace mixpa::python

NB_MODULE(_mixpa, m) {
  using namespace mixpa::python;
  m.doc() = "mixpa C++ core: decode-phase paged attention (use the mixpa package, not this module)";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const mixpa::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  m.def("paged_attention", &paged_attention, "query"_a.none(), "key_cache"_a.none(), "value_cache"_a.none(),
        "block_table"_a.none(), "context_lens"_a.none(), "raw_mask"_a, "scale"_a.none(), "executor"_a,
        "out"_a.none(), "out_raw"_a, "hw_blocks"_a, "pipe_depth"_a, "num_threads"_a, "softcap"_a, "window_left"_a,
        "alibi_slopes"_a.none(), "sinks"_a.none(), "return_lse"_a, "kv_layout"_a, "k_scale"_a.none(),
        "v_scale"_a.none());
  m.def("merge_states", &merge_states_py, "o_a"_a, "lse_a"_a, "o_b"_a, "lse_b"_a);
  nb::class_<PyDecodePlan>(m, "DecodePlan")
      .def(nb::init<nb::handle, nb::handle, nb::handle, nb::handle, nb::handle, unsigned, std::optional<double>,
                    const std::string&, int, int, int, const std::string&, std::optional<double>,
                    std::optional<double>>(),
           "query"_a.none(), "key_cache"_a.none(), "value_cache"_a.none(), "block_table"_a.none(),
           "context_lens"_a.none(), "raw_mask"_a, "scale"_a.none(), "executor"_a, "hw_blocks"_a, "pipe_depth"_a,
           "num_threads"_a, "kv_layout"_a, "k_scale"_a.none(), "v_scale"_a.none())
      .def("run", &PyDecodePlan::run, "query"_a.none(), "key_cache"_a.none(), "value_cache"_a.none(), "raw_mask"_a,
           "out"_a.none())
      .def_prop_ro("executor", &PyDecodePlan::executor)
      .def_prop_ro("kernels", &PyDecodePlan::kernels)
      .def_prop_ro("kernels_reason", &PyDecodePlan::kernels_reason);
  m.attr("__version__") = mixpa::version();  // CMake's project VERSION, as `mixpa --version` prints it
  m.def("executors", &mixpa::executor_names, "Executors this build can run here, fastest first.");
  m.def("case_names", &case_names);
  m.def("kv_buffer", &kv_buffer, "n"_a, "n zero bf16 bit patterns (uint16) on 2 MiB pages where Linux allows.");
  m.def("make_case", &make_case, "name"_a, "seed"_a);
  m.def("_gil_held_during_last_run", [] { return gil_held_during_run.load(); });
  m.def("_last_call", &seen_list, "(name, data pointer, shape, strides) of each tensor the last call saw.");
#if MIXPA_PYTHON_HAVE_IO
  m.def("load_case", &load_case_file, "path"_a);
  m.def("save_case", &save_case_file, "path"_a, "query"_a.none(), "key_cache"_a.none(), "value_cache"_a.none(),
        "block_table"_a.none(), "context_lens"_a.none(), "raw_mask"_a, "scale"_a, "k_scale"_a.none(),
        "v_scale"_a.none());
  m.attr("has_io") = true;
#else
  m.attr("has_io") = false;
#endif
}
