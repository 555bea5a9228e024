"""The observation vector and its named layout.

Per group: ``log10`` noisy-gradient norm, privatized unclipped fraction (when released),
``log10`` clip, ``log10`` noise, prune ratio, ``log10`` update norm, cosine between the last
noisy updates of successive steps. Global: public validation loss and its change, privatized
training loss (when released), the share of the budget spent, updates done / max, ``log10`` of the
composed noise multiplier ``z`` of the last update, and the episode's budget: ``log10`` epsilon and
``log10`` expected batch size ``qN`` (public: one policy serves every budget). Oracle mode appends raw per-sample norm
quantiles and the clean training loss (not private).

A NaN never becomes a feature: :meth:`ObservationBuilder.build` raises
:class:`NonFiniteObservation` naming the entry (the environment then ends the episode), and an
infinite value is clipped to the bound of its sign.

Privacy: norms, update norms and cosines are post-processing of the noisy release; fractions and
the training loss are privatized releases accounted in the step's noise multiplier; the
validation loss is computed on public data; clip / noise / prune / epsilon / updates are the
controller's own choices or public bookkeeping.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces

from dp_gym.config import EnvConfig
from dp_gym.engine import StepReport

BOUND = 10.0
QUANTILES = (0.1, 0.5, 0.9)


class NonFiniteObservation(ValueError):
    """An observation entry would be NaN."""


def _log10(value: float) -> float:
    value = float(value)
    return value if math.isnan(value) else math.log10(max(value, 1e-8))


class ObservationBuilder:
    """Builds the fixed-length observation from the step's releases."""

    def __init__(self, config: EnvConfig, group_names: list[str]):
        self.config = config
        self.group_names = list(group_names)
        per_group = ["log_noisy_grad_norm"]
        if config.count_noise is not None:
            per_group.append("unclipped_fraction")
        per_group += ["log_clip", "log_noise", "prune", "log_update_norm", "update_cosine"]
        if config.observation == "oracle":
            per_group += [f"oracle_log_norm_q{int(q * 100)}" for q in QUANTILES]
        self.per_group = per_group
        global_features = ["val_loss", "val_loss_change"]
        if config.loss_noise is not None:
            global_features.append("train_loss")
        global_features += ["budget_fraction", "updates_fraction", "log_noise_multiplier", "log_epsilon_budget",
                            "log_expected_batch_size"]
        if config.observation == "oracle":
            global_features.append("oracle_clean_train_loss")
        self.global_features = global_features
        self.layout = [f"{f}/{g}" for g in self.group_names for f in per_group] + global_features
        self.space = spaces.Box(-BOUND, BOUND, shape=(len(self.layout),), dtype=np.float32)

    def initial(self, val_loss: float, expected_batch_size: float) -> np.ndarray:
        """Before any update: gradient features zero, the base model's validation loss, the budget."""
        values = dict.fromkeys(self.layout, 0.0)
        values.update(val_loss=val_loss, **self._budget_features(expected_batch_size))
        return self._vector(values)

    def _budget_features(self, expected_batch_size: float) -> dict[str, float]:
        """What one policy needs to serve every budget: public quantities of the episode's instance."""
        return {"log_epsilon_budget": _log10(self.config.epsilon),
                "log_expected_batch_size": _log10(expected_batch_size)}

    def build(self, reports: list[StepReport], previous_update: dict[str, torch.Tensor] | None,
              val_loss: float, val_loss_before: float, budget_fraction: float, updates: int,
              noise_multiplier: float, expected_batch_size: float) -> np.ndarray:
        """The observation after an interval: ``budget_fraction`` is the share of the budget spent
        (``PrivacyBudget.fraction_spent``), ``noise_multiplier`` the composed ``z`` of the interval's
        updates.

        Raises:
            NonFiniteObservation: naming the first entry that would be NaN.
        """
        cfg = self.config
        last = reports[-1]
        values: dict[str, float] = {}
        for index, group in enumerate(self.group_names):
            values[f"log_noisy_grad_norm/{group}"] = _log10(np.mean([r.noisy_grad_norm[index] for r in reports]))
            if cfg.count_noise is not None:
                values[f"unclipped_fraction/{group}"] = float(np.mean([r.unclipped_fraction[index] for r in reports]))
            values[f"log_clip/{group}"] = _log10(last.clip[index])
            values[f"log_noise/{group}"] = _log10(last.noise[index])
            values[f"prune/{group}"] = float(last.prune[index])
            values[f"log_update_norm/{group}"] = _log10(np.mean([r.update_norm[index] for r in reports]))
            values[f"update_cosine/{group}"] = _cosine(previous_update, last.noisy_update, group)
            if cfg.observation == "oracle":
                quantiles = _oracle_mean(reports, lambda o, i=index: o["per_sample_norm_quantiles"][i], len(QUANTILES))
                for q, value in zip(QUANTILES, quantiles, strict=True):
                    values[f"oracle_log_norm_q{int(q * 100)}/{group}"] = _log10(value)
        values["val_loss"] = val_loss
        values["val_loss_change"] = val_loss - val_loss_before
        if cfg.loss_noise is not None:
            values["train_loss"] = float(np.mean([r.train_loss for r in reports]))
        values["budget_fraction"] = budget_fraction
        values["updates_fraction"] = updates / cfg.max_updates
        values["log_noise_multiplier"] = _log10(noise_multiplier)
        values.update(self._budget_features(expected_batch_size))
        if cfg.observation == "oracle":
            values["oracle_clean_train_loss"] = float(_oracle_mean(reports, lambda o: o["clean_train_loss"], 1)[0])
        return self._vector(values)

    def _vector(self, values: dict[str, float]) -> np.ndarray:
        vector = np.array([values.get(name, 0.0) for name in self.layout], dtype=np.float64)
        missing = np.flatnonzero(np.isnan(vector))
        if missing.size:
            raise NonFiniteObservation(f"observation entry {self.layout[missing[0]]!r} is NaN")
        return np.clip(vector, -BOUND, BOUND).astype(np.float32)


def _oracle_mean(reports: list[StepReport], read, size: int) -> np.ndarray:
    """Mean of an oracle statistic over the step's updates (empty batches have none)."""
    samples = [np.atleast_1d(read(r.oracle)) for r in reports if r.oracle is not None]
    return np.mean(samples, axis=0) if samples else np.zeros(size)


def _cosine(previous: dict[str, torch.Tensor] | None, current: dict[str, torch.Tensor], group: str) -> float:
    if previous is None or group not in previous:
        return 0.0
    a, b = previous[group], current[group]
    denominator = float(a.norm() * b.norm())
    return float(torch.dot(a, b)) / denominator if denominator > 0 else 0.0
