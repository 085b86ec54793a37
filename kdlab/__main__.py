"""``python -m kdlab ...``: the kdlab command (``torchrun ... -m kdlab fit ...`` launches it per process)."""
import sys

from .cli import main

sys.exit(main())
