# Sourced by demo.sh and test.sh: create .venv and install pact-pyro with its dev extra when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import pact_pyro, pytest, ruff, torch, torchvision, pyro, arviz, sphinx, myst_nb, sphinxarg, pydata_sphinx_theme" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  # CPU machines here have these two wheels on disk; other versions download gigabytes.
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[dev]"
fi
