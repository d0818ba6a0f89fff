#!/usr/bin/env bash
# Usage: tools/dist_test.sh CONFIG CHECKPOINT NPROC [tools/test.py args]: NPROC processes
# through torchrun, gloo on CPU, nccl on CUDA. Python: the repository's .venv/bin/python when
# present, else $PYTHON, else python. Env: NNODES, NODE_RANK, PORT (29500), MASTER_ADDR.
# Example: tools/dist_test.sh configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \
#     work_dirs/demo/iter_600.pth 2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/dist_common.sh"
if [ $# -lt 3 ]; then
  echo "usage: tools/dist_test.sh CONFIG CHECKPOINT NPROC [tools/test.py args]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
check_nproc "$NPROC"
run_torchrun "$NPROC" test.py "$CONFIG" "$CHECKPOINT" "${@:4}"
