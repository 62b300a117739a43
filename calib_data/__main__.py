"""``python -m qnas.calib_data build|show ...`` (the commands live in :mod:`qnas.cli.calib`)."""
import sys

from qnas.cli.calib import main

if __name__ == "__main__":
    sys.exit(main())
