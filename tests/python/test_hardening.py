"""The Python package against crafted files, misuse and interrupts (issue 15): load_case validates
through the CLI's C++ code, option bounds, out= sharing memory with an input, scales that underflow,
save_case's temporaries (planted links, concurrent writers of one path), Ctrl-C during a long call."""
import json
import os
import signal
import struct
import subprocess
import threading
import time

import numpy as np
import pytest

import mixpa
from oracle import BF16, random_problem
from test_cases import _cli

has_io = pytest.mark.skipif(not mixpa._mixpa.has_io, reason="this build has no safetensors I/O (src/io)")

_DTYPES = {np.dtype(np.int32): "I32", BF16: "BF16", np.dtype(np.float32): "F32"}


def write_raw(path, tensors, metadata=None):
    """A safetensors file written here, not by mixpa: tensors {name: array} in the given order."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def case_tensors(batch=2, heads=4, head_dim=64, num_blocks=4, block_size=16, kv_heads=1, lens=(20, 3)):
    rng = np.random.default_rng(5)
    return {
        "query": rng.uniform(-0.5, 0.5, (batch, heads, head_dim)).astype(BF16),
        "key_cache": rng.uniform(-0.5, 0.5, (num_blocks, block_size, kv_heads, head_dim)).astype(BF16),
        "value_cache": rng.uniform(-1, 1, (num_blocks, block_size, kv_heads, head_dim)).astype(BF16),
        "block_table": np.arange(batch * 2, dtype=np.int32).reshape(batch, 2) % num_blocks,
        "context_lens": np.array([lens[i % len(lens)] for i in range(batch)], dtype=np.int32),
    }


def cli_error(path):
    """The CLI's one-line message for the same file (None when the CLI is not built)."""
    cli = _cli()
    if cli is None:
        return None
    r = subprocess.run([cli, "run", "--input", str(path), "--executor", "reference"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    prefix = "mixpa: error: "
    assert r.stderr.startswith(prefix) and r.stderr.count("\n") == 1, r.stderr
    return r.stderr[len(prefix):].rstrip("\n")


# --- 1: load_case validates the file exactly as the CLI does ------------------------------------

def _cache_head_dim(t):
    t["key_cache"] = t["key_cache"][..., :16].copy()
    t["value_cache"] = t["value_cache"][..., :16].copy()


def _table_batch(t):
    t["block_table"] = np.zeros((5, 2), np.int32)


def _lens_batch(t):
    t["context_lens"] = np.array([1, 2, 3, 4, 5, 6, 7], np.int32)


def _page_id(t):
    t["block_table"][1, 0] = 99


def _context(t):
    t["context_lens"][0] = 10_000


@has_io
@pytest.mark.parametrize("mutate,fragment", [
    (_cache_head_dim, "key_cache: head_dim is 16 but query head_dim is 256"),
    (_table_batch, "block_table: batch is 5 but query batch is 2"),
    (_lens_batch, "context_lens: batch is 7 but query batch is 2"),
    (_page_id, "block_table[1][0] = 99 is outside [0, 4)"),
    (_context, "context_lens[0] = 10000 exceeds"),
])
def test_load_case_validates_like_the_cli(tmp_path, mutate, fragment):
    t = case_tensors(head_dim=256)
    mutate(t)
    path = tmp_path / "bad.safetensors"
    write_raw(path, t, {"scale": "0.5"})
    with pytest.raises(ValueError) as info:
        mixpa.load_case(path)
    msg = str(info.value)
    assert fragment in msg and msg.startswith(str(path) + ": ") and "\n" not in msg, msg
    expected = cli_error(path)
    if expected is not None:
        assert msg == expected


@has_io
def test_loaded_arrays_have_their_stored_shapes(tmp_path):
    t = case_tensors(batch=3, heads=8, kv_heads=2, head_dim=64, num_blocks=5, block_size=32, lens=(40, 0, 17))
    path = tmp_path / "ok.safetensors"
    write_raw(path, t, {"scale": "0.25"})
    c = mixpa.load_case(path)
    for name, got in zip(("query", "key_cache", "value_cache", "block_table", "context_lens"), c.inputs()):
        assert got.shape == t[name].shape and got.nbytes == t[name].nbytes, name
        assert got.tobytes() == t[name].tobytes(), name
    c.key_cache[...] = 0  # writable, and exactly as large as its buffer
    assert np.isfinite(c.run(executor="reference")).all()


@has_io
@pytest.mark.parametrize("header,fragment", [
    ('{"__metadata__":{"scale":"1","scale":"2"}}', "__metadata__ key 'scale' appears twice"),
    ('{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}',
     "tensor 'a' appears twice"),
    ('{"query":{"dtype":"BF16","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]},'
     '"key_cache":{"dtype":"BF16","shape":[0,16,1,64],"data_offsets":[0,0]},'
     '"value_cache":{"dtype":"BF16","shape":[0,16,1,64],"data_offsets":[0,0]},'
     '"block_table":{"dtype":"I32","shape":[0,1],"data_offsets":[0,0]},'
     '"context_lens":{"dtype":"I32","shape":[0],"data_offsets":[0,0]}}', "query: shape [0, 1099511627776, 1099511627776]"),
])
def test_load_case_rejects_crafted_headers(tmp_path, header, fragment):
    text = header.encode()
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(ValueError, match="crafted.safetensors: .*" + fragment.replace("[", r"\[")):
        mixpa.load_case(path)


@has_io
def test_load_case_of_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        mixpa.load_case(tmp_path)


@has_io
def test_paths_with_a_nul_byte(tmp_path):
    t = case_tensors()
    mixpa.save_case(tmp_path / "c.safetensors", scale=0.5, **t)
    # a C string would stop at the NUL and name another file
    with pytest.raises(ValueError, match="NUL"):
        mixpa.load_case(str(tmp_path / "c.safetensors") + "\0.txt")
    with pytest.raises(ValueError, match="NUL"):
        mixpa.save_case(str(tmp_path / "c.safetensors") + "\0.txt", scale=0.5, **t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


# --- 2: bounds on hw_blocks, pipe_depth, num_threads -------------------------------------------

@pytest.mark.parametrize("option,value,fragment", [
    ("hw_blocks", 20000, "hw_blocks: 20000 is above the limit of 256"),
    ("pipe_depth", 1000000, "pipe_depth: 1000000 is above the limit of 16"),
    ("num_threads", 100000, "num_threads: 100000 is above the limit of 1024"),
])
def test_option_bounds(option, value, fragment):
    t = case_tensors()
    with pytest.raises(ValueError, match=fragment):
        mixpa.paged_attention(*t.values(), executor="sim", **{option: value})


def test_largest_allowed_launch_runs():
    t = case_tensors()
    ref = mixpa.paged_attention(*t.values(), executor="reference")
    np.testing.assert_array_equal(mixpa.paged_attention(*t.values(), executor="sim", hw_blocks=256, pipe_depth=16), ref)


# --- 8: out sharing memory with an input; scales that underflow --------------------------------

def test_out_overlapping_an_input_is_rejected():
    t = case_tensors(batch=2, heads=4, head_dim=64)
    out_bytes = 2 * 4 * 64 * 4
    # out inside key_cache's buffer
    kc = np.zeros((8, 16, 1, 64), BF16)
    t["key_cache"], t["value_cache"] = kc, kc.copy()
    t["block_table"] %= 8
    alias = kc.view(np.uint8).reshape(-1)[:out_bytes].view(np.float32).reshape(2, 4, 64)
    with pytest.raises(ValueError, match="out: overlaps the memory of key_cache"):
        mixpa.paged_attention(*t.values(), executor="reference", out=alias)
    assert not kc.view(np.uint16).any()
    # out starting inside query's buffer
    q_bytes = t["query"].nbytes
    buf = np.zeros(q_bytes + out_bytes, np.uint8)
    q = buf[:q_bytes].view(BF16).reshape(t["query"].shape)
    q[...] = t["query"]
    t["query"] = q
    for start, overlaps in ((q_bytes - 4, True), (q_bytes, False)):
        out = buf[start:start + out_bytes].view(np.float32).reshape(2, 4, 64)
        if overlaps:
            with pytest.raises(ValueError, match="out: overlaps the memory of query"):
                mixpa.paged_attention(*t.values(), executor="sim", out=out)
        else:
            mixpa.paged_attention(*t.values(), executor="sim", out=out)
            assert np.isfinite(out).all()


@pytest.mark.parametrize("scale", [1e-50, -1e-40, 1e-39])
def test_scale_below_the_smallest_normal_float32(tmp_path, scale):
    t = case_tensors()
    with pytest.raises(ValueError, match="below the smallest normal float32"):
        mixpa.paged_attention(*t.values(), scale=scale)
    if mixpa._mixpa.has_io:
        with pytest.raises(ValueError, match="below the smallest normal float32"):
            mixpa.save_case(tmp_path / "c.safetensors", scale=scale, **t)
        assert list(tmp_path.iterdir()) == []


def test_zero_and_smallest_normal_scales_are_accepted():
    t = case_tensors()
    for scale in (0.0, float(np.finfo(np.float32).tiny)):
        assert np.isfinite(mixpa.paged_attention(*t.values(), scale=scale, executor="reference")).all()


# --- 3, 4: save_case's temporaries ----------------------------------------------------------------

@has_io
def test_save_case_never_writes_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "c.safetensors"
    os.symlink(victim, str(path) + ".tmp." + str(os.getpid()))  # the old temporary's name
    t = case_tensors()
    mixpa.save_case(path, scale=0.5, **t)
    assert victim.read_bytes() == b"precious"
    assert mixpa.load_case(path).key_cache.tobytes() == t["key_cache"].tobytes()


@has_io
def test_concurrent_save_case_to_one_path_leaves_one_complete_case(tmp_path, rng):
    threads_n, rounds = 8, 6
    problems = [random_problem(rng, 4, 8, 2, 64, 16, (200, 100, 60, 1), num_blocks=300) for _ in range(threads_n)]
    images = []
    for i, p in enumerate(problems):
        ref = tmp_path / f"ref{i}"
        mixpa.save_case(ref, query=p.query, key_cache=p.key_cache, value_cache=p.value_cache,
                        block_table=p.block_table, context_lens=p.context_lens, scale=0.1 + i)
        images.append(ref.read_bytes())
        ref.unlink()
    shared = tmp_path / "shared.safetensors"
    errors = []

    def save(i):
        p = problems[i]
        try:
            mixpa.save_case(shared, query=p.query, key_cache=p.key_cache, value_cache=p.value_cache,
                            block_table=p.block_table, context_lens=p.context_lens, scale=0.1 + i)
        except Exception as e:  # noqa: BLE001 - any failure is the defect under test
            errors.append(e)

    for r in range(rounds):
        ts = [threading.Thread(target=save, args=(i,)) for i in range(threads_n)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        assert shared.read_bytes() in images, f"round {r}: the file mixes several cases"
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["shared.safetensors"]


# --- 9: Ctrl-C during a long call ---------------------------------------------------------------

def _long_problem(batch, pages=64):
    """A long computation over a tiny cache: every request reads the same 8 pages, `pages` times over."""
    rng = np.random.default_rng(3)
    kc = rng.uniform(-0.5, 0.5, (8, 128, 1, 128)).astype(BF16)
    vc = rng.uniform(-1, 1, (8, 128, 1, 128)).astype(BF16)
    q = rng.uniform(-0.5, 0.5, (batch, 16, 128)).astype(BF16)
    table = (np.arange(batch * pages, dtype=np.int32).reshape(batch, pages) * 5) % 8
    lens = np.full(batch, pages * 128, np.int32)
    return q, kc, vc, table, lens


@pytest.mark.parametrize("executor", ["cpu", "sim", "reference"])
def test_ctrl_c_interrupts_a_long_call_promptly(executor):
    if executor not in mixpa.executors():
        pytest.skip(f"no {executor} executor")
    # Calibrate: size the call to take about 8 s uninterrupted on this machine. The first call is
    # not timed (it starts the pool and may calibrate the kernels: on an AMX machine it took 3x
    # a warm one, so the call sized from it finished before the signal); the timed call grows
    # until it lasts 50 ms, so per-call costs do not inflate the per-request estimate either.
    pages = 256  # 32768 tokens per request: enough work per request under the batch cap
    small = 2
    mixpa.paged_attention(*_long_problem(small, pages), executor=executor)
    while True:
        t0 = time.perf_counter()
        mixpa.paged_attention(*_long_problem(small, pages), executor=executor)
        took = time.perf_counter() - t0
        if took >= 0.05 or small >= 256:
            break
        small *= 4
    per_request = max(took / small, 1e-6)
    batch = int(min(max(8.0 / per_request, 2), 20000))
    expected = batch * per_request
    if expected < 4.0:
        pytest.skip(f"{executor} is too fast here to size an 8 s call ({expected:.1f} s)")
    args = _long_problem(batch, pages)
    out = np.full((batch, 16, 128), 7.0, np.float32)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            mixpa.paged_attention(*args, executor=executor, out=out)
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - start
    assert elapsed < min(2.0, expected / 2), f"KeyboardInterrupt after {elapsed:.2f} s (uninterrupted ~{expected:.1f} s)"
    # the module is usable afterwards: a full call completes, deterministically
    small_args = _long_problem(2)
    a = mixpa.paged_attention(*small_args, executor=executor)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, mixpa.paged_attention(*small_args, executor=executor))
