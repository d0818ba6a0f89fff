#!/usr/bin/env python3
"""`ann-seg convert` (ann_seg/tools/convert_mmseg_ann.py) (--help: options)."""

import sys

from ann_seg.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("convert"))
