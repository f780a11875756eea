"""torch.ops.mixpa.paged_attention (mixpa.torch_op): registered through torch.library with a fake
implementation; equal to mixpa.paged_attention on every argument; traced by
torch.compile(fullgraph=True). Skipped, with the reason, where torch is not installed."""
import math
import subprocess
import sys

import numpy as np
import pytest

import mixpa
from oracle import (E4M3, F16, assert_close_to_exact, exact_attention, random_problem, serving_problem,
                    torch_or_skip)


def test_mixpa_imports_without_torch():
    # The package must not import torch (nor need it): checked in a fresh interpreter.
    code = "import sys, mixpa; assert 'torch' not in sys.modules, 'mixpa imported torch'; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.fixture(scope="module")
def torch():
    torch = torch_or_skip()
    if not hasattr(torch.library, "custom_op"):
        pytest.skip(f"torch {torch.__version__} has no torch.library.custom_op (needs torch >= 2.4)")
    import mixpa.torch_op  # noqa: F401  registers the operator
    return torch


def as_torch(torch, p):
    def conv(a):
        if a.dtype == np.dtype(mixpa._BF16):
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    return [conv(a) for a in p.inputs()]


def test_op_is_registered_with_a_fake(torch):
    op = torch.ops.mixpa.paged_attention.default
    names = [a.name for a in op._schema.arguments]
    assert names[:14] == ["query", "key_cache", "value_cache", "block_table", "context_lens", "scale", "softcap",
                          "window_left", "alibi_slopes", "sinks", "k_scale", "v_scale", "kv_layout", "return_lse"]
    assert len(op._schema.returns) == 2
    # The fake gives shapes only, on the meta device, without running the kernel.
    q = torch.empty(3, 8, 64, dtype=torch.bfloat16, device="meta")
    kv = torch.empty(10, 16, 2, 64, dtype=torch.bfloat16, device="meta")
    bt = torch.empty(3, 4, dtype=torch.int32, device="meta")
    cl = torch.empty(3, dtype=torch.int32, device="meta")
    out, lse = torch.ops.mixpa.paged_attention(q, kv, kv, bt, cl, return_lse=True)
    assert out.device.type == "meta" and out.shape == (3, 8, 64) and out.dtype == torch.float32
    assert lse.shape == (3, 8) and lse.dtype == torch.float32
    out, lse = torch.ops.mixpa.paged_attention(q, kv, kv, bt, cl)
    assert lse.shape == (0,)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(scale=0.3),
    dict(softcap=2.5, window_left=20),
    dict(alibi=True, sinks=True, return_lse=True),
    dict(softcap=3.0, window_left=5, alibi=True, sinks=True, return_lse=True, executor="reference"),
], ids=["plain", "scale", "softcap-window", "alibi-sinks-lse", "all-reference"])
def test_op_equals_paged_attention(torch, rng, kw):
    p = random_problem(rng, batch=3, heads=8, kv_heads=2, head_dim=64, block_size=16, lens=(40, 0, 33))
    kw = dict(kw)
    if kw.pop("alibi", False):
        kw["alibi_slopes"] = torch.tensor(2.0 ** (-8.0 * np.arange(1, 9) / 8), dtype=torch.float32)
    if kw.pop("sinks", False):
        kw["sinks"] = torch.linspace(-1, 1, 8)
    t = as_torch(torch, p)
    want = mixpa.paged_attention(*t, **kw)
    out, lse = torch.ops.mixpa.paged_attention(*t, **kw)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, 8, 64)
    if kw.get("return_lse"):
        torch.testing.assert_close(out, want[0], rtol=0, atol=0)
        torch.testing.assert_close(lse, want[1], rtol=0, atol=0)
        assert lse.shape == (3, 8)
    else:
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        assert lse.shape == (0,)
    wrapped = mixpa.torch_op.paged_attention(*t, **kw)
    if kw.get("return_lse"):
        torch.testing.assert_close(wrapped[0], out, rtol=0, atol=0)
    else:
        torch.testing.assert_close(wrapped, out, rtol=0, atol=0)
    if set(kw) <= {"scale", "executor"}:
        assert_close_to_exact(out.numpy(), exact_attention(*p.inputs(), scale=kw.get("scale")))


