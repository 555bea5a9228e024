"""Privacy accounting and calibration: pure functions, a ledger and the run's budget (no torch.nn here)."""

from dp_gym.privacy.budget import Fit, PrivacyBudget
from dp_gym.privacy.calibration import (
    MAX_NOISE_MULTIPLIER,
    BudgetExhaustedError,
    calibrate_noise,
)
from dp_gym.privacy.ledger import ACCOUNTANTS, PrivacyLedger
from dp_gym.privacy.noise import (
    NO_STATISTICS,
    ReleasedStatistics,
    composed_noise_multiplier,
    effective_noise_multiplier,
    equal_group_sigmas,
    scale_sigmas_to,
)
from dp_gym.privacy.report import PrivacyReport, compose, compose_basic

__all__ = [
    "ACCOUNTANTS",
    "MAX_NOISE_MULTIPLIER",
    "NO_STATISTICS",
    "BudgetExhaustedError",
    "Fit",
    "PrivacyBudget",
    "PrivacyLedger",
    "PrivacyReport",
    "ReleasedStatistics",
    "calibrate_noise",
    "compose",
    "compose_basic",
    "composed_noise_multiplier",
    "effective_noise_multiplier",
    "equal_group_sigmas",
    "scale_sigmas_to",
]
