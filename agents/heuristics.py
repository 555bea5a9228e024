"""Hand-made controllers with SB3's ``predict`` interface, and their name registry.

Each heuristic is built for one environment (it reads ``observation_layout`` and encodes through
the env's action codec), so it works whatever controls the env leaves in the action vector.
Observations are read by *name*, never by index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dp_gym.envs import DPFineTuneEnv
from dp_gym.utils.registry import Registry


class Controller:
    """Base class: ``predict(obs, state, episode_start, deterministic) -> (action, state)``.

    ``obs`` may be one observation or a batch (vectorized envs); the action has the same leading
    shape. Subclasses implement ``act(observation, env_index) -> action`` for one observation.
    """

    name = "controller"

    def __init__(self, env: DPFineTuneEnv):
        self.env = env
        self.layout = {name: index for index, name in enumerate(env.observation_layout)}
        self.groups = env.group_names
        self.config = env.config

    def feature(self, observation: np.ndarray, name: str) -> float:
        return float(observation[self.layout[name]])

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        observation = np.asarray(observation, dtype=np.float64)
        if observation.ndim == 1:
            return self.act(observation, 0), state
        return np.stack([self.act(row, index) for index, row in enumerate(observation)]), state

    def act(self, observation: np.ndarray, env_index: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"controller": self.name}

    # helpers shared by the heuristics
    @property
    def sigmas(self) -> np.ndarray:
        """Equal per-group noise that spends the current episode's budget in ``max_updates`` (the env's
        calibration, read at every step: an episode of a proxy distribution has its own budget)."""
        return self.env.calibrated_group_noise()

    def encode(self, clip, noise, prune) -> np.ndarray:
        return self.env.encode_action(clip=clip, noise=noise, prune=prune)


class VanillaController(Controller):
    """Plain DP-SGD: one clip ``C`` for every group, the noise that spends the budget exactly in
    ``max_updates`` (equal per group, statistics included), no pruning."""

    name = "vanilla"

    def __init__(self, env: DPFineTuneEnv, clip: float = 0.5):
        super().__init__(env)
        self.clip = float(clip)
        self.prune = 0.0

    def act(self, observation, env_index):
        return self.encode(self.clip, self.sigmas, self.prune)

    def describe(self):
        return {"controller": self.name, "clip": self.clip, "sigma_g": float(self.sigmas[0])}


class DualPrivController(VanillaController):
    """Vanilla DP-SGD plus Dual-Priv's static update pruning: drop the fraction ``prune`` of each
    group's noisy update with the smallest magnitude (post-processing: costs no privacy)."""

    name = "dual_priv"

    def __init__(self, env: DPFineTuneEnv, clip: float = 0.5, prune: float = 0.5):
        super().__init__(env, clip)
        self.prune = float(prune)

    def describe(self):
        return {**super().describe(), "prune": self.prune}


class AdaptiveQuantileController(Controller):
    r"""Adaptive clipping (Andrew et al., 2021), per group.

    After each step, with ``b_g`` the privatized fraction of unclipped examples (released by the
    env and accounted there), move each threshold geometrically toward the ``gamma`` quantile of
    the per-example norms:

    .. math:: C_g \leftarrow C_g \exp(-\eta (b_g - \gamma))

    Noise is the vanilla calibration; nothing is pruned.
    """

    name = "adaptive_quantile"

    def __init__(self, env: DPFineTuneEnv, initial_clip: float = 0.5, target_quantile: float = 0.5,
                 learning_rate: float = 0.3):
        super().__init__(env)
        if env.config.count_noise is None:
            raise ValueError("adaptive_quantile needs the privatized unclipped fractions: set count_noise")
        self.initial_clip, self.gamma, self.eta = float(initial_clip), float(target_quantile), float(learning_rate)
        self.clips: dict[int, np.ndarray] = {}

    def act(self, observation, env_index):
        low, high = self.config.clip_range
        if self.feature(observation, "updates_fraction") == 0.0 or env_index not in self.clips:
            self.clips[env_index] = np.full(len(self.groups), self.initial_clip)
        else:
            fractions = np.array([self.feature(observation, f"unclipped_fraction/{g}") for g in self.groups])
            self.clips[env_index] = np.clip(self.clips[env_index] * np.exp(-self.eta * (fractions - self.gamma)),
                                            low, high)
        return self.encode(self.clips[env_index], self.sigmas, 0.0)

    def describe(self):
        return {"controller": self.name, "initial_clip": self.initial_clip, "target_quantile": self.gamma,
                "learning_rate": self.eta}


