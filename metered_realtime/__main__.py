"""``python -m metered_realtime`` runs the command line."""

import sys

from metered_realtime.cli import main

sys.exit(main())
