"""`python -m agents.compare ...` is `dp-gym compare ...`."""

import sys

from dp_gym.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
