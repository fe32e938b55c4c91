#!/usr/bin/env bash
# The whole accelerator measurement as one command, for a machine that has jax with its GPU/TPU
# plugin, flax, optax, orbax-checkpoint, numpy, pillow, safetensors and tqdm (torch with CUDA
# optional: the PyTorch reference rows) and nothing to download:
#
#     bash benchmarks/device_run.sh            # from the repository root; ends within BUDGET_S + ~2 min
#
# Installs jax-refine without dependencies (falling back to running from the tree where pip
# cannot build offline), runs benchmarks/device.py within BUDGET_S seconds (default 420) and
# leaves device-results.json, device-results.md (the table), device.log and the machine's
# description in $OUT (default ./device-results). Extra arguments go to device.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-results}"
budget="${BUDGET_S:-420}"
python="${PYTHON:-python3}"
mkdir -p "$out"
{
  date -u
  "$python" --version
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  if "$python" -m pip install -q --no-deps -e . > "$out/pip.log" 2>&1 \
      || "$python" -m pip install -q --no-deps --no-build-isolation -e . >> "$out/pip.log" 2>&1; then
    echo "jax-refine installed (pip install --no-deps -e .)"
  else
    echo "pip could not install jax-refine here (pip.log; offline without setuptools?): running from the tree"
  fi
  "$python" -m pip list 2>/dev/null | grep -iE "^(jax|jaxlib|jax-cuda.*|libtpu|flax|optax|orbax-checkpoint|numpy|torch) "
} 2>&1 | tee "$out/machine.txt"
# the script stops itself at the budget; `timeout` only guards against a hang
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout -k 10 $((budget + 120)) \
  "$python" benchmarks/device.py --out "$out/device-results.json" --budget-s "$budget" "$@" 2>&1 | tee "$out/device.log"
