"""`python -m agents.train ...` is `dp-gym train ...`."""

import sys

from dp_gym.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
