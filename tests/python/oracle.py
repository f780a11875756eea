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


E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
F16 = np.dtype(np.float16)


def serving_problem(rng, kv_dtype=BF16, query_dtype=BF16, q_len=1, batch=3, heads=8, kv_heads=2, head_dim=64,
                    block_size=16, lens=(40, 0, 17), k_scale=None, v_scale=None, index_dtype=np.int32) -> Problem:
    """A random SPEC §6 problem: the query [batch, q_len, heads, head_dim] when q_len > 1 (rank 3 for
    q_len 1), caches of kv_dtype (fp8 values stored divided by their scales, so the dequantised
    ones keep the usual ranges), int32 or int64 indices. Context lengths are 0 or >= q_len."""
    lens = tuple(0 if n == 0 else max(n, q_len) for n in lens)
    p = random_problem(rng, batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                       block_size=block_size, lens=lens)
    qshape = (batch, heads, head_dim) if q_len == 1 else (batch, q_len, heads, head_dim)
    p.query = rng.uniform(-0.5, 0.5, qshape).astype(query_dtype)
    ks = 1.0 if k_scale is None else k_scale
    vs = 1.0 if v_scale is None else v_scale
    p.key_cache = (np.asarray(p.key_cache, np.float64) / ks).astype(kv_dtype)
    p.value_cache = (np.asarray(p.value_cache, np.float64) / vs).astype(kv_dtype)
    p.block_table = p.block_table.astype(index_dtype)
    p.context_lens = p.context_lens.astype(index_dtype)
    return p


def exact_serving(query, key_cache, value_cache, block_table, context_lens, scale=None, k_scale=None, v_scale=None,
                  window_left=-1, softcap=None, alibi=None, sinks=None):
    """SPEC §6 in float64 over the dequantised inputs (k_scale * K, v_scale * V): (out, lse) of the
    query's shape (lse without head_dim), row p of q_len at position n - q_len + p seeing tokens
    [lo, pos], -inf lse and zeros for a row that sees none. Independent of the C++ core."""
    q = np.asarray(query).astype(np.float64)
    rank3 = q.ndim == 3
    if rank3:
        q = q[:, None]
    batch, q_len, heads, d = q.shape
    _, bs, kvh, _ = key_cache.shape
    group = heads // kvh
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    ks = 1.0 if k_scale is None else k_scale
    vs = 1.0 if v_scale is None else v_scale
    out = np.zeros((batch, q_len, heads, d))
    lse = np.full((batch, q_len, heads), -np.inf)
    for b in range(batch):
        n = int(context_lens[b])
        if n == 0:
            continue
        pages = np.asarray(block_table[b, :-(-n // bs)]).astype(np.int64)
        k_all = ks * np.asarray(key_cache[pages]).astype(np.float64).reshape(-1, kvh, d)[:n]
        v_all = vs * np.asarray(value_cache[pages]).astype(np.float64).reshape(-1, kvh, d)[:n]
        for p in range(q_len):
            pos = n - q_len + p
            lo = 0 if window_left < 0 else max(0, pos - window_left)
            k = np.repeat(k_all[lo:pos + 1], group, axis=1)
            v = np.repeat(v_all[lo:pos + 1], group, axis=1)
            x = scale * np.einsum("hd,nhd->hn", q[b, p], k)
            if softcap:
                x = softcap * np.tanh(x / softcap)
            if alibi is not None:
                x = x + np.asarray(alibi, np.float64)[:, None] * (np.arange(lo, pos + 1) - pos)[None, :]
            m = x.max(axis=1, keepdims=True)
            e = np.exp(x - m)
            denom = e.sum(axis=1)
            lse[b, p] = m[:, 0] + np.log(denom)
            if sinks is not None:
                denom = denom + np.exp(np.asarray(sinks, np.float64) - m[:, 0])
            out[b, p] = np.einsum("hn,nhd->hd", e, v) / denom[:, None]
    if rank3:
        return out[:, 0], lse[:, 0]
    return out, lse


def assert_lse_close_to_exact(lse, ref):
    """SPEC §6's lse check: |lse - ref| <= 4e-3 + 2e-3|ref| where finite, -inf exactly elsewhere."""
    lse = np.asarray(lse, np.float64)
    inf = np.isneginf(ref)
    assert np.array_equal(np.isneginf(lse), inf), "lse is -inf exactly where no token is visible"
    err = np.abs(lse[~inf] - ref[~inf]) - (4e-3 + 2e-3 * np.abs(ref[~inf]))
    assert (err <= 0).all(), f"lse off by up to {np.abs(lse[~inf] - ref[~inf]).max():.3g}"
