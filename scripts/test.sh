#!/usr/bin/env bash
# Quick start, tests: lint, format check, then the default (fast) test suite. Extra args go to pytest
# (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
