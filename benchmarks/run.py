"""``python -m benchmarks.run --out DIR [options]``: the training-step benchmark (same as ``heterograd bench``).

All options of ``heterograd bench --help`` apply (``--quick``, ``--compile``, ``--device cuda``, ``--dtypes``...).
"""

from __future__ import annotations

import sys

from heterograd.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
