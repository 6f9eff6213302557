"""``python -m enclap.metrics``: the ``enclap-metrics`` command."""

import sys

from .cli import main

sys.exit(main())
