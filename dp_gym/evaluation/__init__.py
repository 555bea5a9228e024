"""Evaluation: the episode loop and typed results, the report writer and plots, and privacy attacks.

Dependency rule: this package may import ``envs`` and everything below it, never ``agents``;
controllers are passed in as anything with SB3's ``predict``.
"""

from dp_gym.evaluation.attacks import ATTACK_COLUMNS, privacy_attacks
from dp_gym.evaluation.audit import (
    AuditResult,
    audit_bound_from_scores,
    audit_p_value,
    epsilon_lower_bound,
    one_run_audit,
)
from dp_gym.evaluation.exposure import ExposureResult, canary_exposure, canary_exposures
from dp_gym.evaluation.membership import MembershipResult, attack_metrics, loss_attack, reference_attack
from dp_gym.evaluation.report import (
    AUDIT_COLUMNS,
    markdown_table,
    mean_ci95,
    summarize,
    terminal_table,
    write_json,
    write_report,
)
from dp_gym.evaluation.rollout import EpisodeResult, compare, crashed_episode, run_episode
from dp_gym.evaluation.scoring import record_log_likelihoods, record_losses

__all__ = [
    "ATTACK_COLUMNS",
    "AUDIT_COLUMNS",
    "AuditResult",
    "EpisodeResult",
    "ExposureResult",
    "MembershipResult",
    "attack_metrics",
    "audit_bound_from_scores",
    "audit_p_value",
    "canary_exposure",
    "canary_exposures",
    "compare",
    "crashed_episode",
    "epsilon_lower_bound",
    "loss_attack",
    "markdown_table",
    "terminal_table",
    "mean_ci95",
    "one_run_audit",
    "privacy_attacks",
    "record_log_likelihoods",
    "record_losses",
    "reference_attack",
    "run_episode",
    "summarize",
    "write_json",
    "write_report",
]
