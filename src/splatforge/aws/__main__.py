"""``python -m splatforge.aws``: the same as ``splatforge aws-task``."""

import sys

from .task import main

if __name__ == "__main__":
    sys.exit(main())
