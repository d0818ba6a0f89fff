#!/usr/bin/env bash
# Usage: tools/dist_infer.sh CONFIG CHECKPOINT INPUT NPROC [tools/infer.py args]: tools/infer.py
# in NPROC processes per node through torchrun (--launcher pytorch). Each rank segments every
# NPROC-th image of the input sorted by name (a re-run with another NPROC skips finished ones),
# on cuda:LOCAL_RANK, or on the CPU with cores // NPROC threads (--threads N wins), and writes
# its own journal.rank<k>.jsonl under --out-dir; rank 0 merges summary.json when all are done
# (tools/infer.py --merge-only --out-dir DIR merges by hand after a crash).
# Python: the repository's .venv/bin/python when present, else $PYTHON, else python.
# Env (several machines): NNODES, NODE_RANK, PORT (29500), MASTER_ADDR (127.0.0.1).
# Example: tools/dist_infer.sh CONFIG CHECKPOINT photos/ 2 --recursive --out-dir outputs/photos
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/dist_common.sh"
usage="usage: tools/dist_infer.sh CONFIG CHECKPOINT INPUT NPROC [tools/infer.py args]"
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit 0
fi
if [ $# -lt 4 ]; then
  echo "$usage" >&2
  exit 2
fi
NPROC=$4
check_nproc "$NPROC"
run_torchrun "$NPROC" infer.py "$1" "$2" "$3" "${@:5}"
