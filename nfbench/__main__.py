"""``python -m nfbench`` is the ``nfbench`` command."""

import sys

from nfbench.cli import main

sys.exit(main())
