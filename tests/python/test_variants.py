"""SPEC §6's variants from Python: softcap, window_left, alibi_slopes, sinks, return_lse and
merge_states, against an independent NumPy float64 oracle, on every CPU-side executor."""
from __future__ import annotations

import math

import numpy as np
import pytest

import mixpa
from oracle import assert_close_to_exact, random_problem, torch_or_skip

EXECUTORS = [e for e in ("reference", "sim", "cpu") if e in mixpa.executors()]


def exact_variant(p, scale, softcap=None, window_left=-1, alibi=None, sinks=None):
    """SPEC §6 in float64: (out, lse) with -inf lse for a row that sees no token."""
    q = np.asarray(p.query).astype(np.float64)
    batch, heads, d = q.shape
    _, bs, kvh, _ = p.key_cache.shape
    group = heads // kvh
    out = np.zeros((batch, heads, d))
    lse = np.full((batch, heads), -np.inf)
    for b in range(batch):
        n = int(p.context_lens[b])
        if n == 0:
            continue
        pos = n - 1
        lo = 0 if window_left < 0 else max(0, pos - window_left)
        pages = p.block_table[b, :-(-n // bs)]
        k = np.asarray(p.key_cache[pages]).astype(np.float64).reshape(-1, kvh, d)[lo:n]
        v = np.asarray(p.value_cache[pages]).astype(np.float64).reshape(-1, kvh, d)[lo:n]
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        x = scale * np.einsum("hd,nhd->hn", q[b], k)
        if softcap:
            x = softcap * np.tanh(x / softcap)
        if alibi is not None:
            x = x + np.asarray(alibi, np.float64)[:, None] * (np.arange(lo, n) - pos)[None, :]
        m = x.max(axis=1, keepdims=True)
        e = np.exp(x - m)
        denom = e.sum(axis=1)
        lse[b] = m[:, 0] + np.log(denom)
        if sinks is not None:
            denom = denom + np.exp(np.asarray(sinks, np.float64) - m[:, 0])
        out[b] = np.einsum("hn,nhd->hd", e, v) / denom[:, None]
    return out, lse


def assert_lse_close(lse, ref):
    lse = np.asarray(lse, np.float64)
    inf = np.isneginf(ref)
    assert np.array_equal(np.isneginf(lse), inf), "lse is -inf exactly where no token is visible"
    err = np.abs(lse[~inf] - ref[~inf]) - (4e-3 + 2e-3 * np.abs(ref[~inf]))
    assert (err <= 0).all(), f"lse off by up to {np.abs(lse[~inf] - ref[~inf]).max():.3g}"


VARIANTS = {
    "softcap": dict(softcap=1.5),
    "window_in_page": dict(window_left=5),
    "window_cross": dict(window_left=37),
    "window_past_ctx": dict(window_left=100000),
    "alibi": dict(alibi=True),
    "sinks": dict(sinks=True),
    "all": dict(softcap=3.0, window_left=20, alibi=True, sinks=True),
}


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_matches_oracle(rng, executor, name):
    cfg = VARIANTS[name]
    p = random_problem(rng, batch=4, heads=16, kv_heads=4, head_dim=64, block_size=16, lens=(70, 0, 1, 33))
    heads = p.query.shape[1]
    alibi = (2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)).astype(np.float32) if cfg.get("alibi") else None
    sinks = np.linspace(-2, 2, heads).astype(np.float32) if cfg.get("sinks") else None
    scale = 0.5
    out, lse = mixpa.paged_attention(*p.inputs(), scale=scale, softcap=cfg.get("softcap"),
                                     window_left=cfg.get("window_left", -1), alibi_slopes=alibi, sinks=sinks,
                                     return_lse=True, executor=executor)
    ref, ref_lse = exact_variant(p, scale, cfg.get("softcap"), cfg.get("window_left", -1), alibi, sinks)
    assert out.shape == ref.shape and lse.shape == (4, heads) and lse.dtype == np.float32
    assert_close_to_exact(out, ref)
    assert_lse_close(lse, ref_lse)


def test_without_return_lse_returns_out_only(rng):
    p = random_problem(rng)
    out = mixpa.paged_attention(*p.inputs(), executor="reference")
    assert isinstance(out, np.ndarray) and out.shape == p.query.shape


def test_merge_states_of_two_halves_is_the_whole(rng):
    p = random_problem(rng, batch=1, heads=8, kv_heads=2, head_dim=64, block_size=16, lens=(96,), shared=False)
    whole, lse_whole = mixpa.paged_attention(*p.inputs(), scale=0.3, return_lse=True, executor="reference")
    halves = []
    for first, n in ((0, 48), (3, 48)):  # pages 0-2 and 3-5
        table = np.zeros_like(p.block_table)
        table[0, :3] = p.block_table[0, first:first + 3]
        halves.append(mixpa.paged_attention(p.query, p.key_cache, p.value_cache, table,
                                            np.array([n], np.int32), scale=0.3, return_lse=True,
                                            executor="reference"))
    (o_a, l_a), (o_b, l_b) = halves
    o, lse = mixpa.merge_states(o_a, l_a, o_b, l_b)
    assert_close_to_exact(o, whole.astype(np.float64))
    np.testing.assert_allclose(lse, lse_whole, atol=4e-3, rtol=2e-3)


def test_merge_states_empty_sides_and_errors():
    o = np.ones((2, 4), np.float32)
    nan = np.full((2, 4), np.nan, np.float32)
    ninf = np.full(2, -np.inf, np.float32)
    m, l = mixpa.merge_states(nan, ninf, o, np.zeros(2, np.float32))
    assert np.array_equal(m, o) and np.array_equal(l, np.zeros(2, np.float32))
    m, l = mixpa.merge_states(nan, ninf, nan, ninf)
    assert not m.any() and np.isneginf(l).all()
    with pytest.raises(ValueError, match="lse"):
        mixpa.merge_states(o, np.zeros(3, np.float32), o, np.zeros(3, np.float32))


@pytest.mark.parametrize("kwargs, needle", [
    (dict(softcap=-1.0), "softcap"),
    (dict(softcap=float("nan")), "softcap"),
    (dict(window_left=-2), "window_left"),
    (dict(alibi_slopes=np.zeros(3, np.float32)), "alibi_slopes"),
    (dict(sinks=np.array([np.inf] * 8, np.float32)), "sinks"),
    (dict(sinks=np.zeros(8, np.float64)), "sinks"),
])
def test_invalid_variant_raises_value_error(rng, kwargs, needle):
    p = random_problem(rng)
    with pytest.raises(ValueError, match=needle):
        mixpa.paged_attention(*p.inputs(), executor="reference", **kwargs)


def test_torch_variant_tensors(rng):
    torch = torch_or_skip()
    p = random_problem(rng, heads=8, kv_heads=2)
    t = [torch.from_numpy(np.asarray(x).view(np.int16)).view(torch.bfloat16) if x.dtype.itemsize == 2 and
         x.dtype != np.int16 else torch.from_numpy(np.asarray(x)) for x in p.inputs()]
    sinks = torch.linspace(-1, 1, 8)
    out, lse = mixpa.paged_attention(*t, sinks=sinks, softcap=2.0, return_lse=True, executor="reference")
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
    ref, ref_lse = exact_variant(p, 1 / math.sqrt(64), 2.0, -1, None, sinks.numpy())
    assert_close_to_exact(out.numpy(), ref)
    assert_lse_close(lse.numpy(), ref_lse)
