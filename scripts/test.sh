#!/usr/bin/env bash
# Quick start, tests: lint, format check, the default (fast) test suite, then the docs build. Extra args go to pytest
# (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
bash scripts/docs.sh   # the documentation site, warnings as errors, examples executed
