#!/usr/bin/env bash
# The GPU checks of scripts/gpu_check.py, one line per check (under 10 minutes on one
# GPU); --cpu runs them on the CPU as a smoke run of the script.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
exec "$python" scripts/gpu_check.py "$@"
