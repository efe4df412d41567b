import sys

from elbolab.cli import main

sys.exit(main())
