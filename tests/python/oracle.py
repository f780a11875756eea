"""Test helpers: random paged problems and exact float64 attention (the oracle; pure NumPy,
independent of the C++ core)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest

BF16 = np.dtype(ml_dtypes.bfloat16)
ATOL = RTOL = 2e-3  # SPEC §1's check against exact float64


@dataclass
class Problem:
    query: np.ndarray
    key_cache: np.ndarray
    value_cache: np.ndarray
    block_table: np.ndarray
    context_lens: np.ndarray

    def inputs(self):
        return (self.query, self.key_cache, self.value_cache, self.block_table, self.context_lens)


def random_problem(rng, batch=3, heads=8, kv_heads=2, head_dim=64, block_size=16, lens=(40, 0, 17),
                   num_blocks=None, max_blocks=None, shared=True) -> Problem:
    """A random problem. shared=True draws page ids with replacement (requests share pages, as the
    origin test does); shared=False gives each request its own pages. Unused table entries hold
    garbage, which must never be read."""
    lens = np.array([lens[i % len(lens)] for i in range(batch)], dtype=np.int32)
    pages_needed = [-(-int(n) // block_size) for n in lens]
    max_blocks = max_blocks or max(1, max(pages_needed) + 1)
    if num_blocks is None:
        num_blocks = max(1, sum(pages_needed)) + (0 if shared else 2)
    table = np.full((batch, max_blocks), -7, dtype=np.int32)  # garbage past each request's pages
    free = list(rng.permutation(num_blocks))
    for b, n in enumerate(pages_needed):
        table[b, :n] = rng.integers(0, num_blocks, n) if shared else [free.pop() for _ in range(n)]
    q = rng.uniform(-0.5, 0.5, (batch, heads, head_dim)).astype(BF16)
    k = rng.uniform(-0.5, 0.5, (num_blocks, block_size, kv_heads, head_dim)).astype(BF16)
    v = rng.uniform(-1, 1, (num_blocks, block_size, kv_heads, head_dim)).astype(BF16)
    return Problem(q, k, v, table, lens)


def exact_attention(query, key_cache, value_cache, block_table, context_lens, scale=None) -> np.ndarray:
    """SPEC §1 in float64 over the bf16 inputs: the test oracle (independent of the C++ core)."""
    q = np.asarray(query).astype(np.float64)
    batch, heads, d = q.shape
    _, block_size, kv_heads, _ = key_cache.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    group = heads // kv_heads
    out = np.zeros((batch, heads, d))
    for b in range(batch):
        n = int(context_lens[b])
        if n == 0:
            continue
        pages = block_table[b, :-(-n // block_size)]
        k = np.asarray(key_cache[pages]).astype(np.float64).reshape(-1, kv_heads, d)[:n]
        v = np.asarray(value_cache[pages]).astype(np.float64).reshape(-1, kv_heads, d)[:n]
        k = np.repeat(k, group, axis=1)  # [n, heads, d]
        v = np.repeat(v, group, axis=1)
        s = scale * np.einsum("hd,nhd->hn", q[b], k)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[b] = np.einsum("hn,nhd->hd", p, v)
    return out


def assert_close_to_exact(out, ref):
    out = np.asarray(out, dtype=np.float64)
    excess = np.abs(out - ref) - (ATOL + RTOL * np.abs(ref))
    bad = ~(excess <= 0)  # NaN counts as a failure
    assert not bad.any(), (f"{int(bad.sum())} elements outside 2e-3 + 2e-3|ref|; max abs error "
                           f"{np.nanmax(np.abs(out - ref)):.3g} at {np.unravel_index(np.nanargmax(excess), out.shape)}")


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed: the torch path is not tested here")
