"""`python -m agents.finetune ...` is `dp-gym finetune ...`."""

import sys

from dp_gym.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
