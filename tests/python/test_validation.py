"""Every validation rule reachable from Python raises ValueError with the C++ message (mirrors
tests/core/validate_test.cpp), on one line, leaving `out` untouched; plus the binding's own checks
(non-arrays, unsupported dtypes, CUDA memory, bad `out`)."""
import ctypes

import numpy as np
import pytest

import mixpa
from oracle import BF16, random_problem

SENTINEL = 7.0


def fixture():
    """3 requests, 8 heads over 2 kv heads, head_dim 64, block_size 16, 12 pages, 4 per request."""
    p = random_problem(np.random.default_rng(11), 3, 8, 2, 64, 16, (40, 0, 17), num_blocks=12, max_blocks=4)
    return dict(query=p.query, key_cache=p.key_cache, value_cache=p.value_cache, block_table=p.block_table,
                context_lens=p.context_lens)


def call(t, out=None, **options):
    options.setdefault("executor", "reference")
    return mixpa.paged_attention(t["query"], t["key_cache"], t["value_cache"], t["block_table"], t["context_lens"],
                                 out=out, **options)


def expect_rejected(mutate, *fragments, out_shape=(3, 8, 64), **options):
    t = fixture()
    mutate(t)
    out = np.full(out_shape, SENTINEL, dtype=np.float32)
    with pytest.raises(ValueError) as info:
        call(t, out=out, **options)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in message {msg!r}"
    assert "\n" not in msg
    assert np.all(out == SENTINEL), "out was written before validation finished"
    return msg


def setitem(name, index, value):
    def mutate(t):
        t[name] = t[name].copy()
        t[name][index] = value
    return mutate


def replace(name, make):
    def mutate(t):
        t[name] = make(t[name])
    return mutate


def test_accepts_the_fixture():
    out = call(fixture())
    assert out.shape == (3, 8, 64) and np.isfinite(out).all()


def test_page_id_outside_range():
    expect_rejected(setitem("block_table", (0, 2), 12), "block_table[0][2] = 12 is outside [0, 12)")


def test_negative_page_id():
    expect_rejected(setitem("block_table", (2, 1), -1), "block_table[2][1] = -1 is outside [0, 12)")


def test_unused_pages_are_not_checked():
    t = fixture()
    t["block_table"][1, 0] = 999999  # request 1 has context 0
    t["block_table"][0, 3] = -5      # past request 0's 3 pages
    call(t)


def test_negative_context_length():
    expect_rejected(setitem("context_lens", 1, -3), "context_lens[1] = -3", "negative")


def test_context_longer_than_table():
    expect_rejected(setitem("context_lens", 2, 4 * 16 + 1), "context_lens[2]", "exceeds max_blocks_per_req * block_size")


def test_heads_not_multiple_of_kv_heads():
    expect_rejected(replace("query", lambda q: np.ascontiguousarray(q[:, :7])), "num_heads", "num_kv_heads",
                    "not a multiple", out_shape=(3, 7, 64))


def test_head_dim_mismatch():
    def mutate(t):
        t["key_cache"] = np.ascontiguousarray(t["key_cache"][..., :32])
        t["value_cache"] = np.ascontiguousarray(t["value_cache"][..., :32])
    expect_rejected(mutate, "key_cache: head_dim is 32 but query head_dim is 64")


def test_batch_mismatch_block_table():
    expect_rejected(replace("block_table", lambda x: x[:2]), "block_table: batch is 2")


def test_batch_mismatch_context_lens():
    expect_rejected(replace("context_lens", lambda x: np.zeros(4, np.int32)), "context_lens: batch is 4")


def test_kv_shape_mismatch():
    expect_rejected(replace("value_cache", lambda x: x[:11]), "value_cache: shape", "differs from key_cache")


@pytest.mark.parametrize("name,dtype,fragment", [
    ("query", np.float32, "query: dtype is F32, expected BF16"),
    ("key_cache", np.float64, "key_cache: dtype is F64"),
    ("value_cache", np.float32, "value_cache: dtype is F32"),
    ("block_table", np.float64, "block_table: dtype is F64, expected I32"),
    ("context_lens", BF16, "context_lens: dtype is BF16"),
    # dtypes the core has no name for are rejected by the binding in the same words
    ("block_table", np.int16, "block_table: dtype is int16, expected I32 or I64"),
    ("context_lens", np.uint32, "context_lens: dtype is uint32, expected I32"),
    ("query", np.uint16, "query: dtype is uint16, expected BF16"),
    ("key_cache", np.int8, "key_cache: dtype is int8, expected BF16"),
])
def test_wrong_dtypes(name, dtype, fragment):
    expect_rejected(replace(name, lambda x: x.astype(dtype)), fragment)


def test_wrong_rank():
    expect_rejected(replace("query", lambda q: np.ascontiguousarray(q[0])), "query: rank is 2", "expected 3")
    expect_rejected(replace("key_cache", lambda k: k[None, None]), "key_cache: rank is 6")


@pytest.mark.parametrize("name", ["query", "key_cache", "value_cache", "block_table", "context_lens"])
def test_missing_tensors(name):
    expect_rejected(replace(name, lambda x: None), f"{name}: missing")


def test_not_an_array():
    expect_rejected(replace("block_table", lambda x: x.tolist()), "block_table: expected a NumPy array", "list")


