"""Choosing noise multipliers for a budget."""

from __future__ import annotations

import functools
import math
import warnings

from opacus.accountants.utils import get_noise_multiplier

#: Above this noise multiplier a release is treated as carrying no usable signal; if even this
#: much noise does not fit the budget, the budget is spent.
MAX_NOISE_MULTIPLIER = 1e4


class BudgetExhaustedError(ValueError):
    """No noise multiplier, however large, keeps the run within its epsilon budget."""


@functools.lru_cache(maxsize=256)  # a pure function of its arguments, and it costs 0.3 to 2 s
def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The noise multiplier that spends ``target_epsilon`` in exactly ``steps`` homogeneous steps.

    Wraps Opacus' ``get_noise_multiplier``, whose result always satisfies
    ``epsilon(z) <= target_epsilon`` and ``target_epsilon - epsilon(z) <= epsilon_tolerance``.

    Raises:
        ValueError: for a non-positive epsilon, delta outside (0, 1), or steps < 1.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if not (0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=int(steps),
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
        )
