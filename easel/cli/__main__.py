"""`python -m easel.cli`: the `easel` command."""

import sys

from easel.cli import main

sys.exit(main())
