#!/usr/bin/env bash
# The GPU cells, for a machine with CUDA (a few minutes): plaintext GPU
# baselines beside CPU for every zoo and reference model, and the gpu-marked
# tests. Without CUDA it says so and exits 0: nothing is faked.
#   bash benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python}
out=${1:-gpu-report}
if ! "$python" -c "import torch" 2>/dev/null; then
    echo "gpu.sh: torch is not importable with $python; run it inside the environment:" >&2
    echo "        bash scripts/in-env.sh bash benchmarks/gpu.sh" >&2
    exit 2
fi
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA device here; the GPU cells stay 'not measured'."
    exit 0
fi
"$python" -c "import torch; print('CUDA device:', torch.cuda.get_device_name(0))"
"$python" -m pytest -m gpu tests -q -p no:cacheprovider
"$python" -m secure_infer.cli bench --preset gpu --out "$out"
echo "gpu.sh: report in $out/report.md"
