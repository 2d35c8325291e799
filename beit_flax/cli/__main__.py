"""`python -m beit_flax.cli ...`: the `beit-depth` command without its console script."""

import sys

from beit_flax.cli import main

sys.exit(main())
