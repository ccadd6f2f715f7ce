"""`python -m helix.cli`: the `helix` command."""

import sys

from helix.cli.entry import main

sys.exit(main())
