"""`python -m vlcofit ...` (also what `accelerate launch -m vlcofit ...` runs)."""
import sys

from .cli import main

sys.exit(main())
