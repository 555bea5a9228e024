"""One DP fine-tuning run: task + model + optimizer + DP updater + Poisson sampler + ledger.

The Gymnasium environment is a thin RL interface over this object; scripts that want a fixed
schedule (the plain DP-SGD baseline, the demo) use it directly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dp_gym.engine import DPUpdater, ParameterGroups, PoissonBatches, StepReport
from dp_gym.privacy import PrivacyLedger
from dp_gym.tasks import Task

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run that is not the per-update controls.

    ``sample_rate`` is the Poisson rate ``q``; the expected batch size is ``q * train_size``.
    ``count_noise`` / ``loss_noise`` are ``sigma_b`` / ``sigma_l`` of the privatized statistics
    (None: not released). ``loss_bound`` is ``L``.
    """

    sample_rate: float = 0.05
    delta: float = 1e-5
    accountant: str = "rdp"
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    grouping: str | Sequence[str] = "per_block"
    count_noise: float | None = 10.0
    loss_noise: float | None = 10.0
    loss_bound: float = 8.0
    secure_mode: bool = False
    oracle: bool = False
    seed: int = 0


class FineTuningRun:
    """A private fine-tuning run whose every update is chosen from outside.

    Args:
        task: the task (model, data, losses).
        settings: run settings.
    """

    def __init__(self, task: Task, settings: RunSettings):
        if settings.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {settings.optimizer!r}")
        self.task = task
        self.settings = settings
        self.model = task.build_model()
        self.groups = ParameterGroups(self.model, settings.grouping)
        self._base_state = copy.deepcopy(self.model.state_dict())
        self._module = None  # the GradSampleModule wrapping self.model, made once (hooks!)
        self.base_val_loss = task.evaluate(self.model)
        self.reset(settings.seed)

    # ------------------------------------------------------------------ lifecycle
    def reset(self, seed: int | None = None) -> None:
        """Back to the base weights, a fresh optimizer, sampler, noise stream and ledger."""
        s = self.settings
        self.seed = s.seed if seed is None else int(seed)
        torch.manual_seed(self.seed)
        self.model.load_state_dict(self._base_state)
        self.optimizer = OPTIMIZERS[s.optimizer](self.groups.all_parameters(), lr=s.learning_rate)
        self.sampler = PoissonBatches(self.task.train_size, s.sample_rate, seed=self.seed)
        self.updater = DPUpdater(
            self._module if self._module is not None else self.model,
            self.optimizer,
            self.groups,
            self.expected_batch_size,
            sample_rate=s.sample_rate,
            loss_fn=self.task.per_sample_loss,
            loss_bound=s.loss_bound,
            seed=self.seed + 1,
            secure_mode=s.secure_mode,
            oracle=s.oracle,
        )
        self._module = self.updater.module
        self.ledger = PrivacyLedger(s.delta, s.accountant)
        self.updates = 0

    @property
    def expected_batch_size(self) -> float:
        return self.settings.sample_rate * self.task.train_size

    @property
    def group_names(self) -> list[str]:
        return self.groups.names

    # ------------------------------------------------------------------ updates
    def run_updates(self, clip: np.ndarray, noise: np.ndarray, prune: np.ndarray, updates: int) -> list[StepReport]:
        """``updates`` DP updates with fixed per-group controls; each is recorded in the ledger."""
        s = self.settings
        reports = []
        for _ in range(updates):
            batch = self.task.train_batch(self.sampler.next())
            report = self.updater.step(batch, clip, noise, prune, count_noise=s.count_noise, loss_noise=s.loss_noise)
            self.ledger.record(report.noise_multiplier, report.sample_rate)
            self.updates += 1
            reports.append(report)
        return reports

    def evaluate(self) -> float:
        """Public validation loss (mean per token)."""
        return self.task.evaluate(self.model)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "sampler": self.sampler.state_dict(),
            "updater": self.updater.state_dict(),
            "ledger": self.ledger.to_dict(),
            "updates": self.updates,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.updater.load_state_dict(state["updater"])
        self.ledger = PrivacyLedger.from_dict(state["ledger"])
        self.updates = int(state["updates"])
