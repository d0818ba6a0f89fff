"""``python -m ann_seg <command> [args]``: the same as the ``ann-seg`` console script."""

import sys

from ann_seg.tools import main

sys.exit(main())
