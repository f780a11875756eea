"""SPEC §6 dtypes and shapes from Python: float16 queries and caches, ml_dtypes / torch fp8 caches
with k_scale / v_scale, rank-4 queries (q_len), int64 indices read in place, out of float32 /
bfloat16 / float16, lse [batch, (q_len,) heads], against the NumPy float64 oracle on every CPU-side
executor; case files of these dtypes; every invalid input a ValueError with the core's message."""
from __future__ import annotations

import numpy as np
import pytest

import mixpa
from mixpa import _mixpa
from oracle import (BF16, E4M3, E5M2, F16, assert_close_to_exact, assert_lse_close_to_exact, exact_serving,
                    serving_problem, torch_or_skip)

EXECUTORS = [e for e in ("reference", "sim", "cpu", "auto") if e in mixpa.executors() or e == "auto"]

CASES = {
    "f16_cache": dict(kv_dtype=F16),
    "f16_all_q4": dict(kv_dtype=F16, query_dtype=F16, q_len=4),
    "e4m3_scales_q3_gqa": dict(kv_dtype=E4M3, q_len=3, heads=16, kv_heads=4, k_scale=0.5, v_scale=2.0),
    "e5m2_f16q_hd80_bs8": dict(kv_dtype=E5M2, query_dtype=F16, head_dim=80, block_size=8, k_scale=1.5),
    "bf16_q16_int64_bs1": dict(q_len=16, head_dim=32, block_size=1, lens=(16, 0, 33), index_dtype=np.int64),
    "e4m3_q2_hd96_int64": dict(kv_dtype=E4M3, q_len=2, head_dim=96, block_size=32, lens=(70, 2, 0),
                               index_dtype=np.int64, v_scale=0.25),
}


def run_or_unsupported(executor, *args, **kwargs):
    """paged_attention, or None when a named executor says it does not compute this problem yet."""
    try:
        return mixpa.paged_attention(*args, executor=executor, **kwargs)
    except ValueError as e:
        if executor == "cpu" and "not supported by this executor" in str(e):
            return None
        raise


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("name", list(CASES))
def test_serving_dtypes_and_shapes_match_oracle(rng, executor, name):
    spec = dict(CASES[name])
    p = serving_problem(rng, **spec)
    scales = {k: spec[k] for k in ("k_scale", "v_scale") if k in spec}
    got = run_or_unsupported(executor, *p.inputs(), scale=0.125, return_lse=True, **scales)
    if got is None:
        pytest.skip(f"cpu does not compute {name} yet")
    out, lse = got
    ref, ref_lse = exact_serving(*p.inputs(), scale=0.125, **scales)
    assert out.dtype == np.float32 and out.shape == p.query.shape
    assert lse.shape == p.query.shape[:-1]
    assert_close_to_exact(out, ref)
    assert_lse_close_to_exact(lse, ref_lse)


def test_serving_with_variants_matches_oracle(rng):
    p = serving_problem(rng, kv_dtype=E4M3, q_len=4, heads=32, kv_heads=8, lens=(4, 37, 0, 100), batch=4,
                        k_scale=0.5, v_scale=2.0)
    alibi = rng.uniform(0.01, 0.2, 32).astype(np.float32)
    sinks = rng.uniform(-1, 2, 32).astype(np.float32)
    kw = dict(scale=0.125, k_scale=0.5, v_scale=2.0, window_left=20, softcap=30.0)
    ref, ref_lse = exact_serving(*p.inputs(), alibi=alibi, sinks=sinks, **kw)
    outs = {}
    for executor in EXECUTORS:
        got = run_or_unsupported(executor, *p.inputs(), alibi_slopes=alibi, sinks=sinks, return_lse=True, **kw)
        if got is None:
            continue
        out, lse = got
        assert_close_to_exact(out, ref)
        assert_lse_close_to_exact(lse, ref_lse)
        outs[executor] = out
    np.testing.assert_array_equal(outs["sim"], outs["reference"])  # the sim is the reference, bit for bit


