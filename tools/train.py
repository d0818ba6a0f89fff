#!/usr/bin/env python3
"""`ann-seg train` (ann_seg/tools/train.py) (--help: options)."""

import sys

from ann_seg.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("train"))
