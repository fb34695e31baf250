"""``python -m simulator.cli``: the same as the ``edgesim`` command."""

import sys

from simulator.cli import main

sys.exit(main())
