"""``python -m udpcap_ctypes``: the same as ``python -m udpcap_ctypes.check``."""

import sys

from .check import main

if __name__ == "__main__":
    sys.exit(main())
