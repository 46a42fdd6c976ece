"""``python -m shelf_stream`` is ``shelf-stream``."""

import sys

from shelf_stream.cli import main

sys.exit(main())
