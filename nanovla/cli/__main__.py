"""`python -m nanovla.cli ...` (torchrun and the tests start the CLI this way)."""

import sys

from .main import main

sys.exit(main())
