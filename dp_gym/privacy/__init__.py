"""Privacy accounting and calibration: pure functions and a ledger (no torch.nn here)."""

from dp_gym.privacy.calibration import (
    MAX_NOISE_MULTIPLIER,
    BudgetExhaustedError,
    calibrate_noise,
    min_noise_for_budget,
)
from dp_gym.privacy.ledger import ACCOUNTANTS, PrivacyLedger
from dp_gym.privacy.noise import (
    composed_noise_multiplier,
    effective_noise_multiplier,
    equal_group_sigmas,
    scale_sigmas_to,
)

__all__ = [
    "ACCOUNTANTS",
    "MAX_NOISE_MULTIPLIER",
    "BudgetExhaustedError",
    "PrivacyLedger",
    "calibrate_noise",
    "composed_noise_multiplier",
    "effective_noise_multiplier",
    "equal_group_sigmas",
    "min_noise_for_budget",
    "scale_sigmas_to",
]
