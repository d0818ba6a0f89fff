#!/usr/bin/env python3
"""`ann-seg make-data` (ann_seg/tools/make_synthetic_data.py) (--help: options)."""

import sys

from ann_seg.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("make-data"))
