"""``python -m llmbuild``: the command line."""

import sys

from llmbuild.cli import main

sys.exit(main())
