"""All privacy attacks on one fine-tuned text model, as one flat, JSON-ready dictionary."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from dp_gym.evaluation.exposure import canary_exposures
from dp_gym.evaluation.membership import loss_attack, reference_attack
from dp_gym.tasks import SupportsPrivacyAttacks

#: the columns ``privacy_attacks`` adds to comparison tables
ATTACK_COLUMNS = ("exposure_mean", "exposure_max", "mia_loss_auc", "mia_loss_tpr_at_1pct_fpr",
                  "mia_reference_auc", "mia_reference_tpr_at_1pct_fpr")


def privacy_attacks(model: nn.Module, task, reference: nn.Module | None = None, n_candidates: int | None = 999,
                    n_records: int = 256, nonmembers: list[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Canary exposure (if the task has canaries) and membership inference on ``model``.

    Args:
        model: the fine-tuned model.
        task: a :class:`dp_gym.tasks.TextTask` (its private records, canaries and tokenizer).
        reference: the reference model of the likelihood-ratio attack (default: the task's public
            base model, ``task.build_model()``).
        n_candidates: secrets sampled per canary (``None``: the whole space).
        n_records: members (private training records, canaries excluded) and as many non-members.
        nonmembers: non-member records (default: fresh records of the private distribution).
    """
    if not isinstance(task, SupportsPrivacyAttacks):
        raise ValueError(f"privacy attacks need a text task with records; {type(task).__name__} has none")
    tokenizer = task.tokenizer
    members = task.member_records()[:n_records]
    outsiders = (nonmembers if nonmembers is not None else task.nonmember_records(len(members)))[: len(members)]
    reference = reference if reference is not None else task.build_model()
    result: dict[str, Any] = {}
    if task.canaries:
        exposures = canary_exposures(model, tokenizer, task.canaries, n_candidates, seed=seed)
        values = np.array([e.exposure for e in exposures])
        result.update(exposure_mean=float(values.mean()), exposure_max=float(values.max()),
                      exposure_cap=exposures[0].max_exposure, exposure_sampled=exposures[0].sampled,
                      canaries=len(exposures), canary_repeats=task.canaries[0].repeats,
                      exposures=[e.to_dict() for e in exposures])
    loss = loss_attack(model, tokenizer, members, outsiders)
    ratio = reference_attack(model, reference, tokenizer, members, outsiders)
    result.update(mia_loss_auc=loss.auc, mia_loss_tpr_at_1pct_fpr=loss.tpr_at_1pct_fpr,
                  mia_reference_auc=ratio.auc, mia_reference_tpr_at_1pct_fpr=ratio.tpr_at_1pct_fpr,
                  mia_members=loss.members, mia_nonmembers=loss.nonmembers)
    return result
