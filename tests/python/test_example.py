"""examples/decode_loop.py runs and checks itself; its page manager reuses freed pages."""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "decode_loop.py"


def test_example_runs():
    r = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("decode_loop: OK"), r.stdout
    assert "8 requests finished" in last and " 0 page allocations reused" not in last, last


@pytest.fixture
def example():
    spec = importlib.util.spec_from_file_location("decode_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_manager(example):
    cache = example.PagedKVCache(num_blocks=3, block_size=16, kv_heads=1, head_dim=64, max_pages_per_request=2)
    k = np.ones((1, 64), dtype=example.BF16)
    cache.add_request(0)
    for _ in range(17):
        cache.append(0, k, k)
    assert cache.pages[0] == [0, 1] and cache.lengths[0] == 17
    cache.add_request(1)
    cache.append(1, k, k)
    with pytest.raises(MemoryError):
        cache.add_request(2)
        cache.append(2, k, k)
    cache.release(0)
    cache.append(2, k, k)
    assert cache.pages[2] == [0] and cache.reused == 1
    table, lens = cache.batch([1, 2])
    assert table.tolist() == [[2, -1], [0, -1]] and lens.tolist() == [1, 1]
