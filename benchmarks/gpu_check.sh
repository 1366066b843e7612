#!/usr/bin/env bash
# GPU acceptance check for geofg (benchmarks/gpu_check.py has the details).
#
#   benchmarks/gpu_check.sh            # CUDA machine: raw uint16 normalised on the device, bf16,
#                                      # vs CPU fp32 agreement (>= 99.5 %) and the table (forward,
#                                      # end-to-end, ratio, RSS, GPU memory) for landcover-s2 (the
#                                      # default), eurosat-13 and an UNTRAINED timing-only U-Net;
#                                      # the I/O ceiling of the eurosat-13 and default-model jobs
#   benchmarks/gpu_check.sh --cpu      # no GPU: same script, device code and bf16 on CPU, small sizes
#
# Extra arguments go to `python -m benchmarks.gpu_check` (e.g. --compile, --sizes 2048 4096).
# Everything runs under an 8-minute limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 GDAL_PAM_ENABLED=NO
"$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PY" -m benchmarks.gpu_check "$@"
