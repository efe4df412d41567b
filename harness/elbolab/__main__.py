"""`python -m elbolab`: the elbolab command."""

import sys

from elbolab.cli import main

sys.exit(main())
