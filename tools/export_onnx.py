#!/usr/bin/env python3
"""`ann-seg export-onnx` (ann_seg/tools/export_onnx.py) (--help: options)."""

import sys

from ann_seg.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("export-onnx"))
