"""``python -m crdtdb`` is the ``crdtdb`` command."""

import sys

from .cli import main

sys.exit(main())
