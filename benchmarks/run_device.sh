#!/usr/bin/env bash
# The accelerator check, one call: Sokoban, decode and SFT benchmarks on the device JAX sees,
# JSON + summary.md into $OUT (default benchmarks/results/device). Under 8 minutes on a GPU.
#
#   OUT=/tmp/dev bash benchmarks/run_device.sh
#
# The GPU image has Python 3.12 and JAX 0.11.x but not our other packages, and nothing can be
# downloaded there. The project runs from the source tree (PYTHONPATH); if flax does not
# import, wheels carried in benchmarks/wheels/ (fetch them here with
# `bash benchmarks/run_device.sh --fetch-wheels`) are installed without an index. Sokoban runs
# even if flax still does not import (JAX-only fallbacks); decode/SFT are then "skipped".
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
WHEELS="$HERE/wheels"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # pure-Python (or cp312 manylinux) wheels of what the policy/trainer import beyond JAX
  mkdir -p "$WHEELS"
  "$PY" -m pip download --dest "$WHEELS" --only-binary=:all: --python-version 3.12 \
     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
     flax==0.12.8 optax==0.2.8 chex treescope msgpack rich pyyaml typing_extensions \
     tensorstore orbax-checkpoint markdown-it-py mdurl pygments toolz etils absl-py \
     humanize nest_asyncio aiofiles protobuf simplejson psutil uvloop --no-deps
  exit $?
fi

OUT="${OUT:-$ROOT/benchmarks/results/device}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "== $(date -u) on $(hostname)"
  "$PY" -c "import sys, jax; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices())"
  if ! "$PY" -c "import flax.nnx, optax" 2>/dev/null && [[ -d "$WHEELS" ]]; then
    echo "flax/optax missing: installing carried wheels"
    "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl -q || true
  fi
  "$PY" -c "import flax.nnx, optax; print('flax ok')" 2>&1 | tail -1
} 2>&1 | tee "$OUT/setup.log"

timeout "${LEAFE_DEVICE_TIMEOUT:-470}" "$PY" "$HERE/device_suite.py" --out "$OUT" "$@" 2>&1 | tee "$OUT/run.log"
rc=${PIPESTATUS[0]}
cat "$OUT/summary.md" 2>/dev/null
exit "$rc"
