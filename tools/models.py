#!/usr/bin/env python3
"""`ann-seg models` (ann_seg/tools/models.py) (--help: options)."""

import sys

from ann_seg.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("models"))
