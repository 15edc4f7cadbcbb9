#!/usr/bin/env bash
# Set up (see scripts/setup.sh), then run one ResNet-18 training step. Arguments go to the example.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO"
exec "$PYTHON" examples/resnet18_step.py "$@"
