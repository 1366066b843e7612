#!/usr/bin/env bash
# Set up geofg in .venv, fetch the real Sentinel-2 sample scene and classify it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
.venv/bin/python scripts/fetch_sample.py data/
export HF_HUB_OFFLINE=1
.venv/bin/geofg classify data/s2l1c/IMG_DATA -o out/T33UUU.zarr "$@"
.venv/bin/geofg info out/T33UUU.zarr
