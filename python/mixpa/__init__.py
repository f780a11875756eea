"""mixpa: decode-phase paged attention over a bf16 paged KV cache, from NumPy and PyTorch.

All the work happens in the C++ core (the ``_mixpa`` extension): this module only maps
Python objects onto it. Tensors are passed without copying (DLPack / buffer protocol).

    out = mixpa.paged_attention(query, key_cache, value_cache, block_table, context_lens)

query bf16 [batch, num_heads, head_dim], key_cache / value_cache bf16 [num_blocks, block_size,
num_kv_heads, head_dim] (any strides with unit head_dim stride), block_table int32
[batch, max_blocks_per_req], context_lens int32 [batch]; out float32 [batch, num_heads, head_dim].
bf16 is torch.bfloat16 or NumPy's ml_dtypes.bfloat16. Invalid input raises ValueError with the
same one-line message as the C++ library and the CLI. The contract (operation, variants, accuracy,
invalid inputs): docs/spec.md. ``import mixpa.torch_op`` registers ``torch.ops.mixpa.paged_attention``
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
_TENSOR_NAMES = ("query", "key_cache", "value_cache", "block_table", "context_lens")


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


def _prepare(tensors):
    """NumPy bf16 arrays become zero-copy uint16 views (DLPack has no NumPy bf16); the mask
    tells the core which tensors hold bf16 bits. Everything else passes through untouched."""
    mask = 0
    out = []
    for i, t in enumerate(tensors):
        if isinstance(t, np.ndarray) and t.dtype == _BF16:
            t = t.view(np.uint16)
            mask |= 1 << i
        out.append(t)
    return out, mask


def paged_attention(query, key_cache, value_cache, block_table, context_lens, *,
                    scale: Optional[float] = None, softcap: Optional[float] = None, window_left: int = -1,
                    alibi_slopes=None, sinks=None, return_lse: bool = False, kv_layout: str = "NHD",
                    executor: str = "auto", out=None,
                    hw_blocks: int = 24, pipe_depth: int = 2, num_threads: int = 0):
    """Decode-phase paged attention; returns ``out`` (float32 [batch, num_heads, head_dim]),
    or ``(out, lse)`` with ``return_lse=True``.

    Shapes and dtypes: query bf16 [batch, num_heads, head_dim]; key_cache / value_cache bf16
    [num_blocks, block_size, num_kv_heads, head_dim] (``kv_layout="NHD"``, the default) or
    [num_blocks, num_kv_heads, block_size, head_dim] (``kv_layout="HND"``), head_dim 64/128/256,
    block_size 16/32/64/128, any strides with unit head_dim stride; block_table int32
    [batch, max_blocks_per_req]; context_lens int32 [batch].

    Variants (docs/spec.md §6): ``scale`` defaults to 1/sqrt(head_dim); ``softcap`` c > 0
    soft-caps each logit after the scale (c * tanh(x / c), Gemma 2 / Grok); ``window_left`` >= 0
    lets each query see itself and that many tokens before (Mistral, Gemma); ``alibi_slopes``
    float32 [num_heads] adds slope_h * (t - pos); ``sinks`` float32 [num_heads] adds one
    softmax term e^sink_h to the denominator (gpt-oss). ``lse`` is float32 [batch, num_heads],
    the natural log-sum-exp of each row's visible logits (sinks not included, -inf for a row
    that sees no token); merge partial results with :func:`merge_states`.

    ``executor``: "auto" (the fastest this build runs here), "cpu", "sim", "reference" (see
    :func:`executors`); ``hw_blocks`` and ``pipe_depth`` shape the simulated MIX pipeline (sim);
    ``num_threads`` 0 = all cores.

    ``out``, when given, must be a writable C-contiguous float32 array/tensor of that shape that
    shares no memory with the inputs, and is written in place and returned; otherwise a new
    NumPy array is returned (a torch tensor sharing its memory when ``query`` is a torch tensor).
    The GIL is released while the kernel runs.

    Raises ValueError on invalid input, before anything is written to ``out``. Ctrl-C (SIGINT)
    during a long call raises KeyboardInterrupt within about a work item (well under a second);
    a given ``out`` (and ``lse``) then holds partial results (some rows written, others not) and
    must be discarded.
    """
    tensors, mask = _prepare((query, key_cache, value_cache, block_table, context_lens))
    result = _mixpa.paged_attention(*tensors, mask, None if scale is None else float(scale), executor, out,
                                    hw_blocks, pipe_depth, num_threads, 0.0 if softcap is None else float(softcap),
                                    int(window_left), alibi_slopes, sinks, bool(return_lse), str(kv_layout))
    lse = None
    if return_lse:
        result, lse = result
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
                 num_threads: int = 0, kv_layout: str = "NHD"):
        tensors, mask = _prepare((query, key_cache, value_cache, block_table, context_lens))
        self._plan = _mixpa.DecodePlan(*tensors, mask, None if scale is None else float(scale), executor,
                                       hw_blocks, pipe_depth, num_threads, str(kv_layout))
        self._torch = _is_torch(query)

    def run(self, query, key_cache, value_cache, *, out=None):
        """One layer: query bf16 [batch, num_heads, head_dim], key_cache / value_cache bf16 with the
        plan's shapes and strides; returns ``out`` (float32 [batch, num_heads, head_dim], written in
        place) or a new float32 array (a torch tensor when the plan was made from torch tensors)."""
        mask = 0
        if type(query) is np.ndarray and query.dtype == _BF16:
            query, mask = query.view(np.uint16), 1
        if type(key_cache) is np.ndarray and key_cache.dtype == _BF16:
            key_cache, mask = key_cache.view(np.uint16), mask | 2
        if type(value_cache) is np.ndarray and value_cache.dtype == _BF16:
            value_cache, mask = value_cache.view(np.uint16), mask | 4
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
    """One problem instance: NumPy arrays and its softmax scale. query ml_dtypes.bfloat16
    [batch, num_heads, head_dim]; key_cache / value_cache ml_dtypes.bfloat16 [num_blocks,
    block_size, num_kv_heads, head_dim]; block_table int32 [batch, max_blocks_per_req];
    context_lens int32 [batch]."""
    query: np.ndarray
    key_cache: np.ndarray
    value_cache: np.ndarray
    block_table: np.ndarray
    context_lens: np.ndarray
    scale: float
    name: str = ""

    def inputs(self):
        """The five tensors in paged_attention's order."""
        return (self.query, self.key_cache, self.value_cache, self.block_table, self.context_lens)

    def run(self, **kwargs):
        """paged_attention on this case with its own scale (kwargs go to paged_attention)."""
        kwargs.setdefault("scale", self.scale)
        return paged_attention(*self.inputs(), **kwargs)

    @property
    def kv_bytes(self) -> int:
        """Bytes held by the key and value caches."""
        return int(self.key_cache.nbytes + self.value_cache.nbytes)


