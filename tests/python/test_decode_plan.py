"""mixpa.DecodePlan: validated and planned once per decode step, run per layer; bitwise
paged_attention for every layer, its own copy of block_table / context_lens, per-layer shape
checks, torch tensors where torch is installed."""
import numpy as np
import pytest

import mixpa
from oracle import assert_close_to_exact, exact_attention, random_problem


def layers(rng, n=3, **kw):
    """n layers of one decode step: own query and KV cache, shared block table and lengths."""
    first = random_problem(rng, **kw)
    out = [first]
    for _ in range(n - 1):
        p = random_problem(rng, **kw)
        p.block_table, p.context_lens = first.block_table, first.context_lens
        out.append(p)
    return out


@pytest.mark.parametrize("executor", ["auto", "cpu", "reference"])
def test_every_layer_is_bitwise_paged_attention(rng, executor):
    steps = layers(rng, batch=3, heads=16, kv_heads=4, head_dim=64, block_size=16, lens=(40, 0, 170))
    plan = mixpa.DecodePlan(*steps[0].inputs(), executor=executor)
    assert plan.executor in mixpa.executors()
    if plan.executor == "cpu":
        assert plan.kernels and plan.kernels_reason.startswith(plan.kernels + ": ")
    for p in steps * 2:
        got = plan.run(p.query, p.key_cache, p.value_cache)
        np.testing.assert_array_equal(got, mixpa.paged_attention(*p.inputs(), executor=executor))
        assert_close_to_exact(got, exact_attention(*p.inputs()))


def test_out_is_written_in_place(rng):
    p = random_problem(rng)
    plan = mixpa.DecodePlan(*p.inputs())
    out = np.full(p.query.shape, np.nan, dtype=np.float32)
    assert plan.run(p.query, p.key_cache, p.value_cache, out=out) is out
    np.testing.assert_array_equal(out, mixpa.paged_attention(*p.inputs()))


def test_plan_keeps_its_own_block_table_and_lengths(rng):
    p = random_problem(rng)
    plan = mixpa.DecodePlan(*p.inputs())
    want = mixpa.paged_attention(*p.inputs())
    p.block_table[:] = 1 << 30  # would be invalid input now
    p.context_lens[:] = -1
    np.testing.assert_array_equal(plan.run(p.query, p.key_cache, p.value_cache), want)


def test_layer_of_another_shape_is_rejected(rng):
    p = random_problem(rng, block_size=16)
    other = random_problem(rng, block_size=32)
    plan = mixpa.DecodePlan(*p.inputs())
    with pytest.raises(ValueError, match="key_cache"):
        plan.run(p.query, other.key_cache, p.value_cache)
    with pytest.raises(ValueError, match="query"):
        plan.run(p.query[:1], p.key_cache, p.value_cache)
    with pytest.raises(ValueError, match="value_cache"):
        plan.run(p.query, p.key_cache, None)
    bad = random_problem(rng)
    bad.block_table[0, 0] = -1
    with pytest.raises(ValueError, match="block_table"):
        mixpa.DecodePlan(*bad.inputs())


def test_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    p = random_problem(rng)
    as_torch = [torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype.itemsize == 2 and a.dtype != np.int16
                else torch.from_numpy(a) for a in p.inputs()]
    plan = mixpa.DecodePlan(*as_torch)
    got = plan.run(*as_torch[:3])
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), mixpa.paged_attention(*p.inputs()))
