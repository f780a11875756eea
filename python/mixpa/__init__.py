"""mixpa: decode-phase paged attention over a paged KV cache, from NumPy and PyTorch.

All the work happens in the C++ core (the ``_mixpa`` extension): this module only maps
Python objects onto it. Tensors are passed without copying (DLPack / buffer protocol).

    out = mixpa.paged_attention(query, key_cache, value_cache, block_table, context_lens)

query bf16|f16 [batch, num_heads, head_dim] or [batch, q_len, num_heads, head_dim] (q_len 1..16,
multi-token decode); key_cache / value_cache bf16|f16|fp8 (e4m3fn, e5m2) [num_blocks, block_size,
num_kv_heads, head_dim] (any strides with unit head_dim stride); block_table int32|int64
[batch, max_blocks_per_req], context_lens int32|int64 [batch]; out float32 (or bf16 / f16) of the
query's shape. bf16 is torch.bfloat16 or NumPy's ml_dtypes.bfloat16, fp8 torch.float8_e4m3fn /
float8_e5m2 or ml_dtypes.float8_e4m3fn / float8_e5m2. Invalid input raises ValueError with the
same one-line message as the C++ library and the CLI. The contract (operation, variants,
accuracy, invalid inputs): docs/spec.md. ``import mixpa.torch_op`` registers ``torch.ops.mixpa.paged_attention``
for torch.compile (this package itself never imports torch). ``__version__`` is the version of the
C++ core, the one ``mixpa --version`` prints.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

import ml_dtypes
import numpy as np

from . import _mixpa

__all__ = ["Case", "DecodePlan", "case_names", "executors", "load_case", "make_case", "merge_states",
           "paged_attention", "save_case", "zeros_kv_cache"]
__version__: str = _mixpa.__version__  # CMake's project(mixpa VERSION ...), compiled into _mixpa

_BF16 = np.dtype(ml_dtypes.bfloat16)
_E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
_E5M2 = np.dtype(ml_dtypes.float8_e5m2)
_TENSOR_NAMES = ("query", "key_cache", "value_cache", "block_table", "context_lens")
# The dtypes DLPack cannot name, passed as their bits viewed in place: (bits dtype, code) with the
# core's codes (python/src/tensor_import.h): 1 bf16 in uint16, 2 e4m3fn in uint8, 3 e5m2 in uint8.
_NUMPY_RAW = {_BF16: (np.uint16, 1), _E4M3: (np.uint8, 2), _E5M2: (np.uint8, 3)}
# Safetensors dtype names of load_case's arrays.
_NUMPY_OF = {"BF16": _BF16, "F16": np.dtype(np.float16), "F8_E4M3": _E4M3, "F8_E5M2": _E5M2}


def executors() -> list[str]:
    """Executors this build can run on this machine, fastest first ("auto" picks the first)."""
    return list(_mixpa.executors())


def case_names() -> list[str]:
    """Names of the built-in cases (the origin's cases of docs/spec.md §4 plus benchmark shapes),
    for make_case()."""
    return list(_mixpa.case_names())


def zeros_kv_cache(shape, *, torch: bool = False):
    """A zero-filled bf16 buffer of ``shape`` (e.g. [num_blocks, block_size, num_kv_heads,
    head_dim]) for a KV cache, on 2 MiB transparent huge pages where Linux allows them.

    Kernels read KV pages in block-table order, i.e. at random over the cache, so with 4 KiB pages
    nearly every page costs a TLB miss (on the project's VM, 2 MiB pages made Decode32k 17% and
    Case1 10% faster). Returns an ``ml_dtypes.bfloat16`` NumPy array, or with ``torch=True`` a
    ``torch.bfloat16`` tensor sharing the same memory.
    """
    dims = tuple(int(d) for d in (shape if hasattr(shape, "__len__") else (shape,)))
    if any(d < 0 for d in dims):
        raise ValueError(f"zeros_kv_cache: shape {dims} has a negative dimension")
    n = 1
    for d in dims:
        n *= d
    arr = _mixpa.kv_buffer(n).view(_BF16).reshape(dims)
    if not torch:
        return arr
    import torch as _torch
    return _torch.from_numpy(arr.view(np.int16)).view(_torch.bfloat16)


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _raw(t):
    """(t, code): NumPy bf16 / fp8 arrays and torch fp8 tensors become zero-copy views of their
    bits (DLPack has no NumPy bf16 or fp8, and torch's DLPack export of fp8 varies by version);
    code tells the core the element type (0: as DLPack says)."""
    if isinstance(t, np.ndarray):
        raw = _NUMPY_RAW.get(t.dtype)
        if raw is not None:
            return t.view(raw[0]), raw[1]
        return t, 0
    if _is_torch(t):
        import torch
        code = {getattr(torch, "float8_e4m3fn", None): 2, getattr(torch, "float8_e5m2", None): 3}.get(t.dtype)
        if code is not None:
            return t.view(torch.uint8), code
    return t, 0


def _prepare(tensors):
    """The tensors as the core reads them and the mask of their codes (2 bits per tensor)."""
    mask = 0
    out = []
    for i, t in enumerate(tensors):
        t, code = _raw(t)
        mask |= code << (2 * i)
        out.append(t)
    return out, mask


def paged_attention(query, key_cache, value_cache, block_table, context_lens, *,
                    scale: Optional[float] = None, softcap: Optional[float] = None, window_left: int = -1,
                    alibi_slopes=None, sinks=None, k_scale: Optional[float] = None,
                    v_scale: Optional[float] = None, return_lse: bool = False, kv_layout: str = "NHD",
                    executor: str = "auto", out=None,
                    hw_blocks: int = 24, pipe_depth: int = 2, num_threads: int = 0):
    """Decode-phase paged attention; returns ``out`` (float32, the query's shape), or
    ``(out, lse)`` with ``return_lse=True``.

    Shapes and dtypes (docs/spec.md §6):

    - query: bf16 or float16, [batch, num_heads, head_dim] or [batch, q_len, num_heads, head_dim]
      (q_len 1..16 new tokens per request, e.g. speculative decoding), C-contiguous;
    - key_cache / value_cache: one dtype of bf16, float16, float8_e4m3fn or float8_e5m2,
      [num_blocks, block_size, num_kv_heads, head_dim] (``kv_layout="NHD"``, the default) or
      [num_blocks, num_kv_heads, block_size, head_dim] (``kv_layout="HND"``); head_dim a multiple
      of 16 in 16..256, block_size 1..256; any strides with unit head_dim stride;
    - block_table: int32 or int64 [batch, max_blocks_per_req]; context_lens: the same dtype,
      [batch], read in place (int64 values must lie in int32 range). context_lens[b] counts every
      token of request b, its q_len new ones included: query row p sits at position
      context_lens[b] - q_len + p and sees the tokens up to it (0 < context_lens[b] < q_len is
      invalid, 0 gives zeros);
    - bf16 is torch.bfloat16 or ml_dtypes.bfloat16; fp8 torch.float8_e4m3fn / float8_e5m2 or
      ml_dtypes.float8_e4m3fn / float8_e5m2 (NumPy); float16 torch.float16 or numpy.float16.

    fp8 caches: ``k_scale`` / ``v_scale`` (positive, default 1, vLLM's convention) dequantise
    K = k_scale * float(key_cache) and V = v_scale * float(value_cache); giving them for a bf16 /
    float16 cache is a ValueError.

    Variants (docs/spec.md §6): ``scale`` defaults to 1/sqrt(head_dim); ``softcap`` c > 0
    soft-caps each logit after the scale (c * tanh(x / c), Gemma 2 / Grok); ``window_left`` >= 0
    lets each query see itself and that many tokens before (Mistral, Gemma); ``alibi_slopes``
    float32 [num_heads] adds slope_h * (t - pos); ``sinks`` float32 [num_heads] adds one
    softmax term e^sink_h to the denominator (gpt-oss). ``lse`` is float32 [batch, num_heads]
    ([batch, q_len, num_heads] for a rank-4 query), the natural log-sum-exp of each row's visible
    logits (sinks not included, -inf for a row that sees no token); merge partial results with
    :func:`merge_states`.

    ``executor``: "auto" (the fastest this build runs here), "cpu", "sim", "reference" (see
    :func:`executors`); ``hw_blocks`` and ``pipe_depth`` shape the simulated MIX pipeline (sim);
    ``num_threads`` 0 = all cores.

    ``out``, when given, must be a writable C-contiguous array/tensor of the query's shape, of
    float32, bfloat16 or float16 (computed in float32 and rounded to nearest on the way out),
    that shares no memory with the inputs, and is written in place and returned; otherwise a
    new float32 NumPy array is returned (a torch tensor sharing its memory when ``query`` is a
    torch tensor). The GIL is released while the kernel runs.

    Raises ValueError on invalid input, before anything is written to ``out``. Ctrl-C (SIGINT)
    during a long call raises KeyboardInterrupt within about a work item (well under a second);
    a given ``out`` (and ``lse``) then holds partial results (some rows written, others not) and
    must be discarded.
    """
    tensors, mask = _prepare((query, key_cache, value_cache, block_table, context_lens))
    out_core, out_raw = (None, 0) if out is None else _raw(out)
    result = _mixpa.paged_attention(*tensors, mask, None if scale is None else float(scale), executor, out_core,
                                    out_raw, hw_blocks, pipe_depth, num_threads,
                                    0.0 if softcap is None else float(softcap), int(window_left), alibi_slopes, sinks,
                                    bool(return_lse), str(kv_layout), None if k_scale is None else float(k_scale),
                                    None if v_scale is None else float(v_scale))
    lse = None
    if return_lse:
        result, lse = result
    if out is not None:
        result = out  # the caller's array (not the uint16 view of a NumPy bf16 one)
    if _is_torch(query):
        import torch
        if out is None:
            result = torch.from_numpy(result)
        if lse is not None:
            lse = torch.from_numpy(lse)
    return (result, lse) if return_lse else result


def merge_states(o_a, lse_a, o_b, lse_b):
    """Merges two partial attention results over disjoint token sets of the same rows
    (cascade / shared-prefix attention, split-KV across devices): returns ``(o, lse)`` with
    ``lse = log(e^lse_a + e^lse_b)`` and ``o = e^(lse_a - lse) o_a + e^(lse_b - lse) o_b``;
    -inf on both sides gives zeros and -inf. ``o_*`` float32 [batch, num_heads, head_dim] and
    ``lse_*`` float32 [batch, num_heads], as ``paged_attention(return_lse=True)`` returns them (any
    leading shape works: o [..., head_dim] with lse [...]); NumPy arrays or torch tensors.
    """
    torch_in = _is_torch(o_a)
    arrs = [np.ascontiguousarray(x.detach().cpu().numpy() if _is_torch(x) else x, dtype=np.float32)
            for x in (o_a, lse_a, o_b, lse_b)]
    o, lse = _mixpa.merge_states(*arrs)
    if torch_in:
        import torch
        return torch.from_numpy(o), torch.from_numpy(lse)
    return o, lse


class DecodePlan:
    """paged_attention for the layers of one decode step: validate and plan once, run per layer.

        plan = mixpa.DecodePlan(query, key_cache, value_cache, block_table, context_lens)
        for layer in range(n_layers):
            plan.run(q[layer], k_cache[layer], v_cache[layer], out=out[layer])

    The constructor validates everything (as paged_attention does) and copies block_table and
    context_lens, so later changes to them do not reach the plan: make a new plan per decode
    step. ``run`` needs tensors of the same dtypes, shapes and strides as the ones the plan was
    made with (ValueError otherwise) and gives bitwise what paged_attention gives; it plans and
    allocates nothing (with ``out`` given), so its fixed cost is a few microseconds.

    Shapes and dtypes as in :func:`paged_attention`: query bf16 [batch, num_heads, head_dim];
    key_cache / value_cache bf16 [num_blocks, block_size, num_kv_heads, head_dim] (NHD) or
    [num_blocks, num_kv_heads, block_size, head_dim] (``kv_layout="HND"``); block_table int32
    [batch, max_blocks_per_req]; context_lens int32 [batch]; ``out`` float32 [batch, num_heads,
    head_dim]. NumPy (ml_dtypes.bfloat16) or torch CPU tensors.
    """

    __slots__ = ("_plan", "_torch")

    def __init__(self, query, key_cache, value_cache, block_table, context_lens, *,
                 scale: Optional[float] = None, executor: str = "auto", hw_blocks: int = 24, pipe_depth: int = 2,
                 num_threads: int = 0, kv_layout: str = "NHD", k_scale: Optional[float] = None,
                 v_scale: Optional[float] = None):
        tensors, mask = _prepare((query, key_cache, value_cache, block_table, context_lens))
        self._plan = _mixpa.DecodePlan(*tensors, mask, None if scale is None else float(scale), executor,
                                       hw_blocks, pipe_depth, num_threads, str(kv_layout),
                                       None if k_scale is None else float(k_scale),
                                       None if v_scale is None else float(v_scale))
        self._torch = _is_torch(query)

    def run(self, query, key_cache, value_cache, *, out=None):
        """One layer: query bf16 | float16 [batch, num_heads, head_dim] (or [batch, q_len, num_heads,
        head_dim]), key_cache / value_cache (bf16, float16, float8_e4m3fn or float8_e5m2) with the
        plan's shapes, dtypes and strides; returns ``out`` (float32 of the query's shape, written in
        place; bf16 / float16 outputs: use paged_attention) or a new float32 array (a torch tensor
        when the plan was made from torch tensors)."""
        mask = 0
        if type(query) is np.ndarray and query.dtype == _BF16:
            query, mask = query.view(np.uint16), 1
        if type(key_cache) is not np.ndarray or key_cache.dtype in _NUMPY_RAW:
            key_cache, code = _raw(key_cache)
            mask |= code << 2
        if type(value_cache) is not np.ndarray or value_cache.dtype in _NUMPY_RAW:
            value_cache, code = _raw(value_cache)
            mask |= code << 4
        result = self._plan.run(query, key_cache, value_cache, mask, out)
        if out is None and self._torch:
            import torch
            return torch.from_numpy(result)
        return result

    @property
    def executor(self) -> str:
        """The executor the plan runs on ("auto" resolved)."""
        return self._plan.executor

    @property
    def kernels(self) -> str:
        """The cpu executor's kernel flavour (e.g. "avx2"); "" for other executors."""
        return self._plan.kernels

    @property
    def kernels_reason(self) -> str:
        """Why that flavour: measured rates, the only one this CPU runs, or MIXPA_CPU_ISA."""
        return self._plan.kernels_reason


@dataclass
class Case:
    """One problem instance: NumPy arrays and its softmax scale. query ml_dtypes.bfloat16 or
    float16 [batch, (q_len,) num_heads, head_dim]; key_cache / value_cache ml_dtypes.bfloat16,
    float16, ml_dtypes.float8_e4m3fn or float8_e5m2 [num_blocks, block_size, num_kv_heads, head_dim];
    block_table int32 | int64 [batch, max_blocks_per_req]; context_lens int32 | int64 [batch]; for
    fp8 caches its k_scale / v_scale (None = not given, i.e. 1)."""
    query: np.ndarray
    key_cache: np.ndarray
    value_cache: np.ndarray
    block_table: np.ndarray
    context_lens: np.ndarray
    scale: float
    name: str = ""
    k_scale: Optional[float] = None
    v_scale: Optional[float] = None

    def inputs(self):
        """The five tensors in paged_attention's order."""
        return (self.query, self.key_cache, self.value_cache, self.block_table, self.context_lens)

    def run(self, **kwargs):
        """paged_attention on this case with its own scale (kwargs go to paged_attention)."""
        kwargs.setdefault("scale", self.scale)
        if self.k_scale is not None:
            kwargs.setdefault("k_scale", self.k_scale)
        if self.v_scale is not None:
            kwargs.setdefault("v_scale", self.v_scale)
        return paged_attention(*self.inputs(), **kwargs)

    @property
    def kv_bytes(self) -> int:
        """Bytes held by the key and value caches."""
        return int(self.key_cache.nbytes + self.value_cache.nbytes)


def _case_from_dict(d) -> Case:
    dtypes = {"query": d["query_dtype"], "key_cache": d["kv_dtype"], "value_cache": d["kv_dtype"]}
    floats = {k: d[k].view(_NUMPY_OF[t]) for k, t in dtypes.items()}  # zero-copy views of the owned bits
    return Case(block_table=d["block_table"], context_lens=d["context_lens"], scale=float(d["scale"]),
                name=str(d["name"]), k_scale=float(d["k_scale"]) if d["k_scale"] else None,
                v_scale=float(d["v_scale"]) if d["v_scale"] else None, **floats)


def make_case(name: str, seed: int = 0) -> Case:
    """Generates a built-in case (Case1, Case2, SmallCase1, ...): the same bytes as `mixpa gen`.
    The arrays own the generator's buffers directly (no copy)."""
    return _case_from_dict(_mixpa.make_case(name, seed))


def _require_io():
    if not getattr(_mixpa, "has_io", False):
        raise RuntimeError("this build of mixpa has no safetensors I/O (src/io was not built)")


def load_case(path) -> Case:
    """Reads a case file (safetensors: query, key_cache, value_cache, block_table, context_lens,
    metadata scale, k_scale, v_scale; any docs/spec.md §6 dtype: the arrays come back as bf16 / float16 /
    fp8 / int32 / int64 as stored). The case is validated in full by the same C++ code as `mixpa run --input`
    (shapes, dtypes, page ids, context lengths, scale): ValueError for a missing, truncated,
    malformed or invalid file, with the CLI's message."""
    _require_io()
    return _case_from_dict(_mixpa.load_case(str(path)))


def save_case(path, case: Optional[Case] = None, *, query=None, key_cache=None, value_cache=None,
              block_table=None, context_lens=None, scale: Optional[float] = None, k_scale: Optional[float] = None,
              v_scale: Optional[float] = None) -> None:
    """Writes a case file readable by load_case() and the CLI (`mixpa run --input`).
    Pass a Case, or the five tensors and scale as keywords (NumPy or torch; caches may be strided).
    The case is validated as load_case() will validate it. The file is written to a temporary
    created exclusively beside ``path`` and renamed over it, so a failure leaves no partial file
    and concurrent calls on one path (threads or processes) leave one of the cases, complete."""
    _require_io()
    if case is not None:
        query, key_cache, value_cache, block_table, context_lens = case.inputs()
        scale = case.scale if scale is None else scale
        k_scale = case.k_scale if k_scale is None else k_scale
        v_scale = case.v_scale if v_scale is None else v_scale
    if scale is None:
        raise ValueError("scale: missing (save_case needs the softmax scale to store)")
    tensors, mask = _prepare((query, key_cache, value_cache, block_table, context_lens))
    _mixpa.save_case(str(path), *tensors, mask, float(scale), None if k_scale is None else float(k_scale),
                     None if v_scale is None else float(v_scale))
