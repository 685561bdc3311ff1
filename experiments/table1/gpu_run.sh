#!/usr/bin/env bash
# The paper-scale sweeps on a GPU machine (what produced experiments/table1/paper*/).
#   bash experiments/table1/gpu_run.sh PHASE [OUTROOT]
# PHASE: calibrate | cheap (the five settings with dx <= 100, 40 seeds) | big SEEDS (dx = 1000, e.g. 0-9)
#        | ext PRESET [SEEDS] (paper-leaky, paper-logistic or paper-wd; settings: $SETTINGS or the five cheap)
# Needs: python3 with torch, numpy, scipy; dask[distributed] (installed from out/whl/ if present).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
if [ -d out/whl ] && ! python3 -c "import distributed" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site out/whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src"
ROOT="${OUTROOT:-out/gpu}"
W=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
CHEAP="10,1,1000;10,1,10000;100,1,1000;100,1,10000;100,10,10000"
run() { python3 -m sospcheck.table1 table1 --device cuda --workers "$W" "$@"; }
case "${1:-}" in
  calibrate) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
             python3 -c "import torch, dask; print('torch', torch.__version__, 'dask', dask.__version__)"
             python3 experiments/table1/calibrate.py ;;
  cheap) run --preset paper --settings "$CHEAP" --out "$ROOT/paper" ;;
  big)   run --preset paper --settings "1000,1,10000;1000,10,10000" --seeds "${2:-0-9}" --group-size 10 \
             --out "$ROOT/paper" ;;
  ext)   run --preset "$2" --settings "${SETTINGS:-$CHEAP}" --seeds "${3:-40}" --out "$ROOT/$2" ;;
  *) echo "usage: gpu_run.sh calibrate | cheap | big SEEDS | ext PRESET [SEEDS]" >&2; exit 2 ;;
esac
