#!/usr/bin/env python3
"""`ann-seg visualize-attention` (ann_seg/tools/visualize_attention.py) (--help: options)."""

import sys

from ann_seg.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("visualize-attention"))