def test_scales_change_the_result(rng):
    p = serving_problem(rng, kv_dtype=E4M3, k_scale=0.5, v_scale=2.0)
    a = mixpa.paged_attention(*p.inputs(), executor="reference", k_scale=0.5, v_scale=2.0)
    b = mixpa.paged_attention(*p.inputs(), executor="reference")
    assert not np.array_equal(a, b)
    c = mixpa.paged_attention(*p.inputs(), executor="reference", k_scale=0.5)
    np.testing.assert_allclose(a, 2.0 * c, rtol=1e-6, atol=1e-7)  # v_scale scales the output


def test_inputs_are_read_in_place(rng):
    p = serving_problem(rng, kv_dtype=E5M2, query_dtype=F16, q_len=2, index_dtype=np.int64)
    mixpa.paged_attention(*p.inputs(), executor="reference")
    seen = {name: (ptr, shape) for name, ptr, shape, _ in _mixpa._last_call()}
    for name, arr in zip(("query", "key_cache", "value_cache", "block_table", "context_lens"), p.inputs()):
        assert seen[name][0] == arr.__array_interface__["data"][0], f"{name} was copied"
        assert tuple(seen[name][1]) == arr.shape


@pytest.mark.parametrize("dtype", [BF16, F16])
def test_out_may_be_bf16_or_f16(rng, dtype):
    p = serving_problem(rng, kv_dtype=E4M3, q_len=3, k_scale=0.5)
    f32 = mixpa.paged_attention(*p.inputs(), executor="reference", k_scale=0.5)
    out = np.full(p.query.shape, np.nan, dtype=dtype)
    got, lse = mixpa.paged_attention(*p.inputs(), executor="reference", k_scale=0.5, out=out, return_lse=True)
    assert got is out
    np.testing.assert_array_equal(out.view(np.uint16), f32.astype(dtype).view(np.uint16))  # rounded to nearest
    assert lse.shape == p.query.shape[:-1]


def test_out_given_as_float32_rank4(rng):
    p = serving_problem(rng, q_len=4)
    out = np.full(p.query.shape, np.nan, dtype=np.float32)
    assert mixpa.paged_attention(*p.inputs(), executor="sim", out=out) is out
    np.testing.assert_array_equal(out, mixpa.paged_attention(*p.inputs(), executor="reference"))


def _rejects(p, needle, **kwargs):
    with pytest.raises(ValueError) as info:
        mixpa.paged_attention(*p.inputs(), executor="reference", **kwargs)
    msg = str(info.value)
    assert needle in msg, msg
    assert "\n" not in msg


