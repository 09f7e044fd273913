"""``python -m nbwoq``: the ``nbwoq`` command (no arguments: quantize the built-in demo checkpoint)."""

import sys

from nbwoq.command.cli import main

if __name__ == "__main__":
    sys.exit(main())
