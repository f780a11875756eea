"""Zero-copy NumPy / PyTorch interop: the core sees the callers' own memory (pointers and strides
as given), out= is written in place, torch and NumPy inputs give identical results."""
import numpy as np
import pytest

import mixpa
from oracle import BF16, assert_close_to_exact, exact_attention, random_problem

NAMES = ("query", "key_cache", "value_cache", "block_table", "context_lens")


def last_call():
    return {name: (ptr, tuple(shape), tuple(strides)) for name, ptr, shape, strides in mixpa._mixpa._last_call()}


def test_inputs_are_not_copied(rng):
    p = random_problem(rng, 4, 32, 4, 128, 32, (1, 100, 64, 33))
    mixpa.paged_attention(*p.inputs())
    seen = last_call()
    for name, array in zip(NAMES, p.inputs()):
        ptr, shape, strides = seen[name]
        assert ptr == array.ctypes.data, f"{name} was copied"
        assert shape == array.shape
        assert strides == tuple(s // array.itemsize for s in array.strides)


def test_out_is_written_in_place(rng):
    p = random_problem(rng)
    out = np.full((3, 8, 64), np.nan, dtype=np.float32)
    address = out.ctypes.data
    result = mixpa.paged_attention(*p.inputs(), out=out)
    assert result is out and out.ctypes.data == address
    assert last_call()["out"][0] == address
    np.testing.assert_array_equal(out, mixpa.paged_attention(*p.inputs()))
    assert_close_to_exact(out, exact_attention(*p.inputs()))


def test_strided_caches_are_accepted_without_copy(rng):
    # K and V interleaved in one buffer [num_blocks, 2, block_size, kv_heads, head_dim], as a
    # fused KV cache stores them: both views are strided, head_dim stride 1.
    p = random_problem(rng, 3, 8, 2, 64, 16, (40, 0, 17))
    kv = np.stack([p.key_cache, p.value_cache], axis=1)
    k, v = kv[:, 0], kv[:, 1]
    assert not k.flags.c_contiguous
    dense = mixpa.paged_attention(*p.inputs())
    strided = mixpa.paged_attention(p.query, k, v, p.block_table, p.context_lens)
    np.testing.assert_array_equal(dense, strided)
    seen = last_call()
    page = 16 * 2 * 64
    assert seen["key_cache"] == (kv.ctypes.data, k.shape, (2 * page, 2 * 64, 64, 1))
    assert seen["value_cache"] == (kv.ctypes.data + page * 2, v.shape, (2 * page, 2 * 64, 64, 1))


def test_gil_is_released_while_running(rng):
    p = random_problem(rng)
    mixpa.paged_attention(*p.inputs())
    assert mixpa._mixpa._gil_held_during_last_run() is False


def test_results_are_deterministic(rng):
    p = random_problem(rng, 4, 32, 4, 128, 32, (1, 100, 64, 33))
    a = mixpa.paged_attention(*p.inputs())
    b = mixpa.paged_attention(*p.inputs())
    np.testing.assert_array_equal(a, b)


# ---- PyTorch ----

def to_torch(torch, array):
    if array.dtype == BF16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def test_torch_and_numpy_give_identical_results(rng):
    torch = pytest.importorskip("torch", reason="torch is not installed: torch path not tested")
    p = random_problem(rng, 4, 20, 4, 128, 16, (0, 1, 77, 300))
    from_numpy = mixpa.paged_attention(*p.inputs())
    tensors = [to_torch(torch, a) for a in p.inputs()]
    from_torch = mixpa.paged_attention(*tensors)
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float32
    np.testing.assert_array_equal(from_torch.numpy(), from_numpy)
    seen = last_call()
    for name, t in zip(NAMES, tensors):
        assert seen[name][0] == t.data_ptr(), f"{name} was copied"


def test_torch_out_and_strided_views(rng):
    torch = pytest.importorskip("torch", reason="torch is not installed: torch path not tested")
    p = random_problem(rng, 3, 8, 2, 64, 16, (40, 0, 17))
    q, k, v, bt, cl = (to_torch(torch, a) for a in p.inputs())
    kv = torch.stack([k, v], dim=1)  # fused KV cache, strided views
    out = torch.empty(3, 8, 64)
    result = mixpa.paged_attention(q, kv[:, 0], kv[:, 1], bt, cl, out=out)
    assert result is out
    assert last_call()["key_cache"][0] == kv.data_ptr()
    assert_close_to_exact(out.numpy(), exact_attention(*p.inputs()))


def test_torch_wrong_dtype_and_layout(rng):
    torch = pytest.importorskip("torch", reason="torch is not installed: torch path not tested")
    p = random_problem(rng)
    q, k, v, bt, cl = (to_torch(torch, a) for a in p.inputs())
    # float16 queries and int64 indices are valid (SPEC §6); float32 / float64 are not, and the
    # index tensors must share a dtype.
    with pytest.raises(ValueError, match="query: dtype is F32, expected BF16 or F16"):
        mixpa.paged_attention(q.float(), k, v, bt, cl)
    with pytest.raises(ValueError, match="block_table: dtype is F64, expected I32 or I64"):
        mixpa.paged_attention(q, k, v, bt.double(), cl)
    with pytest.raises(ValueError, match="context_lens: dtype is I32 but block_table is I64"):
        mixpa.paged_attention(q, k, v, bt.long(), cl)
    with pytest.raises(ValueError, match="query: must be contiguous"):
        mixpa.paged_attention(q.transpose(0, 1).contiguous().transpose(0, 1), k, v, bt, cl)
    with pytest.raises(ValueError, match="key_cache: head_dim stride"):
        mixpa.paged_attention(q, k.transpose(2, 3).contiguous().transpose(2, 3), v, bt, cl)


def test_torch_cuda_tensor(rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    p = random_problem(rng)
    tensors = [to_torch(torch, a).cuda() for a in p.inputs()]
    if "cuda" in mixpa.executors():
        pytest.skip("cuda executor present: device tensors are the cuda area's to test")
    with pytest.raises(ValueError, match="query: CUDA tensor given but this build has no cuda executor"):
        mixpa.paged_attention(*tensors)


def test_executors_and_auto(rng):
    names = mixpa.executors()
    assert isinstance(names, list) and "reference" in names and all(isinstance(n, str) for n in names)
    p = random_problem(rng)
    np.testing.assert_array_equal(mixpa.paged_attention(*p.inputs(), executor="auto"),
                                  mixpa.paged_attention(*p.inputs(), executor=names[0]))


def test_zeros_kv_cache_is_a_zeroed_huge_page_aligned_bf16_buffer_the_core_reads_in_place(rng):
    p = random_problem(rng, 4, 32, 4, 128, 32, (1, 100, 64, 33))
    k = mixpa.zeros_kv_cache(p.key_cache.shape)
    v = mixpa.zeros_kv_cache(p.value_cache.shape)
    assert k.dtype == BF16 and k.shape == p.key_cache.shape and k.flags.c_contiguous and k.flags.writeable
    assert not np.any(k.view(np.uint16))
    k[...] = p.key_cache
    v[...] = p.value_cache
    want = mixpa.paged_attention(p.query, p.key_cache, p.value_cache, p.block_table, p.context_lens)
    got = mixpa.paged_attention(p.query, k, v, p.block_table, p.context_lens)
    np.testing.assert_array_equal(got, want)
    assert last_call()["key_cache"][0] == k.ctypes.data  # read in place
    big = mixpa.zeros_kv_cache((64, 64, 8, 128))  # 8 MiB: at least kHugePageMinBytes
    assert big.ctypes.data % (2 << 20) == 0
    assert mixpa.zeros_kv_cache((0, 16, 1, 64)).size == 0
    with pytest.raises(ValueError, match="negative"):
        mixpa.zeros_kv_cache((2, -1, 1, 64))


def test_zeros_kv_cache_as_torch_shares_memory():
    torch = pytest.importorskip("torch")
    t = mixpa.zeros_kv_cache((4, 16, 2, 64), torch=True)
    assert t.dtype == torch.bfloat16 and tuple(t.shape) == (4, 16, 2, 64)
    assert not bool(t.any())
    t[1, 2, 1, 3] = 1.5
    assert float(t.flatten()[((1 * 16 + 2) * 2 + 1) * 64 + 3]) == 1.5
