"""``python -m heterograd.bench --out DIR [options]`` = ``heterograd bench --out DIR [options]``."""

from __future__ import annotations

import sys

from ..cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
