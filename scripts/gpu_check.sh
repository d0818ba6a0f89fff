#!/usr/bin/env bash
# The GPU checks in one short call (under 8 minutes on one H100): the CUDA tests (pytest -m
# cuda: blocks and heads in fp32/fp16/bf16 against float64 CPU references, folding, training
# steps in fp16 with loss scaling and in bf16, pinned folder inference, a 1-GPU dist-infer,
# SDPA's fused kernel) and the GPU benchmarks (decode head, whole model, training step:
# mmseg float32 / mmseg AMP / ours --fast, R-101 ANN and NL at 512x1024), JSON and logs in
# $OUT (the device tool's output folder) or gpu_results/.
#
#   bash scripts/gpu_check.sh --download   # here, with PyPI: the wheels a bare GPU image lacks
#   bash scripts/gpu_check.sh              # there: install from .whl/ if needed, test, measure
#
# A bare image with PyTorch but without OpenMMLab's stack gets mmengine and mmseg from .whl/
# and mmcv built from its sdist with its CPU ops only (ann_seg's models use no mmcv CUDA op;
# 16 cores: about 2 minutes), all into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl

if [ "${1:-}" = "--download" ]; then
  [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}  # mmcv's setup.py needs torch
  mkdir -p "$WHEELS"
  target=(--python-version 3.12 --implementation cp --only-binary=:all:
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform any)
  "$PY" -m pip download -q --no-deps "${target[@]}" -d "$WHEELS" \
    mmengine==0.10.7 mmsegmentation==1.2.2 addict yapf termcolor ftfy regex prettytable wcwidth
  "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$WHEELS" \
    mmcv==2.1.0
  ls "$WHEELS"
  exit 0
fi

OUT_DIR=${OUT:-gpu_results}
mkdir -p "$OUT_DIR"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: no CUDA GPU visible to $PY (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1))" >&2
  exit 2
fi
nvidia-smi -L | tee "$OUT_DIR/gpu.txt"
START=$SECONDS
if ! "$PY" -c "import mmseg, mmcv, mmengine" 2>/dev/null; then
  if ! ls "$WHEELS"/mmcv-2.1.0.tar.gz >/dev/null 2>&1; then
    echo "error: OpenMMLab's stack is not installed and $WHEELS/ has no wheels" \
      "(run 'bash scripts/gpu_check.sh --download' where PyPI is reachable)" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=$(nproc) "$PY" -m pip install -q --no-index --no-deps \
    --no-build-isolation --target /tmp/site "$WHEELS"/mmcv-2.1.0.tar.gz \
    >"$OUT_DIR/mmcv_build.log" 2>&1 || { tail -30 "$OUT_DIR/mmcv_build.log" >&2; exit 1; }
  echo "[gpu_check] installed mmengine, mmcv (CPU ops), mmseg in $((SECONDS - START)) s"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import torch, mmcv, mmseg; print('torch', torch.__version__, 'mmcv', mmcv.__version__,
'mmseg', mmseg.__version__, torch.cuda.get_device_name())" | tee -a "$OUT_DIR/gpu.txt"

status=0
"$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$OUT_DIR/cuda_tests.log" \
  || status=1

ANN=ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py
NL=nonlocal_net/nonlocal_r101-d8_4xb2-80k_cityscapes-512x1024.py
OURS_NL=nonlocal/nonlocal_r101-d8_4xb2-40k_cityscapes-512x1024.py
bench() {  # name, then ann-seg benchmark arguments
  local name=$1
  shift
  "$PY" -m ann_seg benchmark "$@" --device cuda --shape 512 1024 --repeat 10 --warmup 3 \
    --no-progress --json "$OUT_DIR/$name.json" 2>&1 | tee "$OUT_DIR/$name.md" || status=1
}
bench head mmseg::$ANN mmseg::$ANN+amp ann_seg::$ANN+fast mmseg::$NL mmseg::$NL+amp \
  ann_seg::$OURS_NL+fast --part head --no-flops
bench model mmseg::$ANN mmseg::$ANN+amp ann_seg::$ANN+fast --part model --no-flops
bench train mmseg::$ANN mmseg::$ANN+amp ann_seg::$ANN+fast ann_seg::$ANN+fast+cp \
  --mode train --batch-size 2 --no-flops
echo "[gpu_check] done in $((SECONDS - START)) s; results in $OUT_DIR (exit $status)"
exit $status