class ScheduleController(Controller):
    r"""A piecewise-linear schedule over the episode's progress ``t`` (``updates_fraction``): with
    knots at ``t_k = k / (K - 1)``, the clip is ``C * c(t)`` and the noise ``sigma_vanilla * n(t)``,
    where ``c`` and ``n`` interpolate ``clip_knots`` and ``noise_knots`` linearly and
    ``sigma_vanilla`` is plain DP-SGD's noise for the whole episode (fixed at reset). All knots at 1
    is plain DP-SGD. The requested noise is absolute: a schedule that spends early (``n < 1``) and
    would overspend later is held to the budget by the env's projection (it raises the noise), and
    an env's action range clips what it cannot express (on a paced env, the factor against the
    current pace). The search space of the Optuna baseline (:func:`agents.tuning.tune_schedule`)."""

    name = "schedule"

    def __init__(self, env: DPFineTuneEnv, clip: float = 0.5, clip_knots=(1.0, 1.0), noise_knots=(1.0, 1.0)):
        super().__init__(env)
        self.clip = float(clip)
        self.clip_knots = self._knots(clip_knots, "clip_knots")
        self.noise_knots = self._knots(noise_knots, "noise_knots")

    @staticmethod
    def _knots(values, field: str) -> np.ndarray:
        knots = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if knots.ndim != 1 or knots.size == 0 or not np.all(np.isfinite(knots)) or np.any(knots <= 0):
            raise ValueError(f"{field} must be finite factors > 0, got {values!r}")
        return knots

    @staticmethod
    def _at(knots: np.ndarray, progress: float) -> float:
        if len(knots) == 1:
            return float(knots[0])
        return float(np.interp(progress, np.linspace(0.0, 1.0, len(knots)), knots))

    def act(self, observation, env_index):
        progress = float(np.clip(self.feature(observation, "updates_fraction"), 0.0, 1.0))
        clip = self.clip * self._at(self.clip_knots, progress)
        noise = self.sigmas * self._at(self.noise_knots, progress)
        return self.encode(clip, noise, 0.0)

    def describe(self):
        return {"controller": self.name, "clip": self.clip, "clip_knots": self.clip_knots.tolist(),
                "noise_knots": self.noise_knots.tolist()}


class DecayController(ScheduleController):
    """"Dynamic DP-SGD": clip and noise decay linearly from ``start`` to ``end`` times their
    vanilla values over the episode (the two-knot :class:`ScheduleController`)."""

    name = "decay"

    def __init__(self, env: DPFineTuneEnv, clip: float = 0.5, clip_start: float = 1.5, clip_end: float = 0.5,
                 noise_start: float = 1.3, noise_end: float = 0.8):
        super().__init__(env, clip, (clip_start, clip_end), (noise_start, noise_end))


class ActionZeroController(Controller):
    """The env's action 0 at every step: on the recommended ids (pace and share layouts), DP-SGD
    with the proxy-tuned clip, evenly paced noise and Opacus' per-layer noise allocation; the policy
    a controller trained with ``actor_init="zero"`` starts from, and the reference of a paired reward."""

    name = "action0"

    def act(self, observation, env_index):
        return np.zeros(self.env.action_space.shape, dtype=np.float32)


class RandomController(Controller):
    """Uniformly random actions (seeded)."""

    name = "random"

    def __init__(self, env: DPFineTuneEnv, seed: int = 0):
        super().__init__(env)
        self.rng = np.random.default_rng(seed)

    def act(self, observation, env_index):
        return self.rng.uniform(-1.0, 1.0, self.env.action_space.shape).astype(np.float32)


ControllerFactory = Callable[..., Controller]
CONTROLLERS: Registry[ControllerFactory] = Registry("controller", callable_only=True)


def register_controller(name: str, factory: ControllerFactory, force: bool = False) -> None:
    """Register a heuristic controller factory ``factory(env, **kwargs)`` under ``name``."""
    CONTROLLERS.register(name, factory, force=force)


def registered_controllers() -> list[str]:
    return CONTROLLERS.names()


def make_controller(name: str, env, **kwargs: Any) -> Controller:
    """A heuristic by name (or ``"module:Factory"``) for ``env`` (a ``DPFineTuneEnv`` or a wrapper of one)."""
    return CONTROLLERS.get(name)(getattr(env, "unwrapped", env), **kwargs)


for _cls in (VanillaController, DualPrivController, AdaptiveQuantileController, ScheduleController, DecayController,
             ActionZeroController, RandomController):
    register_controller(_cls.name, _cls)
