"""`python -m dumpfs` is the `dumpfs` command (tests use it: no PATH needed)."""

import sys

from dumpfs.cli import main

sys.exit(main())
