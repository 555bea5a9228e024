"""Choosing noise multipliers for a budget."""

from __future__ import annotations

import math
import warnings

from opacus.accountants.utils import get_noise_multiplier

from dp_gym.privacy.ledger import PrivacyLedger

#: Above this noise multiplier a release is treated as carrying no usable signal; if even this
#: much noise does not fit the budget, the budget is spent.
MAX_NOISE_MULTIPLIER = 1e4


class BudgetExhaustedError(ValueError):
    """No noise multiplier, however large, keeps the run within its epsilon budget."""


def min_noise_for_budget(
    ledger: PrivacyLedger,
    epsilon_budget: float,
    sample_rate: float,
    steps: int,
    rel_tol: float = 1e-3,
) -> float:
    """The smallest noise multiplier ``z`` with ``ledger.epsilon_if(z, q, steps) <= epsilon_budget``.

    Epsilon is monotonically decreasing in ``z`` (for fixed history, q and steps), so bisection
    on ``log z`` finds it; the returned value is always on the feasible side, never the
    infeasible one, so using it can never overspend.

    Args:
        ledger: the run's ledger (not modified).
        epsilon_budget: the total epsilon the run may reach.
        sample_rate: Poisson sampling rate ``q`` of the planned steps.
        steps: number of planned steps.
        rel_tol: relative width of the final bracket on ``z``.

    Returns:
        A feasible noise multiplier within ``rel_tol`` of the smallest feasible one.

    Raises:
        BudgetExhaustedError: if even ``z = MAX_NOISE_MULTIPLIER`` overspends (e.g. the budget is
            already spent).
        ValueError: for a non-positive budget.
    """
    if not (math.isfinite(epsilon_budget) and epsilon_budget > 0):
        raise ValueError(f"epsilon_budget must be a finite number > 0, got {epsilon_budget!r}")
    if steps == 0 or sample_rate == 0.0:
        if ledger.epsilon() > epsilon_budget:
            raise BudgetExhaustedError(
                f"the ledger already spent epsilon={ledger.epsilon():.4g} > budget {epsilon_budget:.4g}"
            )
        return 0.0

    def fits(noise: float) -> bool:
        return ledger.epsilon_if(noise, sample_rate, steps) <= epsilon_budget

    high = 1.0
    if not fits(MAX_NOISE_MULTIPLIER):
        raise BudgetExhaustedError(
            f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} keeps epsilon <= {epsilon_budget:.4g} "
            f"for {steps} more step(s) at sample rate {sample_rate:g} "
            f"(already spent {ledger.epsilon():.4g})"
        )
    while not fits(high):
        high *= 4.0
    high = min(high, MAX_NOISE_MULTIPLIER)
    low = high / 4.0
    if fits(low):  # high == 1.0 fits: search below it
        low = 1e-3
        if fits(low):
            return low
    # invariant: fits(high) and not fits(low)
    while high / low > 1.0 + rel_tol:
        middle = math.sqrt(low * high)
        if fits(middle):
            high = middle
        else:
            low = middle
    return high


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
