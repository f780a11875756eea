"""One version everywhere: CMake's project(mixpa VERSION ...) is what mixpa.__version__, the
installed distribution's metadata (pyproject reads it from CMakeLists.txt) and `mixpa --version`
report; the docstrings name shapes and dtypes; nothing points at a contract outside the repo."""
import importlib.metadata
import inspect
import os
import pathlib
import re
import shutil
import subprocess

import pytest

import mixpa

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cmake_version():
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"project\(mixpa\s+VERSION\s+([0-9]+\.[0-9]+\.[0-9]+)", text)
    assert m, "CMakeLists.txt has no project(mixpa VERSION x.y.z)"
    return m.group(1)


def test_version_is_cmake_project_version():
    assert mixpa.__version__ == cmake_version()
    assert importlib.metadata.version("mixpa") == mixpa.__version__


def test_pyproject_takes_its_version_from_cmake():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic\s*=\s*\["version"\]', text, re.M)
    assert not re.search(r"^version\s*=", text, re.M), "pyproject.toml must not hold a second version"
    assert 'metadata.version.input = "CMakeLists.txt"' in text


def cli_binary():
    for candidate in (os.environ.get("MIXPA_CLI"), ROOT / "build" / "mixpa", shutil.which("mixpa")):
        if candidate and pathlib.Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def test_cli_version_equals_package_version():
    cli = cli_binary()
    if cli is None:
        pytest.skip("no mixpa CLI binary (build/mixpa, $MIXPA_CLI or on PATH) to compare with")
    r = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"mixpa {mixpa.__version__}"


@pytest.mark.parametrize("fn", [mixpa.paged_attention, mixpa.DecodePlan, mixpa.DecodePlan.run, mixpa.merge_states,
                                mixpa.Case, mixpa.zeros_kv_cache])
def test_docstrings_list_shapes_and_dtypes(fn):
    doc = inspect.getdoc(fn) or ""
    shape = r"\[[a-z_]+(,\s+(\([a-z_]+,\)\s+)?[a-z_.]+)*\]"  # e.g. [batch, (q_len,) num_heads, head_dim]
    assert re.search(shape, doc), f"{fn.__qualname__}: no shape in the docstring"
    assert re.search(r"bf16|bfloat16|float32", doc), f"{fn.__qualname__}: no dtype in the docstring"


def test_no_pointer_to_a_contract_outside_the_repo():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    needle = "shared/" + "SPEC"  # split, so this file does not match itself
    hits = []
    for name in tracked.stdout.split():
        path = ROOT / name
        if path.suffix not in {".md", ".py", ".cpp", ".h", ".txt", ".toml", ".sh"} or not path.is_file():
            continue
        if needle in path.read_text(errors="replace"):
            hits.append(name)
    assert not hits, f"files pointing at {needle} (outside the repo; the contract is docs/spec.md): {hits}"
    assert (ROOT / "docs" / "spec.md").is_file()
