"""``python -m harmonize``: the ``harmonize`` command."""

import sys

from harmonize.cli import main

if __name__ == "__main__":
    sys.exit(main())
