"""``python -m tilespec``: the ``tilespec`` command line (:mod:`tilespec.cli`; README.md,
"Command line"; its commands are specified in spec/index.md and spec/reliability.md)."""

import sys

from .cli import main

sys.exit(main())
