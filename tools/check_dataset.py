#!/usr/bin/env python3
"""`ann-seg check-dataset` (ann_seg/tools/check_dataset.py) (--help: options)."""

import sys

from ann_seg.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("check-dataset"))
