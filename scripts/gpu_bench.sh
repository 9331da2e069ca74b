#!/usr/bin/env bash
# The GPU check of issue 14 in one command (see results/gpu/README.md):
#   scripts/gpu_bench.sh [--tiny] [scripts/gpu_bench.py flags...]
# Installs the wheels carried in .whl/ (if any) into /tmp/site, unpacks the CIFAR-10 copy
# carried in .data/ into /tmp/cifar10-jpeg, then runs scripts/gpu_bench.py with a deadline,
# logging to OUTDIR/gpu_bench.log; after a hard crash (not a Python error) with time left it
# resumes once, skipping the job that crashed. OUTDIR: --out, else $OUT, else results/gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-results/gpu}
prev=""
for a in "$@"; do [ "$prev" = "--out" ] && OUTDIR=$a; prev=$a; done
BUDGET=${GPU_BENCH_BUDGET_S:-450}
DEADLINE=$(( $(date +%s) + ${BUDGET%.*} ))
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_bench.log"
: >"$LOG"

# Carried wheels, except a flax one where the image's own flax is 0.12 or newer already.
wheels=()
for w in .whl/*.whl; do
  [ -f "$w" ] || continue
  case $(basename "$w") in
    flax-*) "$PY" -c "import flax, sys; sys.exit(tuple(map(int, flax.__version__.split('.')[:2])) < (0, 12))" \
              2>/dev/null && { echo "[gpu_bench.sh] keeping the image's flax; not installing $w" | tee -a "$LOG"; continue; } ;;
  esac
  wheels+=("$w")
done
if [ ${#wheels[@]} -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${wheels[@]}" 2>&1 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# JAX takes half the GPU up front; PyTorch's peers live in the other half.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}

if [ -f .data/cifar10-jpeg.tar.xz ] && [ ! -d /tmp/cifar10-jpeg/train ]; then
  t0=$(date +%s)
  mkdir -p /tmp/cifar10-jpeg && tar -xJf .data/cifar10-jpeg.tar.xz -C /tmp/cifar10-jpeg \
    && echo "[gpu_bench.sh] unpacked .data/cifar10-jpeg.tar.xz in $(( $(date +%s) - t0 )) s" \
    | tee -a "$LOG"
fi

"$PY" scripts/gpu_bench.py --deadline "$DEADLINE" --budget-s "$BUDGET" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if [ "$rc" -gt 1 ] && [ $(( DEADLINE - $(date +%s) )) -gt 60 ]; then
  echo "[gpu_bench.sh] the driver died (exit $rc); resuming once" | tee -a "$LOG"
  "$PY" scripts/gpu_bench.py --deadline "$DEADLINE" --budget-s "$BUDGET" --resume "$@" 2>&1 \
    | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
fi
exit "$rc"
