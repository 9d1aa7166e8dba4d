"""`python -m vlcofit ...` (also what `accelerate launch -m vlcofit ...` runs)."""
import sys

from .cli.main import main

if __name__ == "__main__":  # loader workers (forkserver / spawn) import the main module again
    sys.exit(main())
