"""``python -m pyramidflow`` runs the command line."""

import sys

from pyramidflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
