"""Library noise off for the command line (``dp-gym -v`` keeps it): warnings and weight-loading bars
of transformers, Opacus, Stable-Baselines3 and torch. dp-gym's own progress bars and messages stay."""

from __future__ import annotations

import logging
import os
import warnings

LIBRARIES = ("transformers", "opacus", "stable_baselines3", "torch", "gymnasium", "tensorboard")


def quiet_libraries() -> None:
    """Silence library warnings and progress bars, here and in environment worker processes."""
    for library in LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{library}(\..*)?")
        logging.getLogger(library).setLevel(logging.ERROR)
    # worker processes (SubprocVecEnv) start fresh interpreters: tell them through the environment
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass
