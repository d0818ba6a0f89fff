"""Several processes through torchrun (``torch.distributed.run``), each running ``python -m
ann_seg <command> ... --launcher pytorch``: gloo on the CPU, nccl on CUDA.

  ann-seg dist-train CONFIG NPROC [train args]
  ann-seg dist-test CONFIG CHECKPOINT NPROC [test args]
  ann-seg dist-infer CONFIG CHECKPOINT INPUT NPROC [infer args]

Several machines: NNODES, NODE_RANK, PORT (default 29500), MASTER_ADDR (default 127.0.0.1) in
the environment, as mmseg's dist_train.sh. With NPROC > 1, one OpenMP thread per process
unless OMP_NUM_THREADS is set (infer's ranks choose cores // NPROC threads themselves).
"""

import os
import sys
from typing import Mapping, Sequence, Tuple

from ann_seg.mmseg.config import ConfigError

# command -> (tool it runs, its positional arguments before NPROC)
LAUNCHED = {
    "dist-train": ("train", ("CONFIG",)),
    "dist-test": ("test", ("CONFIG", "CHECKPOINT")),
    "dist-infer": ("infer", ("CONFIG", "CHECKPOINT", "INPUT")),
}


def split_arguments(command: str, argv: Sequence[str]) -> Tuple[str, list, int]:
    """``(tool, tool arguments, NPROC)`` of ``ann-seg <command> argv``; ``ConfigError`` on bad
    usage."""
    tool, positional = LAUNCHED[command]
    usage = f"usage: ann-seg {command} {' '.join(positional)} NPROC [{tool} args]"
    if len(argv) <= len(positional) or argv[0] in ("-h", "--help"):
        raise ConfigError(f"{usage}\n{__doc__.strip().splitlines()[0]}")
    nproc = argv[len(positional)]
    if not nproc.isdigit() or int(nproc) < 1:
        raise ConfigError(f"NPROC must be a positive integer, got '{nproc}' ({usage})")
    return tool, [*argv[: len(positional)], *argv[len(positional) + 1 :]], int(nproc)


def torchrun_command(
    tool: str, tool_args: Sequence[str], nproc: int, env: Mapping[str, str]
) -> list:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={env.get('NNODES', '1')}",
        f"--node_rank={env.get('NODE_RANK', '0')}",
        f"--master_addr={env.get('MASTER_ADDR', '127.0.0.1')}",
        f"--master_port={env.get('PORT', '29500')}",
        f"--nproc_per_node={nproc}",
        "-m",
        "ann_seg",
        tool,
        *tool_args,
        "--launcher",
        "pytorch",
    ]


def main(command: str, argv: Sequence[str]) -> int:
    tool, tool_args, nproc = split_arguments(command, argv)
    env = dict(os.environ)
    if nproc > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
    args = torchrun_command(tool, tool_args, nproc, env)
    print(
        f"[ann-seg {command}] {nproc} process(es) on node {env.get('NODE_RANK', '0')} of "
        f"{env.get('NNODES', '1')}, master {args[5].split('=')[1]}:{args[6].split('=')[1]}",
        file=sys.stderr,
        flush=True,
    )
    os.execve(args[0], args, env)  # torchrun replaces this process: signals reach it directly
    return 0  # not reached
