"""``python -m heterograd.distributed [train options]`` = ``heterograd train --distributed [options]`` (under torchrun).

An entry point, so it sits with the command line: the trainer in `heterograd.distributed` knows nothing of it.
"""

from __future__ import annotations

import sys

from ..cli import main as cli_main


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    cli_main(["train", "--distributed", *args])


if __name__ == "__main__":
    main()
