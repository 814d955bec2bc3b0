"""`python -m zcser`: the command line lives in `zcser.tools.cli`."""

import sys

from zcser.tools.cli import main

sys.exit(main())
