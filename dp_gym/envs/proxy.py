r"""Public proxy instances: train controllers (and tune baselines) without touching private data.

A controller trained over many episodes on the private data carries every one of those episodes'
privacy cost. :class:`ProxyEnv` is the same environment (the same model family, the same action and
observation layouts) on a **public proxy** of its task (``Task.proxy``: public training data that
differs from the private data), and every episode draws an **instance** from an
:class:`InstanceDistribution`: the public corpus, the budget's epsilon (log-uniform), the sampling
rate, the training-set size and the public seed. One policy must serve every budget, so the
observation carries everything budget-relative (epsilon spent / budget, updates done / max, the
budget's epsilon and expected batch size).

**The noise-to-signal regime decides the step size, so the proxies must cover the deployment's.**
Under DP-SGD the averaged noisy gradient is ``(1/qN) (sum_i clip(g_i) + N(0, z^2 C^2 I))``: the
noise that reaches the update, relative to a clipped gradient, is the *noise-to-signal ratio*

.. math:: \rho = z(\varepsilon, \delta, q, T) / (qN).

The calibrated ``z`` grows with ``q`` more slowly than ``q`` (at epsilon 3 and 200 updates: 0.74
at ``q = 0.01``, 1.37 at 0.05), so at a fixed expected batch a larger public set at a smaller
sampling rate has the smaller ``rho``: proxies reach a deployment's ``rho`` at a fraction of its
batch (its compute). The defaults (``N`` in {512, 1024}, ``q`` in {0.01, 0.02}, epsilon 1 to 8)
give ``rho`` from about 0.03 to 0.22 with expected batches of 5 to 20; the presets' deployment
(``N = 512``, ``q = 0.05``: batch 25.6) has ``rho`` 0.12, 0.054 and 0.033 at epsilon 1, 3 and 8.
The earlier defaults (``N`` in {128, 256}, ``q`` in {0.02, 0.05}) gave 0.065 to 0.58, at every
epsilon at least twice the deployment's ``rho`` at that epsilon, so proxy-tuned step sizes came
out too small (docs/BENCHMARKS.md, sessions 6 and 9; the other cause was a proxy corpus the model
was pre-trained on, see ``TextTask.proxy_corpora``).
:func:`noise_to_signal` computes ``rho``.

Its episodes spend no private data's privacy: each one's report says so (``private_episodes: 0``).

**Paired reward** (``paired: true``). Instances differ far more than controllers do: under the
same action the final perplexity of two instances can differ twentyfold, so a critic trained on
the raw reward mostly learns which instance it is on. With ``paired`` every episode first runs a
*reference twin*: the env's action 0 (on the recommended ids, proxy-tuned DP-SGD) on the same
instance, with the same secret randomness (the same Poisson batch and standard-normal noise draws
at every update: common random numbers). The reward of step ``t`` is then

.. math:: r'_t = r_t - r^0_t \quad (t < T), \qquad r'_T = r_T - \sum_{s \ge T} r^0_s,

so the return is ``R(policy) - R(action 0)`` on that instance. The subtracted terms do not depend
on the policy's actions, so the expected return of every policy moves by the same constant and the
best policy is unchanged; only the variance shrinks. The twin runs on public data and its rewards
are public numbers: it costs no privacy, only a second episode's compute.
"""

from __future__ import annotations

import inspect
import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from dp_gym.config import ConfigError, EnvConfig
from dp_gym.envs.dp_finetune_env import DPFineTuneEnv
from dp_gym.envs.validation import validate_config
from dp_gym.models.spec import ModelSpec
from dp_gym.privacy.calibration import calibrate_noise
from dp_gym.tasks import resolve_task


