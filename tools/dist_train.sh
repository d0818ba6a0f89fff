#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG NPROC [train args]: `ann-seg dist-train` (torchrun, NPROC processes
# per node, gloo on the CPU, nccl on CUDA). Env: NNODES, NODE_RANK, PORT, MASTER_ADDR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/dist_common.sh"
exec "$ANN_SEG_PYTHON" -m ann_seg dist-train "$@"
