# Sourced by tools/dist_train.sh and tools/dist_test.sh: the interpreter and torchrun's
# settings. Python: the repository's .venv/bin/python when present, else $PYTHON, else python.
ANN_SEG_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -x "$ANN_SEG_REPO/.venv/bin/python" ]; then
  ANN_SEG_PYTHON=$ANN_SEG_REPO/.venv/bin/python
else
  ANN_SEG_PYTHON=${PYTHON:-python}
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}

# check_nproc NPROC: a positive integer, else usage error (exit 2)
check_nproc() {
  if ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: NPROC must be a positive integer, got '$1'" >&2
    exit 2
  fi
  # one OpenMP/MKL thread per process unless set (torchrun's and mmengine's default, quietly)
  if [ "$1" -gt 1 ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
  fi
}

# run_torchrun NPROC SCRIPT ARGS...: SCRIPT under torch.distributed.run, --launcher pytorch
run_torchrun() {
  local nproc=$1 script=$2
  shift 2
  echo "[$(basename "$0")] $ANN_SEG_PYTHON, $nproc process(es) on node $NODE_RANK of $NNODES," \
    "master $MASTER_ADDR:$PORT" >&2
  exec "$ANN_SEG_PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$nproc" --master_port="$PORT" \
    "$ANN_SEG_REPO/tools/$script" "$@" --launcher pytorch
}
