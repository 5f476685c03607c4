#!/usr/bin/env bash
# Build the documentation site into docs/_build/html with warnings as errors (part of scripts/test.sh).
# Offline: notebooks and code cells execute in smoke mode on a writable copy of the offline datasets.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
DATA=${PACT_PYRO_DATA:-}
if [ -z "$DATA" ]; then
  DATA=$(mktemp -d)
  trap 'rm -rf "$DATA"' EXIT
  for d in mnist fashion-mnist; do
    [ -d ../shared/data/$d ] && cp -r ../shared/data/$d "$DATA/"
  done
  [ -d ../shared/data/cifar10-jpeg ] && ln -s "$(cd ../shared/data/cifar10-jpeg && pwd)" "$DATA/cifar10-jpeg"
fi
export PACT_PYRO_DATA=$DATA CI=true MPLBACKEND=Agg OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYDEVD_DISABLE_FILE_VALIDATION=1
start=$(date +%s)
.venv/bin/python -m sphinx -W --keep-going -E -q -b html docs docs/_build/html
echo "docs: built docs/_build/html in $(( $(date +%s) - start )) s, no warnings"