def torch_view(torch, a):
    """A torch tensor on the same memory, for every dtype the op takes."""
    kinds = {np.dtype(mixpa._BF16): (np.int16, torch.bfloat16), E4M3: (np.uint8, torch.float8_e4m3fn)}
    if a.dtype in kinds:
        bits, dtype = kinds[a.dtype]
        return torch.from_numpy(a.view(bits)).view(dtype)
    return torch.from_numpy(a)


@pytest.mark.parametrize("kind", ["f16", "e4m3-qlen4-int64"])
def test_op_serving_dtypes_and_q_len(torch, rng, kind):
    # docs/spec.md §6 through the op: float16 query and cache; an fp8 cache with k/v scales, q_len 4
    # (query [batch, q_len, heads, head_dim]) and int64 indices. The fake gives the same shapes.
    if kind == "f16":
        p, kw = serving_problem(rng, kv_dtype=F16, query_dtype=F16), {}
    else:
        p = serving_problem(rng, kv_dtype=E4M3, q_len=4, index_dtype=np.int64, k_scale=0.5, v_scale=2.0)
        kw = dict(k_scale=0.5, v_scale=2.0)
    t = [torch_view(torch, a) for a in p.inputs()]
    out, lse = torch.ops.mixpa.paged_attention(*t, return_lse=True, **kw)
    want, want_lse = mixpa.paged_attention(*t, return_lse=True, **kw)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=0)
    assert out.shape == t[0].shape and lse.shape == t[0].shape[:-1]
    fake_out, fake_lse = torch.ops.mixpa.paged_attention(*(x.to("meta") for x in t), return_lse=True, **kw)
    assert fake_out.shape == out.shape and fake_lse.shape == lse.shape
    compiled = torch.compile(lambda *a: torch.ops.mixpa.paged_attention(*a, **kw)[0], fullgraph=True,
                             backend="aot_eager")
    torch.testing.assert_close(compiled(*t), out, rtol=0, atol=0)


def test_op_hnd_layout(torch, rng):
    p = random_problem(rng, lens=(40, 7, 17))
    q, k, v, bt, cl = as_torch(torch, p)
    want = torch.ops.mixpa.paged_attention(q, k, v, bt, cl)[0]
    k_hnd, v_hnd = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    got = torch.ops.mixpa.paged_attention(q, k_hnd, v_hnd, bt, cl, kv_layout="HND")[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_op_invalid_input_raises_value_error(torch, rng):
    p = random_problem(rng)
    q, k, v, bt, cl = as_torch(torch, p)
    bt = bt.clone()
    bt[0, 0] = 10 ** 6
    with pytest.raises(ValueError, match="block_table"):
        torch.ops.mixpa.paged_attention(q, k, v, bt, cl)


def test_opcheck(torch, rng):
    # torch's own checks of a custom op: schema, fake vs real, autograd registration, AOT dispatch.
    if not hasattr(torch.library, "opcheck"):
        pytest.skip(f"torch {torch.__version__} has no torch.library.opcheck")
    p = random_problem(rng, lens=(40, 0, 17))
    t = as_torch(torch, p)
    torch.library.opcheck(torch.ops.mixpa.paged_attention.default, tuple(t), {"return_lse": True, "softcap": 2.0})
    torch.library.opcheck(torch.ops.mixpa.paged_attention.default, tuple(t), {})


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(torch, rng, backend):
    p = random_problem(rng, batch=3, heads=8, kv_heads=2, head_dim=64, block_size=16, lens=(40, 0, 33))
    q, k, v, bt, cl = as_torch(torch, p)
    scale = 1 / math.sqrt(64)

    def layer(q, k, v, bt, cl):
        # Surrounding torch ops, as in an engine's attention layer: scale the query, call the op,
        # cast the output back to bf16.
        out, lse = torch.ops.mixpa.paged_attention((q.float() * 2).to(torch.bfloat16), k, v, bt, cl,
                                                   scale=scale / 2, return_lse=True)
        return out.to(torch.bfloat16), lse

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    # Inductor's on-disk graph cache keys on this test's code, not on the op's schema: a graph
    # cached by an older mixpa would call the op with its old arguments. Compile afresh.
    with torch._inductor.config.patch(force_disable_caches=True):
        got, got_lse = compiled(q, k, v, bt, cl)
    want, want_lse = layer(q, k, v, bt, cl)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_lse, want_lse, rtol=0, atol=0)
    assert_close_to_exact(got.float().numpy(), exact_attention(*p.inputs(), scale=scale))
