"""`python -m podckpt.bundle build [--out DIR]`: build the agent bundle (see podckpt.bundle)."""

import sys

from .cli import main

sys.exit(main())