def test_array_that_cannot_be_shared():
    expect_rejected(replace("context_lens", lambda x: x.astype(">i4")), "context_lens: cannot read a ndarray of dtype",
                    "in place, expected I32")
    expect_rejected(replace("query", lambda x: x.astype(object)), "query: cannot read", "expected BF16")


@pytest.mark.parametrize("scale,fragment", [(float("inf"), "not finite"), (float("nan"), "not finite"),
                                            (1e300, "overflows float32")])
def test_non_finite_scale(scale, fragment):
    expect_rejected(lambda t: None, "scale", fragment, scale=scale)


def test_unsupported_head_dim():
    def mutate(t):
        for name in ("query", "key_cache", "value_cache"):
            t[name] = np.ascontiguousarray(t[name][..., :40])
    expect_rejected(mutate, "head_dim 40 is not supported", "a multiple of 16 in 16..256", out_shape=(3, 8, 40))


def test_unsupported_block_size():
    def mutate(t):
        shape = (t["key_cache"].shape[0], 257) + t["key_cache"].shape[2:]
        t["key_cache"] = np.zeros(shape, t["key_cache"].dtype)
        t["value_cache"] = np.zeros(shape, t["value_cache"].dtype)
    expect_rejected(mutate, "block_size 257 is not supported", "1..256")


def test_non_contiguous_inputs():
    wide = lambda q: np.concatenate([q, q], axis=1)[:, ::2]  # noqa: E731 (a strided view)
    expect_rejected(replace("query", wide), "query: must be contiguous")
    expect_rejected(replace("block_table", lambda x: np.asfortranarray(np.tile(x, (1, 2)))[:, :4]),
                    "block_table: must be contiguous")
    expect_rejected(replace("context_lens", lambda x: np.repeat(x, 2)[::2]), "context_lens: must be contiguous")


def test_cache_head_dim_stride():
    expect_rejected(replace("key_cache", lambda k: np.concatenate([k, k], axis=3)[..., ::2]),
                    "key_cache: head_dim stride is 2")


def test_negative_cache_stride():
    expect_rejected(replace("key_cache", lambda k: k[::-1]), "key_cache: stride 0 is", "must be >= 0")


def test_output_shape():
    expect_rejected(lambda t: None, "out: shape [3, 4, 64], expected [3, 8, 64]", out_shape=(3, 4, 64))


def test_unknown_executor():
    expect_rejected(lambda t: None, "executor: unknown executor 'tpu'", "reference", executor="tpu")


@pytest.mark.parametrize("option,fragment", [("hw_blocks", "hw_blocks: 0 must be >= 1"),
                                             ("pipe_depth", "pipe_depth: 0 must be >= 1"),
                                             ("num_threads", "num_threads")])
def test_bad_options(option, fragment):
    expect_rejected(lambda t: None, fragment, **{option: -1 if option == "num_threads" else 0})


# ---- the output array ----

@pytest.mark.parametrize("make,fragment", [
    (lambda: np.zeros((3, 8, 64), np.float64), "out: dtype is float64, expected F32"),
    (lambda: np.zeros((3, 8, 128), np.float32)[..., ::2], "out: must be contiguous"),
    (lambda: np.zeros((3, 8, 64), np.float32).transpose(1, 0, 2), "out: must be contiguous"),
    (lambda: np.zeros((24, 64), np.float32), "out: rank is 2"),
    (lambda: [[0.0]], "out: expected a writable float32"),
])
def test_bad_out(make, fragment):
    with pytest.raises(ValueError) as info:
        call(fixture(), out=make())
    assert fragment in str(info.value)


def test_read_only_out():
    out = np.zeros((3, 8, 64), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writable float32"):
        call(fixture(), out=out)
    assert np.all(out == 0)


# ---- memory the CPU cannot read ----

class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class FakeDeviceTensor:
    """A DLPack producer that claims its memory lives on a device (CUDA = 2): the binding must
    refuse it before anything reads the pointer (which here is host memory, so nothing breaks)."""

    def __init__(self, like: np.ndarray, device_type: int):
        self._like = like
        self._shape = (ctypes.c_int64 * like.ndim)(*like.shape)
        self._managed = _DLManagedTensor()
        t = self._managed.dl_tensor
        t.data = like.ctypes.data
        t.device = _DLDevice(device_type, 0)
        t.ndim = like.ndim
        t.dtype = _DLDataType(4 if like.dtype == BF16 else 0, like.dtype.itemsize * 8, 1)
        t.shape = self._shape
        self._device_type = device_type

    def __dlpack_device__(self):
        return (self._device_type, 0)

    def __dlpack__(self, stream=None, **kwargs):
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(self._managed), b"dltensor", None)


def test_cuda_tensor_without_cuda_executor():
    if "cuda" in mixpa.executors():
        pytest.skip("this build has a cuda executor")
    msg = expect_rejected(replace("query", lambda q: FakeDeviceTensor(q, 2)),
                          "query: CUDA tensor given but this build has no cuda executor")
    assert "reference" in msg


def test_other_device_tensor():
    expect_rejected(replace("key_cache", lambda k: FakeDeviceTensor(k, 7)), "key_cache: tensor on DLPack device type 7")