def _case_from_dict(d) -> Case:
    bf16 = {k: d[k].view(_BF16) for k in ("query", "key_cache", "value_cache")}
    return Case(block_table=d["block_table"], context_lens=d["context_lens"], scale=float(d["scale"]),
                name=str(d["name"]), **bf16)


def make_case(name: str, seed: int = 0) -> Case:
    """Generates a built-in case (Case1, Case2, SmallCase1, ...): the same bytes as `mixpa gen`.
    The arrays own the generator's buffers directly (no copy)."""
    return _case_from_dict(_mixpa.make_case(name, seed))


def _require_io():
    if not getattr(_mixpa, "has_io", False):
        raise RuntimeError("this build of mixpa has no safetensors I/O (src/io was not built)")


def load_case(path) -> Case:
    """Reads a case file (safetensors: query, key_cache, value_cache, block_table, context_lens,
    metadata scale). The case is validated in full by the same C++ code as `mixpa run --input`
    (shapes, dtypes, page ids, context lengths, scale): ValueError for a missing, truncated,
    malformed or invalid file, with the CLI's message."""
    _require_io()
    return _case_from_dict(_mixpa.load_case(str(path)))


def save_case(path, case: Optional[Case] = None, *, query=None, key_cache=None, value_cache=None,
              block_table=None, context_lens=None, scale: Optional[float] = None) -> None:
    """Writes a case file readable by load_case() and the CLI (`mixpa run --input`).
    Pass a Case, or the five tensors and scale as keywords (NumPy or torch; caches may be strided).
    The case is validated as load_case() will validate it. The file is written to a temporary
    created exclusively beside ``path`` and renamed over it, so a failure leaves no partial file
    and concurrent calls on one path (threads or processes) leave one of the cases, complete."""
    _require_io()
    if case is not None:
        query, key_cache, value_cache, block_table, context_lens = case.inputs()
        scale = case.scale if scale is None else scale
    if scale is None:
        raise ValueError("scale: missing (save_case needs the softmax scale to store)")
    tensors, mask = _prepare((query, key_cache, value_cache, block_table, context_lens))
    _mixpa.save_case(str(path), *tensors, mask, float(scale))
