"""``python -m client ...``: the command line of client/cli.py (``python -m client --help``)."""

import sys

from client.cli import main

sys.exit(main())
