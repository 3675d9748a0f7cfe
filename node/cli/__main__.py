"""`python -m node.cli`: the same as `rain`."""

import sys

from node.cli import main

sys.exit(main())
