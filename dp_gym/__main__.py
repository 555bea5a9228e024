"""``python -m dp_gym ...`` is the ``dp-gym`` command."""

import sys

from dp_gym.cli import main

sys.exit(main())
