"""``python -m heterograd`` == ``heterograd``."""

from .cli import main

main()
