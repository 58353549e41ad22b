#!/usr/bin/env bash
# On the GPU machine, from the repository root: install the carried wheels (bench/gpu/wheels,
# made by `python -m bench.gpu.build_wheels`) into a virtual environment over the machine's own
# packages (torch, transformers, peft, accelerate stay as they are), then run the check.
# PYTHON: the machine's interpreter that has torch (default python3).
# Results in $OUT: gpu_check.json, gpu_check.partial.json (after each cell), gpu_check.log,
# env.txt. Arguments go to bench/gpu/check.py (e.g. --models 0.5b --steps 2).
set -euo pipefail
OUT=${OUT:-bench/results}
PY=${PYTHON:-python3}
VENV=${VENV:-/tmp/gpu-check-venv}
mkdir -p "$OUT"
{ nvidia-smi || true; "$PY" -VV; "$PY" -m pip list 2>/dev/null | grep -iE \
  '^(torch|transformers|peft|accelerate|deepspeed|pydantic|omegaconf|numpy) ' || true; } \
  > "$OUT/env.txt" 2>&1
# a venv sees the system's packages; pip takes from the wheels only what is missing or too old
if ! "$PY" -m venv --system-site-packages "$VENV" 2>/dev/null; then
  "$PY" -m venv --system-site-packages --without-pip "$VENV"  # no ensurepip: the system's pip
  PIP=("$PY" -m pip --python "$VENV/bin/python")
else
  PIP=("$VENV/bin/python" -m pip)
fi
"${PIP[@]}" install -q --no-index --find-links bench/gpu/wheels deepspeed==0.19.8 'omegaconf>=2.3' \
  2>&1 | tee -a "$OUT/env.txt"
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$VENV/bin/python" -m bench.gpu.check \
  --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
