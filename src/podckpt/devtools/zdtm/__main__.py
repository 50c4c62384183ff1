"""`python -m podckpt.devtools.zdtm`: the conformance comparison (see suite.py)."""

import sys

from .suite import main

sys.exit(main())