@dataclass(frozen=True)
class InstanceDistribution:
    """What an episode of a proxy may be.

    Attributes:
        corpora: public corpora to draw from (for text ``dp_gym.data.proxy_corpora`` or ``"user"``;
            for vision ``patterns`` or ``digits``); None: the task's own (``Task.proxy_corpora``).
        epsilon: ``(low, high)``; drawn log-uniformly.
        sample_rates: Poisson rates to draw from.
        train_sizes: proxy training-set sizes to draw from.
        max_updates: episode lengths to draw from (empty: the deployment config's).
        n_val: public validation records of each proxy.
        seeds: public seeds of the proxy data to draw from (which records of a corpus).
        max_length: tokens per proxy record (None: the deployment task's); shorter is cheaper.
        paired: reward each episode relative to its action-0 twin (see the module docstring); about
            doubles an episode's cost.
        tiny_shapes: shapes of the built-in tiny model to draw from for the proxies (the task's
            ``tiny`` fields: ``TinyLMConfig`` for text, ``TinyVLMConfig`` for vision; for example
            ``[{"n_embd": 48}]``, half the width: cheaper episodes); empty: the deployment's model.
            A shape must keep the parameter groups (the layouts are checked). Only for tasks on the
            built-in tiny model.

    Raises:
        ConfigError: naming the field, for an empty choice or a bad range.
    """

    corpora: tuple[str, ...] | None = None
    epsilon: tuple[float, float] = (1.0, 8.0)
    sample_rates: tuple[float, ...] = (0.01, 0.02)
    train_sizes: tuple[int, ...] = (512, 1024)
    max_updates: tuple[int, ...] = ()
    n_val: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    max_length: int | None = 48
    paired: bool = False
    tiny_shapes: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name in ("corpora", "sample_rates", "train_sizes", "seeds"):
            if not getattr(self, name) and not (name == "corpora" and self.corpora is None):
                raise ConfigError(f"proxy.{name} must not be empty")
        low, high = self.epsilon
        if not (0 < low <= high and math.isfinite(high)):
            raise ConfigError(f"proxy.epsilon must be (low, high) with 0 < low <= high, got {self.epsilon}")
        if any(not (0 < q <= 1) for q in self.sample_rates):
            raise ConfigError(f"proxy.sample_rates must be in (0, 1], got {self.sample_rates}")
        if any(n < 2 for n in self.train_sizes) or self.n_val < 1:
            raise ConfigError(f"proxy.train_sizes must be >= 2 and proxy.n_val >= 1, got {self.train_sizes}, {self.n_val}")
        if not isinstance(self.paired, bool):
            raise ConfigError(f"proxy.paired must be true or false, got {self.paired!r}")
        if any(not isinstance(shape, dict) or not shape for shape in self.tiny_shapes):
            raise ConfigError(f"proxy.tiny_shapes must be non-empty mappings of tiny-model fields, got {self.tiny_shapes}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InstanceDistribution:
        data = dict(data or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"proxy has unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def sample(self, rng: np.random.Generator, config: EnvConfig, corpora: tuple[str, ...] = ()) -> dict[str, Any]:
        """One instance: ``{"corpus", "n_train", "seed", "epsilon", "sample_rate", "max_updates"}``;
        ``corpora``: the task's own, used when the distribution names none.

        Raises:
            ConfigError: when neither names a corpus.
        """
        corpora = self.corpora or corpora
        if not corpora:
            raise ConfigError(f"proxy.corpora: task {config.task!r} names no public corpora of its own; give them")
        low, high = self.epsilon
        instance = {
            "corpus": str(rng.choice(corpora)),
            "n_train": int(rng.choice(self.train_sizes)),
            "seed": int(rng.choice(self.seeds)),
            "epsilon": float(math.exp(rng.uniform(math.log(low), math.log(high)))),
            "sample_rate": float(rng.choice(self.sample_rates)),
            "max_updates": int(rng.choice(self.max_updates)) if self.max_updates else config.max_updates,
        }
        if self.tiny_shapes:  # (drawn last: without shapes, the instances are those of earlier versions)
            instance["tiny"] = dict(self.tiny_shapes[int(rng.integers(len(self.tiny_shapes)))])
        return instance

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def noise_to_signal(epsilon: float, delta: float, sample_rate: float, n_train: int, updates: int,
                    accountant: str = "rdp") -> float:
    r"""The noise-to-signal ratio of plain DP-SGD on a budget: ``rho = z / (q N)``.

    ``z`` is the noise multiplier that spends ``epsilon`` in ``updates`` Poisson-sampled updates
    (:func:`dp_gym.privacy.calibration.calibrate_noise`); ``q N`` is the expected batch. The
    averaged update carries noise of std ``rho C`` per coordinate against clipped gradients of
    norm at most ``C``, so two instances with the same ``rho`` want about the same step size.
    Public bookkeeping only (no data is read).
    """
    z = calibrate_noise(float(epsilon), float(delta), float(sample_rate), int(updates), accountant)
    return z / (sample_rate * n_train)


@dataclass
class ReferenceEpisode:
    """The action-0 twin of a paired proxy episode: its per-step rewards and final public
    validation loss and metric (public numbers: the twin ran on a public proxy)."""

    rewards: list[float]
    val_loss: float
    val_metric: float
    steps_taken: int = 0  # steps of the paired episode so far

    def subtract(self, done: bool) -> float:
        """What the paired episode's next step subtracts: the twin's reward at that step, and at the
        paired episode's last step every twin reward after it (so the return is the difference)."""
        index = self.steps_taken
        self.steps_taken += 1
        if done:
            return float(sum(self.rewards[index:]))
        return float(self.rewards[index]) if index < len(self.rewards) else 0.0


class ProxyEnv(gym.Env):
    """The environment of ``config`` on public proxy instances (see the module docstring).

    Args:
        config: the deployment environment's config (its task must implement ``Task.proxy``).
        distribution: the instance distribution.
        secret_key: as for :class:`DPFineTuneEnv` (makes proxy episodes reproducible).
        cache: proxies kept built at once (one per corpus, size and seed).
        noise_stream: the default noise stream of its episodes (see :class:`DPFineTuneEnv`).
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig, distribution: InstanceDistribution | None = None, secret_key=None,
                 cache: int = 6, noise_stream: str = ""):
        self.config = validate_config(config)
        self.distribution = distribution or InstanceDistribution()
        self.task_class = resolve_task(config.task)
        self.corpora = self.task_class.proxy_corpora(config.task_arguments())
        if config.returned_model == "best_public" and "n_select" not in inspect.signature(self.task_class.proxy).parameters:
            raise ConfigError(f"returned_model 'best_public' needs a public selection split, and the proxies of task "
                              f"{self.task_class.__name__} have none (its Task.proxy takes no n_select)")
        if self.distribution.tiny_shapes and not ModelSpec.parse(config.task_arguments().get("model", "tiny")).is_tiny:
            raise ConfigError("proxy.tiny_shapes: the task's model is not the built-in tiny one "
                              "(task_kwargs.model: tiny), so it has no shape to draw")
        self.secret_key, self.noise_stream = secret_key, noise_stream
        self.reference: ReferenceEpisode | None = None
        self._cache: OrderedDict[tuple, DPFineTuneEnv] = OrderedDict()
        self._cache_size = max(1, cache)
        first = self.distribution.sample(np.random.default_rng(0), config, self.corpora)
        self.current = self._proxy(first)
        self.instance = first
        self.action_space = self.current.action_space
        self.observation_space = self.current.observation_space

    def _proxy(self, instance: dict[str, Any]) -> DPFineTuneEnv:
        shape = instance.get("tiny")
        key = (instance["corpus"], instance["n_train"], instance["seed"], json.dumps(shape, sort_keys=True))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        task_kwargs = self.config.task_arguments()
        if self.distribution.max_length is not None:
            task_kwargs = {**task_kwargs, "max_length": self.distribution.max_length}
        if shape:
            task_kwargs = {**task_kwargs, "tiny": {**(task_kwargs.get("tiny") or {}), **shape}}
        # a public selection split of the proxy's own corpus when the env returns the best iterate
        selection = {"n_select": self.distribution.n_val} if self.config.returned_model == "best_public" else {}
        try:
            task = self.task_class.proxy(task_kwargs, corpus=instance["corpus"], n_train=instance["n_train"],
                                         n_val=self.distribution.n_val, seed=instance["seed"], **selection)
        except TypeError as error:  # a shape field the tiny model does not have
            if not shape:
                raise
            raise ConfigError(f"proxy.tiny_shapes {shape}: {error}") from None
        env = DPFineTuneEnv(self.config, task=task, secret_key=self.secret_key, noise_stream=self.noise_stream)
        if hasattr(self, "current") and (env.observation_layout != self.current.observation_layout
                                         or env.action_layout != self.current.action_layout):
            raise ValueError(f"the proxy of instance {key} has other layouts than the others: proxies must keep the "
                             "model family and the parameter groups")
        self._cache[key] = env
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return env

    # everything a controller reads, from the current instance's environment
    @property
    def unwrapped_env(self) -> DPFineTuneEnv:
        return self.current

    @property
    def group_names(self) -> list[str]:
        return self.current.group_names

    @property
    def action_layout(self) -> list[str]:
        return self.current.action_layout

    @property
    def observation_layout(self) -> list[str]:
        return self.current.observation_layout

    @property
    def run(self):
        return self.current.run

    @property
    def task(self):
        return self.current.task

    @property
    def budget(self):
        return self.current.budget

    def encode_action(self, clip=None, noise=None, prune=None) -> np.ndarray:
        return self.current.encode_action(clip=clip, noise=noise, prune=prune)

    def decode_action(self, action):
        return self.current.decode_action(action)

    def calibrated_group_noise(self) -> np.ndarray:
        return self.current.calibrated_group_noise()

    def privacy_report(self):
        return self.current.privacy_report()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Draw an instance (or take ``options["proxy_instance"]``) and start its episode."""
        super().reset(seed=seed)
        options = dict(options or {})
        instance = (options.pop("proxy_instance", None)
                    or self.distribution.sample(self.np_random, self.config, self.corpora))
        self.instance = instance
        self.current = self._proxy(instance)
        budget = {key: instance[key] for key in ("epsilon", "sample_rate", "max_updates")}
        episode_seed = int(self.np_random.integers(2**63 - 1))
        options = {**options, "instance": budget}
        self.reference, randomness = (self._reference_episode(episode_seed, options) if self.distribution.paired
                                      else (None, None))
        observation, info = self.current.reset(seed=episode_seed, options=options)
        if randomness is not None:
            self.current.run.share_randomness(randomness)  # common random numbers with the twin
        return observation, {**info, "proxy_instance": dict(instance)}

    def _reference_episode(self, seed: int, options: dict[str, Any]):
        """Run the action-0 twin of the episode about to start; returns it and its secret randomness
        (kept in memory only, for the paired episode)."""
        env = self.current
        env.reset(seed=seed, options=options)
        action = np.zeros(self.action_space.shape, dtype=self.action_space.dtype)
        rewards, done, info = [], False, {}
        while not done:
            _, reward, terminated, truncated, info = env.step(action)
            rewards.append(float(reward))
            done = terminated or truncated
        reference = ReferenceEpisode(rewards, float(info["val_loss"]), float(info["val_metric"]))
        return reference, env.run.randomness

    def step(self, action):
        observation, reward, terminated, truncated, info = self.current.step(action)
        if self.reference is not None:
            done = terminated or truncated
            info["unpaired_reward"] = float(reward)
            reward = float(reward) - self.reference.subtract(done)
            if done:
                info["reference_val_loss"] = self.reference.val_loss
                info["reference_val_metric"] = self.reference.val_metric
        return observation, reward, terminated, truncated, info

    def state_dict(self) -> dict[str, Any]:
        return {"instance": dict(self.instance), "np_random": self.np_random.bit_generator.state,
                "env": self.current.state_dict(),
                "reference": None if self.reference is None else asdict(self.reference)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a checkpointed episode (a paired one keeps its twin's rewards; the twin's shared
        randomness is re-derived with the same secret key, or fresh without one, as for any resume)."""
        self.instance = dict(state["instance"])
        self.current = self._proxy(self.instance)
        self.np_random.bit_generator.state = state["np_random"]
        self.current.load_state_dict(state["env"])
        reference = state.get("reference")
        self.reference = None if reference is None else ReferenceEpisode(**reference)

    def close(self) -> None:
        for env in self._cache.values():
            env.close()
