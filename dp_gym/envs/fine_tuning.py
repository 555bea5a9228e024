"""One DP fine-tuning run: task + model + optimizer + DP updater + Poisson sampler + privacy budget.

The Gymnasium environment is a thin RL interface over this object; scripts that want a fixed
schedule use it directly. Its secret randomness (the noise and the batches) comes from
:class:`dp_gym.engine.randomness.EpisodeRandomness`: fresh OS entropy per episode, or a user's
secret key; never the public seed alone.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from typing import Any

import numpy as np
import torch

from dp_gym.config import OPTIMIZER_NAMES, EnvConfig
from dp_gym.engine import DPUpdater, ParameterGroups, PoissonBatches, StepReport
from dp_gym.engine.randomness import EpisodeRandomness, SecretKey, resolve_secret_key
from dp_gym.privacy import PrivacyBudget, ReleasedStatistics
from dp_gym.tasks import Task
from dp_gym.utils.devices import resolve_device

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
assert set(OPTIMIZERS) == set(OPTIMIZER_NAMES), "the config's optimizer names and the torch classes must agree"


#: config fields that only choose which of a run's releases it returns, never what the run does
#: (its batches, noise and updates): two runs that differ only there are one run, and every
#: iterate is a release its epsilon already covers, so they share the secret. (This also keeps
#: keyed runs written before a field existed reproducible.)
RELEASE_CHOICE_FIELDS = ("returned_model",)


def config_digest(config: EnvConfig) -> str:
    """SHA-256 of the configuration (records included) but :data:`RELEASE_CHOICE_FIELDS`: the
    context of a keyed episode's secret. Only ever an input of the secret's HMAC; never written
    anywhere."""
    run = {key: value for key, value in config.to_dict().items() if key not in RELEASE_CHOICE_FIELDS}
    return hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()


class RunFailure(RuntimeError):
    """The run reached a non-finite state; ``reports`` holds the updates that ran (all accounted)."""

    def __init__(self, message: str, reports: list[StepReport]):
        super().__init__(message)
        self.reports = reports


class FineTuningRun:
    """A private fine-tuning run whose every update is chosen from outside.

    Args:
        task: the task (model, data, losses).
        config: the environment configuration (optimizer, grouping, budget, statistics).
        secret_key: the key that makes the secret randomness reproducible (default:
            ``$DP_GYM_SECRET_KEY``, else none: fresh OS entropy every episode).

    Raises:
        ValueError: for ``secure_mode`` together with a secret key.
    """

    def __init__(self, task: Task, config: EnvConfig, secret_key: SecretKey | bytes | str | None = None):
        self.task = task
        self.config = config
        self.secret_key = resolve_secret_key(secret_key)
        EpisodeRandomness(self.secret_key, 0, secure_mode=config.secure_mode)  # refuses key + secure_mode early
        self.device = resolve_device(config.device)
        # on its device before the engine wraps it: Opacus' hooks keep references to the parameters
        self.model = task.build_model().to(self.device)
        self.groups = ParameterGroups(self.model, config.grouping)
        n_counted = len(self.groups) if config.count_noise is not None else 0
        self.statistics = ReleasedStatistics(config.count_noise, n_counted, config.loss_noise)
        self._base_state = copy.deepcopy(self.model.state_dict())
        self._module = None  # the GradSampleModule wrapping self.model, made once (hooks!)
        self.base_val_loss = task.evaluate(self.model)
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def new_budget(self) -> PrivacyBudget:
        """A fresh budget of this run's configuration (nothing spent)."""
        c = self.config
        return PrivacyBudget(c.epsilon, c.delta, c.sample_rate, c.max_updates, len(self.groups), self.statistics,
                             accountant=c.accountant, adaptive=c.adaptive_noise)

    def reset(self, seed: int | None = None, stream: str = "", config: EnvConfig | None = None) -> None:
        """Back to the base weights, a fresh optimizer, budget and secret randomness.

        Args:
            seed: the episode's public seed; with a secret key it makes the noise reproducible.
            stream: tells apart episodes that share key and seed (see ``EpisodeRandomness``).
            config: this episode's configuration, when it differs from the run's in budget-level
                fields only (epsilon, sample rate, max updates: an instance of a distribution).
        """
        if config is not None:
            self.config = config
        c = self.config
        self.sampler = PoissonBatches(self.task.train_size, c.sample_rate)
        self.public_seed, self.stream = seed, stream
        self.model.load_state_dict(self._base_state)
        self.optimizer = OPTIMIZERS[c.optimizer](self.groups.all_parameters(), lr=c.learning_rate)
        self.updater = DPUpdater(
            self._module if self._module is not None else self.model, self.optimizer, self.groups,
            self.expected_batch_size, sample_rate=c.sample_rate, loss_fn=self.task.per_sample_loss,
            loss_bound=c.loss_bound, secure_mode=c.secure_mode, oracle=c.observation == "oracle",
            autocast=c.precision == "bf16")
        self._module = self.updater.module
        self.budget = self.new_budget()
        self.randomness = EpisodeRandomness(self.secret_key, seed, stream, secure_mode=c.secure_mode, device=self.device,
                                            context=config_digest(c) if self.secret_key is not None else "")
        self.updates = 0

    def share_randomness(self, randomness: EpisodeRandomness) -> None:
        """Use another episode's secret randomness for this one: the same Poisson batch and the same
        standard-normal noise draws at every update index (common random numbers). Only for public
        proxy episodes (``ProxyEnv``'s paired reward): on private data two episodes that share
        noise release their difference without it.

        Raises:
            ValueError: when the run trains on private data.
        """
        if not self.task.public_training_data:
            raise ValueError("share_randomness: this run trains on private data; only public proxy episodes may "
                             "share their noise")
        self.randomness = randomness

    @property
    def expected_batch_size(self) -> float:
        return self.config.sample_rate * self.task.train_size

    @property
    def group_names(self) -> list[str]:
        return self.groups.names

    @property
    def ledger(self):
        """The budget's ledger (the accountant's history)."""
        return self.budget.ledger

    # ------------------------------------------------------------------ updates
    def run_updates(self, clip: np.ndarray, sigmas: np.ndarray, prune: np.ndarray, updates: int) -> list[StepReport]:
        """``updates`` DP updates with fixed per-group controls; each is recorded in the budget.

        Raises:
            ValueError: if the budget cannot pay for them (fit the noise with ``budget.fit`` first).
            RunFailure: when a parameter becomes NaN or inf (the updates so far are recorded).
        """
        z = self.budget.composed_noise_multiplier(sigmas)
        if not self.budget.fits(z, updates):
            raise ValueError(f"{updates} update(s) at noise multiplier {z:.4g} do not fit the budget; "
                             "use budget.fit() to choose the noise")
        reports: list[StepReport] = []
        for _ in range(updates):
            batch = self.task.train_batch(self.sampler.sample(self.randomness.generator("sampling", self.updates)))
            batch = {key: value.to(self.device) for key, value in batch.items()}
            generator = self.randomness.generator("noise", self.updates)
            self.budget.record(z)  # before the update: an update that fails halfway is still accounted
            self.updates += 1
            with self._model_randomness():
                report = self.updater.step(batch, clip, sigmas, prune, statistics=self.statistics, generator=generator)
            if reports:  # only the last update is read (update cosine): do not hold K model-sized copies
                reports[-1].noisy_update = {}
            reports.append(report)
            self.check_finite(reports)
        return reports

    @contextlib.contextmanager
    def _model_randomness(self):
        """The training forward pass's own randomness (dropout) from the episode's ``model`` stream,
        inside a fork of torch's global RNG (restored afterwards)."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        seed = self.randomness.seed("model", self.updates)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def check_finite(self, reports: list[StepReport] | None = None) -> None:
        """Raise :class:`RunFailure` when any trained parameter holds a NaN or an inf."""
        bad = self.groups.nonfinite_parameters()
        if bad:
            raise RunFailure(f"non-finite parameter(s) after {self.updates} update(s): {', '.join(bad[:3])}"
                             + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""), reports or [])

    def evaluate(self) -> float:
        """Public validation loss (mean per token)."""
        return self.task.evaluate(self.model)

    def evaluate_selection(self) -> float:
        """Loss on the task's public selection split (``Task.evaluate_selection``)."""
        return self.task.evaluate_selection(self.model)

    def trained_parameters(self) -> list[torch.Tensor]:
        """Copies of the trained parameters (in the parameter groups' order) in CPU memory: the
        iterate, without the frozen weights (a LoRA run copies its adapters only)."""
        return [parameter.detach().to("cpu", copy=True) for parameter in self.groups.all_parameters()]

    @torch.no_grad()
    def load_trained_parameters(self, tensors: list[torch.Tensor]) -> None:
        """Put an iterate of :meth:`trained_parameters` back into the model (the optimizer's state
        is left as it is: a run returns the iterate, it does not continue from it)."""
        for parameter, tensor in zip(self.groups.all_parameters(), tensors, strict=True):
            parameter.copy_(tensor)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, budget and counters. It holds trained weights (a private artefact:
        keep it as you keep the data) and never the secret randomness."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "updater": self.updater.state_dict(),
            "budget": self.budget.state_dict(),
            "updates": self.updates,
            "public_seed": self.public_seed,
            "stream": self.stream,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a run; the budget refuses a ledger that does not account every update.

        Without a secret key the rest of the episode draws fresh secret randomness.
        """
        updates = int(state["updates"])
        if not 0 <= updates <= self.config.max_updates:
            raise ValueError(f"checkpoint field updates is {updates}, outside [0, {self.config.max_updates}]")
        self.reset(state["public_seed"], state["stream"])
        self.budget.load_state_dict(state["budget"], updates)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updater.load_state_dict(state["updater"])
        self.updates = updates
