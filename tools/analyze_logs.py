#!/usr/bin/env python3
"""`ann-seg analyze-logs` (ann_seg/tools/analyze_logs.py) (--help: options)."""

import sys

from ann_seg.tools import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("analyze-logs"))