def test_invalid_serving_inputs_raise_value_error(rng):
    bf = serving_problem(rng)
    fp8 = serving_problem(rng, kv_dtype=E4M3, q_len=2)
    _rejects(bf, "k_scale: given for a BF16 cache", k_scale=2.0)
    _rejects(serving_problem(rng, kv_dtype=F16), "v_scale: given for a F16 cache", v_scale=2.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        _rejects(fp8, "k_scale: ", k_scale=bad)
        _rejects(fp8, "v_scale: ", v_scale=bad)
    # q_len outside 1..16, and a context shorter than q_len.
    p = serving_problem(rng, q_len=16, lens=(40, 0, 17))
    p.query = np.concatenate([p.query, p.query[:, :1]], axis=1)
    _rejects(p, "query: q_len is 17")
    p = serving_problem(rng, q_len=4, lens=(40, 0, 17))
    p.context_lens[0] = 2
    _rejects(p, "context_lens[0] = 2 is below q_len 4")
    # int64 values outside int32 range; index dtypes mixed; cache dtypes mixed.
    p = serving_problem(rng, index_dtype=np.int64)
    p.block_table[0, 0] = 1 << 33
    _rejects(p, "block_table[0][0] = 8589934592 is outside int32 range")
    p = serving_problem(rng, index_dtype=np.int64)
    p.context_lens = p.context_lens.astype(np.int32)
    _rejects(p, "context_lens: dtype is I32 but block_table is I64")
    p = serving_problem(rng, kv_dtype=E4M3)
    p.value_cache = p.value_cache.astype(E5M2)
    _rejects(p, "value_cache: dtype is F8_E5M2 but key_cache is F8_E4M3")
    p = serving_problem(rng)
    p.query = p.query.astype(E4M3)
    _rejects(p, "query: dtype is F8_E4M3, expected BF16 or F16")
    # out: the query's shape and an allowed dtype; a 16-bit out must not overlap an input.
    _rejects(fp8, "out: shape", out=np.zeros(fp8.query.shape[:1] + fp8.query.shape[2:], np.float32))
    _rejects(fp8, "out: dtype is float64, expected F32, BF16 or F16", out=np.zeros(fp8.query.shape))
    shared = np.zeros(fp8.query.size * 2, np.uint16)
    p = serving_problem(rng, q_len=2)
    p.query = shared[: p.query.size].view(BF16).reshape(p.query.shape)
    _rejects(p, "out: overlaps the memory of query", out=shared[: p.query.size].view(F16).reshape(p.query.shape))


@pytest.mark.skipif(not getattr(_mixpa, "has_io", False), reason="no safetensors I/O in this build")
def test_case_files_of_serving_dtypes_round_trip(tmp_path, rng):
    p = serving_problem(rng, kv_dtype=E5M2, query_dtype=F16, q_len=3, index_dtype=np.int64, k_scale=0.5,
                        v_scale=4.0)
    path = tmp_path / "c.safetensors"
    mixpa.save_case(path, query=p.query, key_cache=p.key_cache, value_cache=p.value_cache,
                    block_table=p.block_table, context_lens=p.context_lens, scale=0.125, k_scale=0.5, v_scale=4.0)
    c = mixpa.load_case(path)
    assert c.query.dtype == F16 and c.query.shape == p.query.shape
    assert c.key_cache.dtype == E5M2 and c.block_table.dtype == np.int64
    assert (c.k_scale, c.v_scale) == (0.5, 4.0)
    np.testing.assert_array_equal(c.key_cache.view(np.uint8), p.key_cache.view(np.uint8))
    np.testing.assert_array_equal(c.run(executor="reference"),
                                  mixpa.paged_attention(*p.inputs(), scale=0.125, k_scale=0.5, v_scale=4.0,
                                                        executor="reference"))
    with pytest.raises(ValueError, match="k_scale: given for a BF16 cache"):
        bf = serving_problem(rng)
        mixpa.save_case(tmp_path / "bad.safetensors", query=bf.query, key_cache=bf.key_cache,
                        value_cache=bf.value_cache, block_table=bf.block_table, context_lens=bf.context_lens,
                        scale=1.0, k_scale=2.0)
    assert not (tmp_path / "bad.safetensors").exists()


def test_torch_serving_dtypes(rng):
    torch = torch_or_skip()
    p = serving_problem(rng, kv_dtype=E4M3, q_len=2, index_dtype=np.int64, k_scale=0.5)
    t = [torch.from_numpy(p.query.view(np.int16)).view(torch.bfloat16),
         torch.from_numpy(p.key_cache.view(np.uint8)).view(torch.float8_e4m3fn),
         torch.from_numpy(p.value_cache.view(np.uint8)).view(torch.float8_e4m3fn),
         torch.from_numpy(p.block_table), torch.from_numpy(p.context_lens)]
    want = mixpa.paged_attention(*p.inputs(), executor="reference", k_scale=0.5)
    got = mixpa.paged_attention(*t, executor="reference", k_scale=0.5)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), want)
    seen = {name: ptr for name, ptr, _, _ in _mixpa._last_call()}
    assert seen["key_cache"] == t[1].data_ptr() and seen["block_table"] == t[3].data_ptr()
    for out_dtype in (torch.bfloat16, torch.float16):
        out = torch.empty(p.query.shape, dtype=out_dtype)
        mixpa.paged_attention(*t, executor="reference", k_scale=0.5, out=out)
        np.testing.assert_array_equal(out.float().numpy(), torch.from_numpy(want).to(out_dtype).float().numpy())
    q16 = torch.from_numpy(p.query.astype(np.float16))
    ref16 = mixpa.paged_attention(p.query.astype(np.float16), *p.inputs()[1:], executor="reference", k_scale=0.5)
    np.testing.assert_array_equal(mixpa.paged_attention(q16, *t[1:], executor="reference", k_scale=0.5).numpy(), ref16)
