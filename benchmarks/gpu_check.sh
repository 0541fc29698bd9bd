#!/usr/bin/env bash
# The GPU check for a lent machine (no network there), in under 10 minutes on one modern GPU:
#   1. the machine: nvidia-smi, torch and CUDA versions;
#   2. the CUDA tests (those whose names mention cuda or gpu);
#   3. the throughput table on CUDA: AMP bf16 and fp16, channels_last and NCHW, fp32, and augmentation
#      computed on the GPU (benchmarks/train_speed.py --device cuda --throughput-only);
#   4. the time to 94% Fashion-MNIST: `cnnlab train --recipe fashion-mnist-94-fast --device cuda`, timed.
#
# Usage:
#   benchmarks/gpu_check.sh --prepare   # on the CPU machine first: copies Fashion-MNIST into .data/ (git-ignored)
#   benchmarks/gpu_check.sh             # on the GPU machine; the device tool call carries .data:
#                                       #   run(command="bash benchmarks/gpu_check.sh", carry=[".data"], timeout_s=600)
#   benchmarks/gpu_check.sh --dry-run   # anywhere: checks what it can without a GPU and prints each command
#
# Environment: PYTHON (default: python3, or .venv/bin/python when there is one); CNNLAB_DATA is set to
# .data so no download is tried. Each step has its own time limit, so one stuck step cannot eat the budget.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="$ROOT/.data"
MODE="run"
case "${1:-}" in
  --dry-run) MODE="dry" ;;
  --prepare) MODE="prepare" ;;
  "") ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  *) echo "gpu_check.sh: unknown option '$1' (use --dry-run, --prepare or nothing)" >&2; exit 2 ;;
esac

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
fi
export CNNLAB_DATA="$DATA" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [[ "$MODE" == "prepare" ]]; then
  SRC="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
  mkdir -p "$DATA/fashion-mnist"
  cp -p "$SRC"/*-ubyte.gz "$DATA/fashion-mnist/" || { echo "gpu_check.sh: no Fashion-MNIST in $SRC" >&2; exit 2; }
  echo "copied $(ls "$DATA/fashion-mnist" | wc -l) files into $DATA/fashion-mnist; carry .data to the GPU machine"
  exit 0
fi

FAILED=0
step() {  # step SECONDS DESCRIPTION COMMAND...
  local limit="$1" what="$2"
  shift 2
  echo
  echo "=== $what"
  if [[ "$MODE" == "dry" ]]; then
    echo "would run (limit ${limit}s): $*"
    return 0
  fi
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "--- $what: exit $rc after $((SECONDS - t0)) s"
  [[ $rc -eq 0 ]] || FAILED=1
}

# What the dry run can check without a GPU: the files and options each step needs exist.
preflight() {
  local ok=0
  for f in benchmarks/train_speed.py cnnlab/training/recipes.py; do
    [[ -f "$f" ]] || { echo "missing $f" >&2; ok=1; }
  done
  grep -q '"fashion-mnist-94-fast"' cnnlab/training/recipes.py || { echo "recipe fashion-mnist-94-fast not found" >&2; ok=1; }
  grep -q -- '"--device"' benchmarks/train_speed.py || { echo "train_speed.py has no --device" >&2; ok=1; }
  if [[ -d "$DATA/fashion-mnist" ]]; then
    echo "dataset: $DATA/fashion-mnist ($(ls "$DATA/fashion-mnist" | wc -l) files)"
  else
    echo "dataset: $DATA/fashion-mnist is missing: run benchmarks/gpu_check.sh --prepare before carrying .data"
    [[ "$MODE" == "dry" ]] || ok=1
  fi
  return $ok
}

preflight || { echo "gpu_check.sh: preflight failed" >&2; exit 2; }

step 30 "machine" bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  $PYTHON -c 'import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \"available\", torch.cuda.is_available())'"
step 150 "CUDA tests" "$PYTHON" -m pytest -q -p no:cacheprovider -x -k "cuda or gpu" tests/
step 240 "throughput on CUDA" "$PYTHON" benchmarks/train_speed.py --device cuda --throughput-only --epochs 2 \
  --rounds 1 --out runs/gpu-check
step 150 "time to 94% Fashion-MNIST on CUDA" bash -c "s=\$(date +%s%N); \
  $PYTHON -m cnnlab train --recipe fashion-mnist-94-fast --device cuda --quiet --out runs/gpu-check/fm94 \
  && echo \"wall \$(( (\$(date +%s%N) - s) / 1000000 )) ms (process start to exit, data loading included)\""

echo
if [[ "$MODE" == "dry" ]]; then
  echo "gpu_check.sh --dry-run: OK (nothing was run)"
  exit 0
fi
[[ $FAILED -eq 0 ]] && echo "gpu_check.sh: every step passed" || echo "gpu_check.sh: a step failed (see above)"
exit $FAILED
