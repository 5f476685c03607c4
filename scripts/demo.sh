#!/usr/bin/env bash
# Quick start, main job: train a PACT ResNet-20 on MNIST with the defaults, then evaluate it by
# deterministic thresholding and by sampling z ~ q. Prints accuracy, FLOPs and units per block as JSON.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
# Offline machines: use a writable copy of ../shared/data/mnist (torchvision unpacks next to the .gz files).
if [ -z "${PACT_PYRO_DATA:-}" ] && [ ! -d data/mnist ] && [ -d ../shared/data/mnist ]; then
  mkdir -p data && cp -r ../shared/data/mnist data/ && chmod -R u+w data/mnist
fi
OUT=${1:-runs/mnist-demo-$(date +%Y%m%d-%H%M%S)}
.venv/bin/pact-pyro train --out "$OUT"
.venv/bin/pact-pyro evaluate "$OUT" --mode sample
