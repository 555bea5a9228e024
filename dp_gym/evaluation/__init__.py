"""Privacy evaluation: canary exposure, membership inference, and an empirical audit of epsilon.

Dependency rule: this package may import ``tasks``, ``engine``, ``envs`` and ``privacy``, never
``agents``; controllers are passed in as anything with SB3's ``predict``.
"""

from dp_gym.evaluation.audit import (
    AuditResult,
    audit_bound_from_scores,
    audit_p_value,
    epsilon_lower_bound,
    one_run_audit,
)
from dp_gym.evaluation.exposure import ExposureResult, canary_exposure, canary_exposures
from dp_gym.evaluation.membership import MembershipResult, attack_metrics, loss_attack, reference_attack
from dp_gym.evaluation.report import ATTACK_COLUMNS, privacy_attacks
from dp_gym.evaluation.scoring import record_log_likelihoods, record_losses

__all__ = [
    "ATTACK_COLUMNS",
    "AuditResult",
    "ExposureResult",
    "MembershipResult",
    "attack_metrics",
    "audit_bound_from_scores",
    "audit_p_value",
    "canary_exposure",
    "canary_exposures",
    "epsilon_lower_bound",
    "loss_attack",
    "one_run_audit",
    "privacy_attacks",
    "record_log_likelihoods",
    "record_losses",
    "reference_attack",
]
