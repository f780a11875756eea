"""Agreement with exact float64 attention (SPEC §1's check) on random shapes, every executor."""
import numpy as np
import pytest

import mixpa
from oracle import assert_close_to_exact, exact_attention, random_problem

# (batch, heads, kv_heads, head_dim, block_size, lens, shared pages)
SHAPES = [
    (3, 20, 4, 64, 16, (0, 1, 37), True),        # odd head count, GQA 5, lengths 0 and 1
    (4, 32, 4, 128, 32, (1, 100, 64, 33), True),  # GQA 32/4
    (2, 20, 1, 256, 64, (130, 0), True),          # MQA, head_dim 256
    (2, 7, 7, 64, 128, (1, 300), False),          # MHA, odd heads, one page per 128 tokens
    (5, 16, 1, 128, 16, (513, 2, 16, 17, 0), True),  # many pages, page-edge lengths
    (1, 3, 1, 64, 32, (0,), True),                # all requests empty
]


@pytest.mark.parametrize("executor", mixpa.executors())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"b{s[0]}h{s[1]}kv{s[2]}d{s[3]}bs{s[4]}")
@pytest.mark.parametrize("scale", [None, 1.0])
def test_matches_exact_attention(rng, executor, shape, scale):
    batch, heads, kv_heads, head_dim, block_size, lens, shared = shape
    p = random_problem(rng, batch, heads, kv_heads, head_dim, block_size, lens, shared=shared)
    out = mixpa.paged_attention(*p.inputs(), scale=scale, executor=executor)
    assert out.shape == (batch, heads, head_dim) and out.dtype == np.float32
    ref = exact_attention(*p.inputs(), scale=scale)
    assert_close_to_exact(out, ref)
    empty = np.asarray(p.context_lens) == 0
    assert np.all(out[empty] == 0), "a request with context length 0 must yield zeros"


@pytest.mark.parametrize("seed", range(4))
def test_random_shapes(seed):
    rng = np.random.default_rng(seed)
    kv_heads = int(rng.choice([1, 2, 4]))
    heads = kv_heads * int(rng.integers(1, 9))
    head_dim = int(rng.choice([64, 128, 256]))
    block_size = int(rng.choice([16, 32, 64, 128]))
    batch = int(rng.integers(1, 6))
    lens = tuple(int(x) for x in rng.integers(0, 400, batch))
    p = random_problem(rng, batch, heads, kv_heads, head_dim, block_size, lens, shared=bool(seed % 2))
    assert_close_to_exact(mixpa.paged_attention(*p.inputs()), exact_attention(*p.inputs()))


def test_sharp_softmax(rng):
    p = random_problem(rng, 2, 8, 2, 128, 32, (200, 77))
    assert_close_to_exact(mixpa.paged_attention(*p.inputs(), scale=8.0), exact_attention(*p.inputs(), scale=8.0))


def test_unused_rows_and_pages_may_hold_nan(rng):
    # Rows past a request's context in its last page, and pages no request uses, take no part.
    p = random_problem(rng, 3, 8, 2, 64, 16, (40, 0, 17), shared=False)
    clean = mixpa.paged_attention(*p.inputs())
    used = set()
    for b, n in enumerate(p.context_lens):
        pages = p.block_table[b, :-(-int(n) // 16)]
        used.update(int(x) for x in pages)
        if n % 16:
            p.key_cache[pages[-1], n % 16:] = np.nan
            p.value_cache[pages[-1], n % 16:] = np.inf
    for page in set(range(p.key_cache.shape[0])) - used:
        p.key_cache[page] = np.nan
        p.value_cache[page] = np.nan
    dirty = mixpa.paged_attention(*p.inputs())
    np.testing.assert_array_equal(dirty, clean)
