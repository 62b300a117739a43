"""``python -m qnas.calib_data build|show ...`` (see :mod:`qnas.calib_data.build_calib`)."""
import sys

from qnas.calib_data.build_calib import main

if __name__ == "__main__":
    sys.exit(main())
