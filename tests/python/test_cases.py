"""make_case (the C++ generator: same bytes as `mixpa gen`), load_case / save_case (safetensors)."""
import gc
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import mixpa
from oracle import BF16, assert_close_to_exact, exact_attention, random_problem

has_io = pytest.mark.skipif(not mixpa._mixpa.has_io, reason="this build has no safetensors I/O (src/io)")


def test_make_case_small_case1():
    c = mixpa.make_case("SmallCase1")
    assert c.name == "SmallCase1" and c.scale == 1.0
    assert c.query.shape == (24, 16, 128) and c.query.dtype == BF16
    assert c.key_cache.shape == c.value_cache.shape == (24 * 64, 128, 1, 128) and c.key_cache.dtype == BF16
    assert c.block_table.shape == (24, 256) and c.block_table.dtype == np.int32
    assert c.context_lens.tolist() == [8192] * 24
    assert 0 <= c.block_table.min() and c.block_table.max() < c.key_cache.shape[0]
    assert c.kv_bytes == 2 * 24 * 64 * 128 * 128 * 2


def test_make_case_matches_exact_attention():
    c = mixpa.make_case("SmallCase1", seed=3)
    assert_close_to_exact(c.run(), exact_attention(*c.inputs(), scale=c.scale))


def test_make_case_is_deterministic_in_seed():
    a, b, other = mixpa.make_case("SmallCase1"), mixpa.make_case("SmallCase1"), mixpa.make_case("SmallCase1", 1)
    for x, y, z in zip(a.inputs(), b.inputs(), other.inputs()):
        assert x.tobytes() == y.tobytes()
    assert a.key_cache.tobytes() != other.key_cache.tobytes()


def test_case_arrays_own_the_generated_buffers():
    c = mixpa.make_case("SmallCase1")
    for a in c.inputs():
        assert not a.flags.owndata and a.base is not None  # views of the C++ buffers, not copies
    assert np.isfinite(c.run()).all()
    keep = c.key_cache
    del c
    gc.collect()
    assert keep.astype(np.float32).std() > 0.1  # still alive after the Case is gone


def test_unknown_case():
    with pytest.raises(ValueError, match=r"case: unknown case 'Case9', expected one of \{Case1, Case2, SmallCase1"):
        mixpa.make_case("Case9")


def test_case_names():
    assert {"Case1", "Case2", "SmallCase1"} <= set(mixpa.case_names())


@has_io
def test_save_load_round_trip(tmp_path, rng):
    p = random_problem(rng, 3, 20, 4, 64, 16, (0, 1, 37))
    path = tmp_path / "case.safetensors"
    mixpa.save_case(path, query=p.query, key_cache=p.key_cache, value_cache=p.value_cache,
                    block_table=p.block_table, context_lens=p.context_lens, scale=0.3)
    c = mixpa.load_case(path)
    assert c.scale == pytest.approx(0.3)
    for got, want in zip(c.inputs(), p.inputs()):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(want).view(np.uint8))
    np.testing.assert_array_equal(c.run(), mixpa.paged_attention(*p.inputs(), scale=0.3))


@has_io
def test_save_case_object_and_strided_caches(tmp_path):
    c = mixpa.make_case("SmallCase1")
    kv = np.stack([c.key_cache, c.value_cache], axis=1)
    path = tmp_path / "strided.safetensors"
    mixpa.save_case(path, query=c.query, key_cache=kv[:, 0], value_cache=kv[:, 1], block_table=c.block_table,
                    context_lens=c.context_lens, scale=c.scale)
    back = mixpa.load_case(path)
    assert back.key_cache.tobytes() == c.key_cache.tobytes()
    assert back.value_cache.tobytes() == c.value_cache.tobytes()
    again = tmp_path / "again.safetensors"
    mixpa.save_case(again, back)
    assert again.read_bytes() == path.read_bytes()


@has_io
def test_save_case_from_torch(tmp_path, rng):
    torch = pytest.importorskip("torch", reason="torch is not installed: torch path not tested")
    p = random_problem(rng)
    t = [torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == BF16 else torch.from_numpy(a)
         for a in p.inputs()]
    mixpa.save_case(tmp_path / "t.safetensors", query=t[0], key_cache=t[1], value_cache=t[2], block_table=t[3],
                    context_lens=t[4], scale=1.0)
    assert mixpa.load_case(tmp_path / "t.safetensors").key_cache.tobytes() == p.key_cache.tobytes()


@has_io
def test_invalid_save_leaves_no_file(tmp_path, rng):
    p = random_problem(rng)
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match="context_lens: dtype is I32 but block_table is I64"):
        mixpa.save_case(path, query=p.query, key_cache=p.key_cache, value_cache=p.value_cache,
                        block_table=p.block_table.astype(np.int64), context_lens=p.context_lens, scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        mixpa.save_case(path, query=p.query, key_cache=p.key_cache, value_cache=p.value_cache,
                        block_table=p.block_table, context_lens=p.context_lens, scale=float("nan"))
    assert list(tmp_path.iterdir()) == []


@has_io
def test_load_errors(tmp_path):
    with pytest.raises(ValueError):
        mixpa.load_case(tmp_path / "missing.safetensors")
    c = mixpa.make_case("SmallCase1")
    path = tmp_path / "c.safetensors"
    mixpa.save_case(path, c)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        mixpa.load_case(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError):
        mixpa.load_case(garbage)


def _cli():
    """The C++ CLI, if built in this checkout (for the same-bytes check against `mixpa gen`)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    for candidate in (os.environ.get("MIXPA_CLI"), root / "build" / "mixpa", shutil.which("mixpa")):
        if candidate and pathlib.Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@has_io
def test_make_case_same_bytes_as_cli_gen(tmp_path):
    cli = _cli()
    if cli is None:
        pytest.skip("the mixpa CLI is not built (build/mixpa); set MIXPA_CLI to point at it")
    gen = tmp_path / "gen.safetensors"
    r = subprocess.run([cli, "gen", "--case", "SmallCase1", "--seed", "5", "--output", str(gen)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    ours = tmp_path / "ours.safetensors"
    mixpa.save_case(ours, mixpa.make_case("SmallCase1", seed=5))
    cli_case = mixpa.load_case(gen)
    ours_case = mixpa.load_case(ours)
    for a, b in zip(cli_case.inputs(), ours_case.inputs()):
        assert a.tobytes() == b.tobytes()
    assert cli_case.scale == ours_case.scale
