"""Membership inference on private records: loss threshold and a reference-model (LiRA-style) attack.

* Loss attack (Yeom et al. 2018): score ``s(x) = -L_target(x)``; members have lower loss.
* Reference attack: ``s(x) = L_ref(x) - L_target(x)`` with the public base model as the
  reference (the offline, one-reference form of the likelihood-ratio attack of Carlini et al.
  2022: the reference removes how hard ``x`` is in general, leaving what training on ``x`` added).

Reported: ROC AUC and the TPR at a 1% FPR (the operating point that matters for privacy), both
from scikit-learn's ROC over members (positives) vs non-members (negatives). Non-members must be
drawn from the same distribution as members and never trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from dp_gym.evaluation.scoring import record_losses


@dataclass(frozen=True)
class MembershipResult:
    attack: str
    auc: float
    tpr_at_1pct_fpr: float
    members: int
    nonmembers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attack_metrics(member_scores, nonmember_scores, fpr: float = 0.01) -> tuple[float, float]:
    """``(AUC, TPR at FPR <= fpr)`` of scores where higher means "member"."""
    from sklearn.metrics import roc_auc_score, roc_curve

    members, nonmembers = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("membership inference needs at least one member and one non-member")
    labels = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]
    scores = np.r_[members, nonmembers]
    false_positive, true_positive, _ = roc_curve(labels, scores)
    tpr = float(true_positive[false_positive <= fpr].max(initial=0.0))
    return float(roc_auc_score(labels, scores)), tpr


def loss_attack(model: nn.Module, tokenizer, members: list[str], nonmembers: list[str]) -> MembershipResult:
    auc, tpr = attack_metrics(-record_losses(model, tokenizer, members), -record_losses(model, tokenizer, nonmembers))
    return MembershipResult("loss", auc, tpr, len(members), len(nonmembers))


def reference_attack(model: nn.Module, reference: nn.Module, tokenizer, members: list[str],
                     nonmembers: list[str]) -> MembershipResult:
    def scores(texts):
        return record_losses(reference, tokenizer, texts) - record_losses(model, tokenizer, texts)

    auc, tpr = attack_metrics(scores(members), scores(nonmembers))
    return MembershipResult("reference", auc, tpr, len(members), len(nonmembers))
