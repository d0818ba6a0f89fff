# Sourced by tools/dist_*.sh: runs `python -m ann_seg dist-<command> "$@"` (ann_seg/tools/
# launch.py: torchrun, one process per rank) with the repository's .venv/bin/python when
# present, else $PYTHON, else python. Installed from a wheel: `ann-seg dist-<command>` is the same.
ANN_SEG_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -x "$ANN_SEG_REPO/.venv/bin/python" ]; then
  ANN_SEG_PYTHON=$ANN_SEG_REPO/.venv/bin/python
else
  ANN_SEG_PYTHON=${PYTHON:-python}
fi
