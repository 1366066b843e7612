#!/usr/bin/env bash
# Set up .venv with geofg and its test and dev dependencies, then run the test suite
# (GEOFG_SETUP_ONLY=1: set up only; GEOFG_TEST_ONLY=1: test only, with the .venv set up before).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ "${GEOFG_TEST_ONLY:-0}" != 1 ]; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test,dev]'
fi
[ "${GEOFG_SETUP_ONLY:-0}" = 1 ] && exit 0
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 GDAL_PAM_ENABLED=NO
export GEOFG_DATA=${GEOFG_DATA:-$(cd .. && pwd)/shared/data}
.venv/bin/python -m pytest -q "$@"
