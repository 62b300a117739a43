import sys

from qnas.cli import main

sys.exit(main())
