#!/usr/bin/env bash
# Builds a second environment, .venv-torch21/, with the stack GPU users have (torch 2.1.2:
# OpenMMLab's prebuilt CUDA mmcv 2.1.0 wheels exist only for torch 2.0/2.1), then runs the
# tests there. Idempotent: every install step is skipped when its pinned versions are already
# there. The mmcv ops are compiled from the sdist against this torch, CPU ops only (12 to 25
# minutes on 2 cores, depending on what else runs; the torch download is a few GB of nvidia-*
# runtime packages).
#
#   scripts/check_torch_compat.sh [--install-only] [PYTEST_ARGS...]
#
# --install-only: stop after the install. Any other arguments go to pytest, which runs as
#   .venv-torch21/bin/python -m pytest -q --ignore=tests/test_wheel.py PYTEST_ARGS...
#   (without a test path: the whole suite, pyproject's testpaths, but the wheel test, which
#   builds against the main .venv; with one, e.g. tests/mmseg/test_checkpoint_safety.py, that)
# Environment: PYTHON (default python3.11), MAX_JOBS (mmcv compile jobs, default 2),
#   WAIT_BEFORE_BUILD (a shell command polled every 30 s; the mmcv compile starts only once it
#   succeeds, e.g. to let another build that holds the cores finish first).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
INSTALL_ONLY=0
PYTEST_ARGS=()
for arg in "$@"; do
  case "$arg" in
    --install-only) INSTALL_ONLY=1 ;;
    *) PYTEST_ARGS+=("$arg") ;;
  esac
done

VENV=.venv-torch21
PY=${PYTHON:-python3.11}
CONSTRAINTS=$VENV/compat-constraints.txt

STEP_TAG=compat
source scripts/lib.sh
T0=$SECONDS
numpy_1() { "$VENV/bin/python" -c 'import sys; from importlib.metadata import version
sys.exit(int(version("numpy").split(".")[0]) != 1)' 2>/dev/null; }
skip() { echo "[compat] $1: already satisfied"; }

# a. the virtual environment
S="a. create $VENV with $($PY --version 2>&1)"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  skip "$S"
else
  step "$S" "$PY" -m venv "$VENV"
fi

# Every install below runs under these pins, so no later step can move torch or numpy.
# opencv-python 4.12 and later require numpy>=2; 4.11.0.86 is the last one for numpy 1.x.
cat > "$CONSTRAINTS" <<'EOF'
torch==2.1.2
numpy<2
setuptools==69.5.1
opencv-python==4.11.0.86
onnx==1.23.2
onnxruntime==1.32.0
EOF
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -c "$CONSTRAINTS")

# b. torch 2.1.2 and the build tools. setuptools: < 70 for mmcv's build, mmengine needs
# pkg_resources (< 81). ninja: parallel compile (MAX_JOBS) of the mmcv ops.
S="b. torch 2.1.2, numpy<2, setuptools 69.5.1, wheel, ninja, opencv-python 4.11.0.86"
if have "$VENV" torch==2.1.2 setuptools==69.5.1 wheel ninja opencv-python==4.11.0.86 && numpy_1; then
  skip "$S"
else
  step "$S" "${PIP[@]}" -q "pip>=23.2" "torch==2.1.2" "numpy<2" "setuptools==69.5.1" wheel \
    ninja "opencv-python==4.11.0.86"
fi

# c. mmengine
S="c. mmengine 0.10.7"
if have "$VENV" mmengine==0.10.7; then
  skip "$S"
else
  step "$S" "${PIP[@]}" -q "mmengine==0.10.7"
fi

# d. mmcv 2.1.0 with CPU ops, compiled against this torch. --no-cache-dir: pip's wheel cache
# may hold an mmcv 2.1.0 wheel built against another torch (scripts/setup.sh builds one), whose
# _ext would not load here.
S="d. mmcv 2.1.0 (CPU ops, built from the sdist against torch 2.1.2)"
if have "$VENV" mmcv==2.1.0 && mmcv_ops_ok "$VENV"; then
  skip "$S"
else
  if [ -n "${WAIT_BEFORE_BUILD:-}" ]; then
    echo "[compat] waiting for: $WAIT_BEFORE_BUILD (polled every 30 s)"
    until bash -c "$WAIT_BEFORE_BUILD"; do sleep 30; done
  fi
  # an mmcv whose ops do not import (built against another torch) goes first, or pip would
  # call it already satisfied
  if have "$VENV" mmcv; then "$VENV/bin/python" -m pip uninstall -y -q mmcv; fi
  step "$S" build_mmcv "$VENV" -c "$CONSTRAINTS" --no-cache-dir
fi

# e. mmsegmentation, its undeclared dependencies, and the test tools
S="e. mmsegmentation 1.2.2, ftfy, regex, pytest, scikit-image, onnx, onnxruntime"
if have "$VENV" mmsegmentation==1.2.2 ftfy regex pytest scikit-image onnx onnxruntime; then
  skip "$S"
else
  step "$S" "${PIP[@]}" -q "mmsegmentation==1.2.2" ftfy regex "pytest>=7" scikit-image onnx \
    onnxruntime
fi

# f. ann_seg itself, editable, from this checkout
S="f. ann_seg (editable)"
if have "$VENV" ann_seg && (cd /tmp && "$REPO/$VENV/bin/python" -c 'import sys, os, ann_seg
sys.exit(os.path.dirname(os.path.dirname(os.path.realpath(ann_seg.__file__))) != os.path.realpath(sys.argv[1]))' "$REPO") 2>/dev/null; then
  skip "$S"
else
  step "$S" "${PIP[@]}" -q --no-build-isolation --no-deps -e .
fi

echo "[compat] installed in $((SECONDS - T0)) s: $("$VENV/bin/python" -c 'import torch, mmcv, mmengine, mmseg; print("torch", torch.__version__, "mmcv", mmcv.__version__, "mmengine", mmengine.__version__, "mmseg", mmseg.__version__)')"
[ "$INSTALL_ONLY" = 1 ] && exit 0

# g. the tests under torch 2.1.2
echo "[compat] g. pytest under torch 2.1.2"
exec "$VENV/bin/python" -m pytest -q --ignore=tests/test_wheel.py "${PYTEST_ARGS[@]}"
