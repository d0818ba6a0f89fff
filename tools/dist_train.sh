#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG NPROC [tools/train.py args]: NPROC processes through
# torchrun, gloo on CPU, nccl on CUDA. Python: the repository's .venv/bin/python when present,
# else $PYTHON, else python. Env: NNODES, NODE_RANK, PORT (29500), MASTER_ADDR (127.0.0.1).
# Example: tools/dist_train.sh configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py 2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/dist_common.sh"
if [ $# -lt 2 ]; then
  echo "usage: tools/dist_train.sh CONFIG NPROC [tools/train.py args]" >&2
  exit 2
fi
CONFIG=$1
NPROC=$2
check_nproc "$NPROC"
run_torchrun "$NPROC" train.py "$CONFIG" "${@:3}"
