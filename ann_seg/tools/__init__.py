"""The command-line tools: ``ann-seg <command> [args]`` (console script), ``python -m ann_seg
<command>``, ``python -m ann_seg.tools.<module>`` and the repository's ``tools/<module>.py``
all run the same ``main`` of ``ann_seg/tools/<module>.py``."""

import importlib
import sys
from typing import Optional, Sequence

from ann_seg.tools import cli

# command -> (module, one-line summary)
COMMANDS = {
    "demo": ("demo", "the main job on built-in synthetic data: train, evaluate, predict"),
    "train": ("train", "train a config through mmengine's Runner (mmseg's tools/train.py)"),
    "test": ("test", "evaluate a checkpoint through mmengine's Runner (mmseg's tools/test.py)"),
    "infer": ("infer", "segment images, folders or list files; resumable, batched"),
    "dist-train": ("launch", "train in NPROC processes through torchrun"),
    "dist-test": ("launch", "test in NPROC processes through torchrun"),
    "dist-infer": ("launch", "segment a folder in NPROC processes through torchrun"),
    "benchmark": ("benchmark", "configs side by side: latency, memory, params, MACs"),
    "benchmark-blocks": ("benchmark_blocks", "APNB vs the non-local family, block level"),
    "benchmark-inference": ("benchmark_inference", "inference modes: speed and pixel agreement"),
    "check-dataset": ("check_dataset", "scan a config's data sets for unusable files"),
    "prepare-data": ("prepare_data", "Cityscapes polygons to train ids, then check the layout"),
    "models": ("models", "mmseg's published ANN/NonLocal models, by name, with their figures"),
    "convert": ("convert_mmseg_ann", "convert an mmseg ANN/NonLocal checkpoint to ann_seg's"),
    "export-onnx": ("export_onnx", "export to ONNX, verified with onnxruntime"),
    "make-data": ("make_synthetic_data", "generate the built-in synthetic data set"),
    "visualize-attention": ("visualize_attention", "where AFNB/APNB attend for chosen pixels"),
    "analyze-logs": ("analyze_logs", "plot training curves from mmengine's logs"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    return (
        "usage: ann-seg <command> [args]   (ann-seg <command> --help for its options)\n\n"
        f"commands:\n{rows}\n"
    )


def run_tool(command: str, argv: Optional[Sequence[str]] = None) -> int:
    """Run one command's ``main`` with the shared error handling (``cli.run``)."""
    module = importlib.import_module(f"ann_seg.tools.{COMMANDS[command][0]}")
    args = list(sys.argv[1:] if argv is None else argv)
    if module.__name__.endswith(".launch"):
        return cli.run(lambda a: module.main(command, a), args)
    return cli.run(module.main, args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"error: unknown command '{args[0]}'\n\n{usage()}", end="", file=sys.stderr)
        return 2
    return run_tool(args[0], args[1:])
