"""`python -m helix.cli`: the `helix` command."""

import sys

from helix.cli.main import main

sys.exit(main())
