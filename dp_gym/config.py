"""Typed, validated environment configuration, loaded from YAML.

Every structural check (types, ranges, allowed modes) runs in ``EnvConfig.__post_init__``; the
names that live in registries (the task and its keyword arguments, the reward and its keyword
arguments, the token-pruning rule) are checked by :func:`dp_gym.envs.validate_config` when an
environment is built, still before any model or data is. Every error names the field, the value
and what is allowed. This module imports nothing of dp-gym above ``privacy``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dp_gym.privacy.ledger import ACCOUNTANTS
from dp_gym.utils.devices import PRECISIONS, check_device
from dp_gym.utils.redaction import RECORD_KEYS_SUFFIX, public_config  # noqa: F401  (part of this module's API)

CONTROLS = ("clip", "noise", "prune")
BUDGET_MODES = ("project", "terminate")
NOISE_SCALES = ("absolute", "paced")
NOISE_ALLOCATIONS = ("per_group", "shares")
PACE_UNITS = ("noise", "budget")
OBSERVATION_MODES = ("private", "oracle")
#: which iterate an episode returns (see ``EnvConfig.returned_model``)
RETURNED_MODELS = ("last", "best_public")
#: the optimizers a run can fine-tune with (``dp_gym.envs.fine_tuning.OPTIMIZERS`` maps them to torch)
OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
TOKEN_PRUNING_KEYS = ("keep_ratio", "rule")
#: a control is either in the action vector, fixed to a number, or (noise only) calibrated so
#: that equal per-group noise spends the budget exactly in ``max_updates``
CONTROL_MODES = ("control", "calibrated")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def parse_token_pruning(token_pruning: dict[str, Any] | None) -> tuple[str, float]:
    """``{"rule": ..., "keep_ratio": ...}`` -> ``(rule, keep_ratio)``; ``None`` keeps every token.

    Checks the shape only; whether the rule is registered is checked when the env is built.

    Raises:
        ConfigError: naming ``token_pruning.rule`` / ``token_pruning.keep_ratio`` / unknown keys.
    """
    if token_pruning is None:
        return "none", 1.0
    if not isinstance(token_pruning, dict):
        raise ConfigError(f"token_pruning must be a mapping {{rule, keep_ratio}}, got {token_pruning!r}")
    unknown = set(token_pruning) - set(TOKEN_PRUNING_KEYS)
    if unknown:
        raise ConfigError(f"token_pruning has unknown keys {sorted(unknown)}; allowed: {list(TOKEN_PRUNING_KEYS)}")
    rule = token_pruning.get("rule", "cls_attention")
    if not isinstance(rule, str) or not rule:
        raise ConfigError(f"token_pruning.rule must be a rule name, got {rule!r}")
    keep_ratio = token_pruning.get("keep_ratio", 1.0)
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not math.isfinite(keep_ratio) \
            or not (0 < keep_ratio <= 1):
        raise ConfigError(f"token_pruning.keep_ratio must be in (0, 1], got {keep_ratio!r}")
    if rule == "none" and keep_ratio != 1.0:
        raise ConfigError(f"token_pruning.keep_ratio must be 1 with rule 'none', got {keep_ratio!r}")
    return rule, float(keep_ratio)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def _range(name: str, value: Any, minimum: float = 0.0) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{name} must be a pair [low, high], got {value!r}")
    low, high = _number(f"{name}[0]", value[0]), _number(f"{name}[1]", value[1])
    if low <= minimum:
        raise ConfigError(f"{name}[0] must be > {minimum:g}, got {low:g}")
    if high < low:
        raise ConfigError(f"{name}[1] must be >= {name}[0], got {value!r}")
    return (low, high)


@dataclass
class EnvConfig:
    """Configuration of a :class:`dp_gym.envs.DPFineTuneEnv`.

    Args:
        task: a registered task name (``dp_gym.tasks.registered_tasks()``) or ``"module:Class"``.
        task_kwargs: keyword arguments of the task.
        grouping: parameter grouping (``per_block``, ``per_layer``, ``per_adapter``, ``global`` or regex patterns).
        epsilon: the budget's epsilon, > 0.
        delta: the budget's delta, in (0, 1).
        accountant: ``rdp`` or ``prv``.
        sample_rate: Poisson sampling rate q in (0, 1].
        max_updates: DP updates per episode.
        updates_per_step: K, DP updates per environment step.
        controls: per control (clip, noise, prune): ``"control"`` (in the action vector), a
            number (fixed for every group), or, for noise only, ``"calibrated"``.
        clip_range: [low, high] of C_g, mapped log-linearly from the action.
        noise_range: [low, high] of sigma_g, mapped log-linearly from the action (with
            ``noise_scale: paced``, the range of a factor on the paced noise; it must contain 1).
        noise_scale: ``absolute`` (the action sets sigma_g) or ``paced``: the action sets a factor
            ``f_g`` on the pace, the equal per-group noise that would spend the *remaining* budget
            exactly over the remaining updates, recomputed every step. ``f = 1`` (action 0 for a
            range symmetric in log scale) is plain DP-SGD; ``f < 1`` spends faster now and the pace
            rises later to pay for it. How much faster depends on the instance (see ``pace_unit``):
            where ``z`` is small for the sample rate, one step at ``f = 0.8`` can spend the whole
            budget (the projection then ends the episode).
        noise_allocation: ``per_group`` (one noise factor per group) or ``shares`` (paced noise only:
            one pace factor and per-group shares of the gradient noise, whose zero action is
            per-layer clipping with one noise; see :class:`dp_gym.envs.ActionCodec`).
        share_range: with ``shares``, a share entry of ``a`` multiplies its group's share by
            ``share_range ** a`` (> 1).
        pace_unit: with ``shares``, what the pace factor ``f`` scales. ``noise`` (the default):
            the pace's noise, ``sigma = f * pace``. ``budget``: the step's share of what is left
            of the budget; the step spends ``f^-2`` times the even share (the exact ratio where
            RDP is ``~1/z^2``), i.e. its noise is the pace for ``remaining * f^2`` updates, and
            the episode's last step spends everything left. The same action then costs the same
            fraction of the budget on every instance and at every epsilon. Under ``noise`` it
            does not: where ``z`` sits against the subsampled Gaussian's amplification regime
            decides the cost, and ``f = 0.8`` costs 1.7x to 5.5x the even share on the presets
            but 16x to 1900x on the public proxies (docs/BENCHMARKS.md, session 10).
        prune_max: the largest prune ratio, mapped linearly from the action, in [0, 1].
        budget_mode: ``project`` (raise the noise to fit the budget) or ``terminate``.
        reward: ``{"name": ..., "kwargs": {...}}``; see :func:`dp_gym.envs.register_reward`.
        observation: ``private`` (differentially private) or ``oracle`` (adds raw statistics;
            every result says ``privacy_valid: false``).
        optimizer, learning_rate: the fine-tuning optimizer.
        count_noise: sigma_b of the privatized unclipped counts (null: not released).
        loss_noise: sigma_l of the privatized training loss (null: not released).
        loss_bound: L, the clip of the per-sample loss in that release.
        secure_mode: draw the DP noise with Opacus' floating-point-attack-resistant sampler, every
            generator seeded from the OS CSPRNG (never reproducible; refused with a secret key).
        failure_reward: the reward of a step that ends the episode because a parameter or the
            validation loss became NaN or inf (finite; below what any real step earns).
        token_pruning: ``{"rule": ..., "keep_ratio": ...}`` for tasks with visual tokens (passed to
            the task); ``null`` for tasks without. Rules: ``dp_gym.models.token_pruning.registered_rules()``.
        returned_model: which iterate the episode returns (its model, its final ``val_loss`` and the
            terminal reward): ``last``, or ``best_public``: of the iterates after each step, the one
            with the lowest loss on the task's public *selection* split
            (``Task.evaluate_selection``, disjoint from the validation split that then reports it).
            Every iterate is already a DP release, and choosing among them by public data is
            post-processing (Dwork & Roth 2014, Prop. 2.1): the epsilon is that of the whole run,
            as with ``last``. It costs one more public evaluation per step.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; the model,
            the batches and the DP noise live there (the Poisson sampling stays on the CPU).
        precision: ``fp32``, or ``bf16``: the forward and backward passes run under bf16 autocast,
            while per-sample norms, clipping, the noisy sums and the noise stay in fp32.
    """

    task: str = "text"
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    grouping: Any = "per_block"
    epsilon: float = 3.0
    delta: float = 1e-5
    accountant: str = "rdp"
    sample_rate: float = 0.05
    max_updates: int = 200
    updates_per_step: int = 4
    controls: dict[str, Any] = field(default_factory=lambda: {c: "control" for c in CONTROLS})
    clip_range: tuple[float, float] = (0.05, 5.0)
    noise_range: tuple[float, float] = (1.0, 30.0)
    noise_scale: str = "absolute"
    noise_allocation: str = "per_group"
    share_range: float = 4.0
    pace_unit: str = "noise"
    prune_max: float = 0.9
    budget_mode: str = "project"
    reward: dict[str, Any] = field(default_factory=lambda: {"name": "utility", "kwargs": {}})
    observation: str = "private"
    optimizer: str = "adam"
    learning_rate: float = 5e-3
    count_noise: float | None = 10.0
    loss_noise: float | None = 10.0
    loss_bound: float = 8.0
    secure_mode: bool = False
    failure_reward: float = -10.0
    token_pruning: dict[str, Any] | None = None
    device: str = "auto"
    precision: str = "fp32"
    returned_model: str = "last"

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"task must be a string (a registered name or 'module:Class'), got {self.task!r}")
        if not isinstance(self.task_kwargs, dict):
            raise ConfigError(f"task_kwargs must be a mapping, got {self.task_kwargs!r}")
        self.epsilon = _number("epsilon", self.epsilon)
        if self.epsilon <= 0:
            raise ConfigError(f"epsilon must be > 0, got {self.epsilon:g}")
        self.delta = _number("delta", self.delta)
        if not (0 < self.delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {self.delta:g}")
        _choice("accountant", self.accountant, ACCOUNTANTS)
        self.sample_rate = _number("sample_rate", self.sample_rate)
        if not (0 < self.sample_rate <= 1):
            raise ConfigError(f"sample_rate must be in (0, 1], got {self.sample_rate:g}")
        _integer("max_updates", self.max_updates, 1)
        _integer("updates_per_step", self.updates_per_step, 1)
        if self.updates_per_step > self.max_updates:
            raise ConfigError(f"updates_per_step ({self.updates_per_step}) must be <= max_updates ({self.max_updates})")
        self._check_controls()
        self.clip_range = _range("clip_range", self.clip_range)
        self.noise_range = _range("noise_range", self.noise_range)
        _choice("noise_scale", self.noise_scale, NOISE_SCALES)
        if self.noise_scale == "paced":
            if self.controls["noise"] != "control":
                raise ConfigError(f"noise_scale 'paced' needs controls.noise 'control', got {self.controls['noise']!r}")
            if not (self.noise_range[0] <= 1.0 <= self.noise_range[1]):
                raise ConfigError(f"noise_range must contain 1 with noise_scale 'paced' (it is a factor on the "
                                  f"paced noise), got {list(self.noise_range)}")
        _choice("noise_allocation", self.noise_allocation, NOISE_ALLOCATIONS)
        if self.noise_allocation == "shares" and (self.noise_scale != "paced" or self.controls["noise"] != "control"):
            raise ConfigError("noise_allocation 'shares' needs noise_scale 'paced' and controls.noise 'control'")
        _choice("pace_unit", self.pace_unit, PACE_UNITS)
        if self.pace_unit == "budget" and self.noise_allocation != "shares":
            raise ConfigError("pace_unit 'budget' needs noise_allocation 'shares' (one pace factor for every group), "
                              f"got {self.noise_allocation!r}")
        self.share_range = _number("share_range", self.share_range)
        if self.share_range <= 1:
            raise ConfigError(f"share_range must be > 1, got {self.share_range:g}")
        self.prune_max = _number("prune_max", self.prune_max)
        if not (0 <= self.prune_max <= 1):
            raise ConfigError(f"prune_max must be in [0, 1], got {self.prune_max:g}")
        _choice("budget_mode", self.budget_mode, BUDGET_MODES)
        if not isinstance(self.reward, dict) or "name" not in self.reward:
            raise ConfigError(f"reward must be a mapping with a 'name', got {self.reward!r}")
        unknown = set(self.reward) - {"name", "kwargs"}
        if unknown:
            raise ConfigError(f"reward has unknown keys {sorted(unknown)}; allowed: ['kwargs', 'name']")
        if not isinstance(self.reward["name"], str) or not self.reward["name"]:
            raise ConfigError(f"reward.name must be a string (a registered name or 'module:function'), "
                              f"got {self.reward['name']!r}")
        if not isinstance(self.reward.get("kwargs", {}), dict):
            raise ConfigError(f"reward.kwargs must be a mapping, got {self.reward['kwargs']!r}")
        _choice("observation", self.observation, OBSERVATION_MODES)
        _choice("optimizer", self.optimizer, OPTIMIZER_NAMES)
        self.learning_rate = _number("learning_rate", self.learning_rate)
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate:g}")
        for name in ("count_noise", "loss_noise"):
            value = getattr(self, name)
            if value is not None and _number(name, value) <= 0:
                raise ConfigError(f"{name} must be > 0 or null, got {value!r}")
        self.loss_bound = _number("loss_bound", self.loss_bound)
        if self.loss_bound <= 0:
            raise ConfigError(f"loss_bound must be > 0, got {self.loss_bound:g}")
        if not isinstance(self.secure_mode, bool):
            raise ConfigError(f"secure_mode must be true or false, got {self.secure_mode!r}")
        self.failure_reward = _number("failure_reward", self.failure_reward)
        if self.accountant == "prv" and self.adaptive_noise:
            raise ConfigError("accountant 'prv' with controls.noise 'control': the controller picks the noise from "
                              "earlier releases, and no privacy filter is known for PRV under fully adaptive "
                              "composition; use accountant 'rdp' (a Renyi filter), or fix the noise "
                              "(controls.noise: calibrated or a number)")
        self._check_token_pruning()
        try:
            check_device(self.device)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        _choice("precision", self.precision, PRECISIONS)
        _choice("returned_model", self.returned_model, RETURNED_MODELS)

    def _check_token_pruning(self) -> None:
        if self.token_pruning is None:
            return
        if "token_pruning" in self.task_kwargs:
            raise ConfigError("token_pruning is set both at the top level and in task_kwargs; keep one")
        rule, keep_ratio = parse_token_pruning(self.token_pruning)
        self.token_pruning = {"rule": rule, "keep_ratio": keep_ratio}

    def task_arguments(self) -> dict[str, Any]:
        """Keyword arguments of the task: ``task_kwargs`` plus ``token_pruning`` when set."""
        extra = {"token_pruning": self.token_pruning} if self.token_pruning is not None else {}
        return {**self.task_kwargs, **extra}

    def _check_controls(self) -> None:
        if not isinstance(self.controls, dict):
            raise ConfigError(f"controls must be a mapping of {list(CONTROLS)}, got {self.controls!r}")
        unknown = set(self.controls) - set(CONTROLS)
        if unknown:
            raise ConfigError(f"controls has unknown keys {sorted(unknown)}; allowed: {list(CONTROLS)}")
        controls = {c: self.controls.get(c, "control") for c in CONTROLS}
        for name, value in controls.items():
            if isinstance(value, str):
                allowed = CONTROL_MODES if name == "noise" else ("control",)
                _choice(f"controls.{name}", value, allowed)
                continue
            number = _number(f"controls.{name}", value)
            if name in ("clip", "noise") and number <= 0:
                raise ConfigError(f"controls.{name} must be > 0 when fixed, got {number:g}")
            if name == "prune" and not (0 <= number < 1):
                raise ConfigError(f"controls.prune must be in [0, 1) when fixed, got {number:g}")
            controls[name] = number
        self.controls = controls

    @property
    def controlled(self) -> list[str]:
        """The controls that are in the action vector, in layout order."""
        return [c for c in CONTROLS if self.controls[c] == "control"]

    @property
    def adaptive_noise(self) -> bool:
        """Whether the controller chooses the noise (from earlier releases): then the budget is
        enforced by a Renyi filter (see :class:`dp_gym.privacy.PrivacyBudget`)."""
        return self.controls["noise"] == "control"

    @property
    def privacy_valid(self) -> bool:
        return self.observation == "private"

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` fit for a results file: every record list in ``task_kwargs`` is replaced
        by its count (see :func:`public_config`)."""
        return public_config(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["clip_range"] = list(self.clip_range)
        data["noise_range"] = list(self.noise_range)
        return data

    @classmethod
    def with_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` (a config as :meth:`to_dict` or :meth:`public_dict` wrote it) with every field it
        lacks at its default: a config written before a field existed ran as its default."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        return {**{name: value for name, value in defaults.items() if name not in data}, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> EnvConfig:
        """Build from a mapping; unknown keys are rejected by name."""
        if not isinstance(data, dict):
            raise ConfigError(f"an environment config must be a mapping, got {type(data).__name__}")
        merged = {**data, **overrides}
        if "seed" in merged:
            raise ConfigError("seed is no longer a config field: pass the public seed to env.reset(seed=...); the DP "
                              "noise and sampling use secret randomness (secret_key / $DP_GYM_SECRET_KEY to reproduce)")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> EnvConfig:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        data.pop("id", None)
        data.pop("description", None)
        return cls.from_dict(data, **overrides)


