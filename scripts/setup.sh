#!/usr/bin/env bash
# Creates .venv/, installs the pinned stack and ann_seg (editable), then runs the main job
# (tools/demo.py: synthetic data, training, evaluation, predictions). Idempotent: a second run
# skips finished installs and finished training. --no-demo: install only. Every step prints
# its time; the mmcv build shows its compiled sources and, on failure, its log's last lines.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
RUN_DEMO=1
for arg in "$@"; do
  case "$arg" in
    --no-demo) RUN_DEMO=0 ;;
    *) echo "usage: scripts/setup.sh [--no-demo]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
TOTAL_START=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV with $($PY --version)" "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
if ! have "$VENV" torch==2.13.0 setuptools==80.9.0 wheel==0.45.1; then
  step "installing torch 2.13.0 (CPU) and build tools" \
    "${PIP[@]}" -q "pip>=23.2" "setuptools==80.9.0" "wheel==0.45.1" "torch==2.13.0" "numpy<2.3"
fi
if ! have "$VENV" mmengine==0.10.7; then
  step "installing mmengine" "${PIP[@]}" -q "mmengine==0.10.7" "opencv-python>=4.8,<5"
fi
if ! have "$VENV" mmcv==2.1.0; then
  step "mmcv 2.1.0" build_mmcv "$VENV"
fi
if ! have "$VENV" mmsegmentation==1.2.2; then
  step "installing mmsegmentation 1.2.2 and its undeclared dependencies" \
    "${PIP[@]}" -q "mmsegmentation==1.2.2" ftfy regex
fi
step "installing ann_seg (editable) with the dev tools and the cityscapes extra" \
  "${PIP[@]}" -q --no-build-isolation -e ".[dev,cityscapes]"
echo "[setup] installed: $("$VENV/bin/python" -c 'import torch, mmcv, mmengine, mmseg; print("torch", torch.__version__, "mmcv", mmcv.__version__, "mmengine", mmengine.__version__, "mmseg", mmseg.__version__)') in $((SECONDS - TOTAL_START)) s"
if [ "$RUN_DEMO" = 1 ]; then
  step "running the main job: tools/demo.py" "$VENV/bin/python" tools/demo.py
fi
