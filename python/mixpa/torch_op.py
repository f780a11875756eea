"""mixpa as a PyTorch operator: ``torch.ops.mixpa.paged_attention``, for engines and ``torch.compile``.

Importing this module imports torch and registers the operator through ``torch.library.custom_op``
(``import mixpa`` alone never imports torch)::

    import mixpa.torch_op
    out, lse = torch.ops.mixpa.paged_attention(query, key_cache, value_cache, block_table, context_lens,
                                               scale=None, softcap=None, window_left=-1, alibi_slopes=None,
                                               sinks=None, k_scale=None, v_scale=None, kv_layout="NHD",
                                               return_lse=False)

or, with :func:`mixpa.paged_attention`'s return convention (``out``, or ``(out, lse)``)::

    out = mixpa.torch_op.paged_attention(query, key_cache, value_cache, block_table, context_lens)

The operator has a fake (meta) implementation that gives the output shapes without computing, so
``torch.compile(fullgraph=True)`` traces a function that calls it without a graph break, and
``torch.library.opcheck`` passes on it. It runs on CPU tensors (the kernel is mixpa's cpu executor
unless ``executor`` says otherwise); it has no autograd formula (inference only). Shapes, dtypes,
variants and invalid inputs are those of :func:`mixpa.paged_attention` (docs/spec.md).
"""
from typing import Optional, Tuple

import torch

from . import paged_attention as _paged_attention

__all__ = ["paged_attention"]

_EMPTY = (0,)


@torch.library.custom_op("mixpa::paged_attention", mutates_args=(), device_types="cpu")
def _op(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_table: torch.Tensor,
        context_lens: torch.Tensor, scale: Optional[float] = None, softcap: Optional[float] = None,
        window_left: int = -1, alibi_slopes: Optional[torch.Tensor] = None, sinks: Optional[torch.Tensor] = None,
        k_scale: Optional[float] = None, v_scale: Optional[float] = None, kv_layout: str = "NHD",
        return_lse: bool = False, executor: str = "auto",
        num_threads: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decode-phase paged attention; returns ``(out, lse)``. Every argument may be given by keyword
    (torch.library allows no keyword-only tensors, so none is keyword-only here).

    query bf16 / float16 [batch, num_heads, head_dim] or [batch, q_len, num_heads, head_dim]
    (q_len 1..16); key_cache / value_cache bf16 / float16 / float8_e4m3fn / float8_e5m2
    [num_blocks, block_size, num_kv_heads, head_dim] (NHD) or [num_blocks, num_kv_heads,
    block_size, head_dim] (HND), fp8 ones with k_scale / v_scale; block_table int32 / int64
    [batch, max_blocks_per_req]; context_lens [batch], the block_table's dtype; alibi_slopes,
    sinks float32 [num_heads] or None. out float32, the query's shape; lse float32, the query's
    leading dimensions ([batch, (q_len,) num_heads]) with ``return_lse=True``, else an empty
    float32 tensor of shape [0].
    """
    result = _paged_attention(query, key_cache, value_cache, block_table, context_lens, scale=scale,
                              softcap=softcap, window_left=window_left, alibi_slopes=alibi_slopes, sinks=sinks,
                              k_scale=k_scale, v_scale=v_scale, return_lse=return_lse, kv_layout=kv_layout,
                              executor=executor, num_threads=num_threads)
    if return_lse:
        return result
    return result, torch.empty(_EMPTY, dtype=torch.float32)


@_op.register_fake
def _fake(query, key_cache, value_cache, block_table, context_lens, scale=None, softcap=None, window_left=-1,
          alibi_slopes=None, sinks=None, k_scale=None, v_scale=None, kv_layout="NHD", return_lse=False,
          executor="auto", num_threads=0):
    # out has the query's shape, lse its leading dimensions; both float32. Validation is the
    # real kernel's (it runs when the compiled graph runs).
    out = query.new_empty(query.shape, dtype=torch.float32)
    lse = query.new_empty(query.shape[:-1] if return_lse else _EMPTY, dtype=torch.float32)
    return out, lse


def paged_attention(query, key_cache, value_cache, block_table, context_lens, *, scale: Optional[float] = None,
                    softcap: Optional[float] = None, window_left: int = -1, alibi_slopes=None, sinks=None,
                    k_scale: Optional[float] = None, v_scale: Optional[float] = None, kv_layout: str = "NHD",
                    return_lse: bool = False, executor: str = "auto", num_threads: int = 0):
    """``torch.ops.mixpa.paged_attention`` with :func:`mixpa.paged_attention`'s return convention:
    ``out`` (float32, the query's shape, e.g. [batch, num_heads, head_dim]), or ``(out, lse)`` (lse
    float32 [batch, (q_len,) num_heads]) with ``return_lse=True``. Inputs: torch CPU tensors, shapes
    and dtypes as in mixpa.paged_attention (query bf16 / float16 [batch, (q_len,) num_heads,
    head_dim]; caches bf16 / float16 / float8_e4m3fn / float8_e5m2 [num_blocks, block_size,
    num_kv_heads, head_dim] for NHD, [num_blocks, num_kv_heads, block_size, head_dim] for HND;
    block_table int32 / int64 [batch, max_blocks_per_req]; context_lens [batch]; alibi_slopes /
    sinks float32 [num_heads]). Traceable by torch.compile(fullgraph=True)."""
    out, lse = torch.ops.mixpa.paged_attention(query, key_cache, value_cache, block_table, context_lens, scale=scale,
                                               softcap=softcap, window_left=window_left, alibi_slopes=alibi_slopes,
                                               sinks=sinks, k_scale=k_scale, v_scale=v_scale,
                                               kv_layout=kv_layout, return_lse=return_lse,
                                               executor=executor, num_threads=num_threads)
    return (out, lse) if return_lse else out
