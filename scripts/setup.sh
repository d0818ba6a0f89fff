#!/usr/bin/env bash
# Creates .venv/, installs the pinned stack and ann_seg (editable), then runs the main job
# (tools/demo.py: synthetic data, training, evaluation, predictions). Idempotent: a second run
# skips finished installs and finished training. --no-demo: install only.
set -euo pipefail
cd "$(dirname "$0")/.."
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
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
have() { "$VENV/bin/python" - "$@" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        got = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if got.split("+")[0] != want:
        sys.exit(1)
PYEOF
}
if ! have torch==2.13.0 setuptools==80.9.0 wheel==0.45.1; then
  echo "[setup] installing torch 2.13.0 (CPU) and build tools"
  "${PIP[@]}" -q "pip>=23.2" "setuptools==80.9.0" "wheel==0.45.1" "torch==2.13.0" "numpy<2.3"
fi
if ! have mmengine==0.10.7; then
  echo "[setup] installing mmengine"
  "${PIP[@]}" -q "mmengine==0.10.7" "opencv-python"
fi
if ! have mmcv==2.1.0; then
  echo "[setup] building mmcv 2.1.0 with CPU ops (about 11 minutes on 2 cores the first time; pip caches the wheel)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} FORCE_CUDA=0 "${PIP[@]}" --no-build-isolation "mmcv==2.1.0"
fi
if ! have mmsegmentation==1.2.2; then
  echo "[setup] installing mmsegmentation 1.2.2 and its undeclared dependencies"
  "${PIP[@]}" -q "mmsegmentation==1.2.2" ftfy regex
fi
echo "[setup] installing ann_seg (editable) with test tools"
"${PIP[@]}" -q --no-build-isolation -e ".[dev]"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, mmcv, mmengine, mmseg; print("torch", torch.__version__, "mmcv", mmcv.__version__, "mmengine", mmengine.__version__, "mmseg", mmseg.__version__)')"
if [ "$RUN_DEMO" = 1 ]; then
  echo "[setup] running the main job: tools/demo.py"
  "$VENV/bin/python" tools/demo.py
fi
