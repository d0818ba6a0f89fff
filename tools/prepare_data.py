#!/usr/bin/env python3
"""`ann-seg prepare-data` (ann_seg/tools/prepare_data.py) (--help: options)."""

import sys

from ann_seg.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("prepare-data"))
