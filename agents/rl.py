"""Training RL controllers with Stable-Baselines3 (SAC by default; TD3, PPO, A2C, TQC).

Hyper-parameters come from ``envs_configs/algos/<algo>.yaml`` in the RL Baselines3 Zoo format
(top-level keys are env ids, deployment and public-proxy ids, with a ``default`` entry dp-gym
falls back to). RL Zoo reads the same files when told to (without ``-conf`` it uses its own):
``python -m rl_zoo3.train --algo sac --env dp_gym/TinyTextFlatScheduleProxy-v0 --gym-packages dp_gym
-conf "$(dp-gym algos --path sac)"`` (a proxy id: public data only).
"""

from __future__ import annotations

import csv
import importlib.resources
import inspect
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor
from torch import nn

import dp_gym
from agents.checkpointing import AtomicCheckpoints, load_latest
from dp_gym.envs import InstanceDistribution, ProxyEnv
from dp_gym.evaluation import write_json
from dp_gym.privacy import PrivacyBudget, PrivacyReport, compose
from dp_gym.utils.files import atomic_write_text
from dp_gym.utils.threads import configure_threads

#: the shipped hyper-parameter files (``envs_configs/algos``, in the wheel as ``dp_gym.envs_configs.algos``)
ALGOS_DIR = Path(str(importlib.resources.files("dp_gym.envs_configs.algos")))
#: keys of a zoo file that are not algorithm constructor arguments
_ZOO_ONLY = {"n_timesteps", "policy", "normalize", "n_envs", "env_wrapper", "frame_stack", "callback"}


def algorithms() -> dict[str, type[BaseAlgorithm]]:
    algos: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "td3": TD3, "ppo": PPO, "a2c": A2C}
    try:
        from sb3_contrib import TQC

        algos["tqc"] = TQC
    except ImportError:  # sb3-contrib is an optional extra
        pass
    return algos


def algorithm(name: str) -> type[BaseAlgorithm]:
    algos = algorithms()
    if name not in algos:
        hint = " (install sb3-contrib for tqc)" if name == "tqc" else ""
        raise ValueError(f"unknown algorithm {name!r}; available: {sorted(algos)}{hint}")
    return algos[name]


def _parse_policy_kwargs(text: str) -> dict[str, Any]:
    """The zoo writes ``policy_kwargs: "dict(net_arch=[64, 64])"``; accept that literal form only."""
    match = re.fullmatch(r"\s*dict\((.*)\)\s*", text, flags=re.S)
    if not match:
        raise ValueError(f"policy_kwargs must look like dict(key=value, ...), got {text!r}")
    result: dict[str, Any] = {}
    for part in re.split(r",\s*(?=\w+\s*=)", match.group(1).strip()):
        if not part:
            continue
        key, _, value = part.partition("=")
        result[key.strip()] = yaml.safe_load(value.strip())
    return result


def load_hyperparams(algo: str, env_id: str, path: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(constructor kwargs, zoo-only settings)`` for ``algo`` on ``env_id``."""
    path = path or ALGOS_DIR / f"{algo}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no hyper-parameter file {path}")
    table = yaml.safe_load(path.read_text()) or {}
    entry = dict(table.get(env_id) or table.get("default") or {})
    zoo = {key: entry.pop(key) for key in list(entry) if key in _ZOO_ONLY}
    if isinstance(entry.get("policy_kwargs"), str):
        entry["policy_kwargs"] = _parse_policy_kwargs(entry["policy_kwargs"])
    return entry, zoo


def checked_hyperparams(cls: type[BaseAlgorithm], hyperparams: dict[str, Any]) -> dict[str, Any]:
    """``hyperparams`` as ``cls``'s constructor takes them (``policy_kwargs`` may be the zoo's
    ``"dict(...)"`` string).

    Raises:
        ValueError: naming a key the constructor does not take, and the ones it does.
    """
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "policy", "env", "seed", "verbose",
                                                                  "tensorboard_log"}  # train() sets these
    unknown = sorted(set(hyperparams) - allowed)
    if unknown:
        raise ValueError(f"hyperparams {unknown} are not {cls.__name__} arguments; allowed: {sorted(allowed)}")
    checked = dict(hyperparams)
    if isinstance(checked.get("policy_kwargs"), str):
        checked["policy_kwargs"] = _parse_policy_kwargs(checked["policy_kwargs"])
    return checked


ACTOR_INITS = ("default", "zero")


def start_at_action_zero(model: BaseAlgorithm, std: float = 0.1) -> None:
    """Make the policy's mean action 0 for every observation, with exploration noise ``std``.

    A residual start (as in residual RL): on an environment whose action 0 is a tuned baseline
    (``dp_gym/TinyTextPaced-v0``: plain DP-SGD at the tuned clip), the untrained policy *is*
    the baseline and training learns corrections to it instead of starting from a random
    policy. The last layer of the actor's mean is zeroed; ``std`` is the initial standard
    deviation of the Gaussian before the squashing ``tanh`` (SAC, TQC), of the Gaussian policy
    (PPO, A2C), or TD3's exploration noise is left as configured.
    """
    if std <= 0:
        raise ValueError(f"the initial action std must be > 0, got {std}")
    policy = model.policy
    with torch.no_grad():
        actor = getattr(policy, "actor", None)
        if actor is not None and isinstance(getattr(actor, "log_std", None), nn.Linear):  # SAC, TQC
            for layer in (actor.mu, actor.log_std):
                layer.weight.zero_()
            actor.mu.bias.zero_()
            actor.log_std.bias.fill_(math.log(std))
        elif actor is not None:  # TD3 (and DDPG): mu is a Sequential ending in Tanh
            last = [m for m in actor.mu.modules() if isinstance(m, nn.Linear)][-1]
            last.weight.zero_()
            last.bias.zero_()
            policy.actor_target.load_state_dict(actor.state_dict())
        elif hasattr(policy, "action_net"):  # PPO, A2C
            policy.action_net.weight.zero_()
            policy.action_net.bias.zero_()
            if isinstance(getattr(policy, "log_std", None), nn.Parameter):
                policy.log_std.fill_(math.log(std))
        else:
            raise ValueError(f"cannot start {type(model).__name__}'s policy at action 0")


#: the learning-curve file of a training run: one row per finished episode
EPISODES_CSV = "episodes.csv"
EPISODE_COLUMNS = ("timesteps", "env", "final_val_metric", "epsilon", "epsilon_budget", "failure",
                   "reference_val_metric")


def _continue_learning_curve(source: Path, target: Path, done_steps: int) -> None:
    """The learning curve of a resumed run: the rows up to its checkpoint (the episodes after it run
    again), from the folder it resumes."""
    rows = []
    if source.exists():
        with source.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["timesteps"]) <= done_steps]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=EPISODE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


class DPInfoLogger(BaseCallback):
    """Per-step TensorBoard scalars: epsilon spent, the composed noise multiplier, validation
    perplexity, per-group controls (of the first environment); counts finished episodes. Every
    finished episode (of every environment) is a learning-curve point: TensorBoard's
    ``episode/final_val_metric`` and ``episode/epsilon``, and a row of ``episodes_csv`` (appended,
    so a resumed run continues its file)."""

    def __init__(self, group_names: list[str], episodes_csv: Path | None = None):
        super().__init__()
        self.group_names = group_names
        self.episodes = 0
        self.failures = 0
        self.episodes_csv = episodes_csv

    def _episode_finished(self, env_index: int, info: dict[str, Any]) -> None:
        row = {"timesteps": self.num_timesteps, "env": env_index, "final_val_metric": info.get("val_metric"),
               "epsilon": info.get("epsilon"), "epsilon_budget": info.get("epsilon_budget"),
               "failure": info.get("failure", ""), "reference_val_metric": info.get("reference_val_metric")}
        final, reference = row["final_val_metric"], row["reference_val_metric"]
        if final is not None and np.isfinite(final):
            self.logger.record_mean("episode/final_val_metric", float(final))
            if reference is not None and np.isfinite(reference) and reference > 0:
                # a paired proxy episode (ProxyEnv paired): the learning curve against action 0
                self.logger.record_mean("episode/val_metric_vs_action0", float(final) / float(reference) - 1.0)
        if row["epsilon"] is not None:
            self.logger.record_mean("episode/epsilon", float(row["epsilon"]))
        if self.episodes_csv is not None:
            self.episodes_csv.parent.mkdir(parents=True, exist_ok=True)
            new = not self.episodes_csv.exists()
            with self.episodes_csv.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=EPISODE_COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerow(row)

    def _on_step(self) -> bool:
        info = self.locals["infos"][0]
        record = self.logger.record
        record("dp/epsilon", info["epsilon"])
        record("dp/epsilon_budget", info["epsilon_budget"])
        record("dp/noise_multiplier", info["noise_multiplier"])
        record("dp/val_metric", info["val_metric"])
        if "val_ppl" in info:
            record("dp/val_ppl", info["val_ppl"])
        record("dp/val_loss", info["val_loss"])
        record("dp/budget_projected", float(info.get("budget_projected", False)))
        record("dp/privacy_valid", float(info["privacy_valid"]))
        for control in ("clip", "noise", "prune"):
            if control in info:
                for group, value in zip(self.group_names, np.atleast_1d(info[control]), strict=True):
                    record(f"{control}/{group}", float(value))
        for index, (done, step_info) in enumerate(zip(self.locals["dones"], self.locals["infos"], strict=True)):
            if done:
                self.episodes += 1
                self.failures += "failure" in step_info
                self._episode_finished(index, step_info)
        self.logger.dump(self.num_timesteps)
        return True


#: what a controller trained on public proxies carries into a deployment
SCOPE_PROXY_TRAINING = "training used public proxies only: no private data, no privacy spent"
SCOPE_PRIVATE_TRAINING = ("training ran episodes on the private data: a controller trained here carries their composed "
                          "epsilon into every deployment (worst case over the step budget: an episode can end after "
                          "one step, so the episode count depends on the data)")


def episode_privacy(config) -> PrivacyReport:
    """The guarantee of one private episode of ``config``, whatever the controller does: the Rényi
    filter's ``(alpha*, B)`` for adaptive noise, the calibrated schedule for calibrated noise, the
    budget itself (basic) otherwise."""
    budget = PrivacyBudget(config.epsilon, config.delta, config.sample_rate, config.max_updates, 1,
                           accountant=config.accountant, adaptive=config.adaptive_noise)
    if config.adaptive_noise:
        return PrivacyReport(epsilon=config.epsilon, delta=config.delta, epsilon_budget=config.epsilon,
                             epsilon_spent=config.epsilon, accounting=budget.rule, adaptive=True,
                             updates=config.max_updates, sample_rate=config.sample_rate,
                             filter_order=budget.filter_order, filter_rdp=budget.filter_budget)
    if config.controls["noise"] == "calibrated":
        budget.record(budget.calibrated_noise_multiplier, config.max_updates)
        return budget.report()
    return PrivacyReport(epsilon=config.epsilon, delta=config.delta, epsilon_budget=config.epsilon,
                         epsilon_spent=config.epsilon, accounting="budget", adaptive=False,
                         updates=config.max_updates, sample_rate=config.sample_rate)


def private_training_privacy(config, steps: int, evaluations: int = 0) -> PrivacyReport:
    """The composed privacy of ``steps`` training steps on the private environment (all of them,
    in every process, including those redone after a resume) and ``evaluations`` evaluation
    episodes: at most ``steps + evaluations`` episodes, each with the guarantee of
    :func:`episode_privacy` (see :func:`dp_gym.privacy.compose`)."""
    episodes = steps + evaluations
    return compose([episode_privacy(config)] * episodes, SCOPE_PRIVATE_TRAINING)


def proxy_training_privacy(config) -> PrivacyReport:
    """Training on public proxies spends nothing."""
    report = PrivacyReport.nothing(config.delta, SCOPE_PROXY_TRAINING)
    return report if config.privacy_valid else report.invalidated()


class PrivateUse(BaseCallback):
    """Counts what training spends on the private data: every environment step (each may end an
    episode, so each is at most one more private episode) and every evaluation episode. The count
    is written to ``path`` atomically after every step, so a crash loses none of it and a resume
    adds to it (the steps redone after a resume are new private steps).
    """

    def __init__(self, path: Path, evaluation: EvalCallback):
        super().__init__()
        self.path, self.evaluation = Path(path), evaluation
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.steps, self.evaluations_before = int(saved.get("steps", 0)), int(saved.get("evaluations", 0))

    @property
    def evaluations(self) -> int:
        return self.evaluations_before + len(self.evaluation.evaluations_timesteps)

    def _on_step(self) -> bool:
        self.steps += self.training_env.num_envs
        atomic_write_text(self.path, json.dumps({"steps": self.steps, "evaluations": self.evaluations}))
        return True


def train(env_id: str, algo: str = "sac", timesteps: int = 1000, seed: int = 0, out: str | Path = "runs/train",
          resume: str | Path | None = None, env_overrides: dict[str, Any] | None = None,
          checkpoint_every: int = 100, eval_every: int | None = None, progress_bar: bool = True,
          hyperparams: dict[str, Any] | None = None, actor_init: str = "default",
          actor_init_std: float = 0.1, callbacks: list[BaseCallback] | None = None,
          secret_key=None, report=print, private_training: bool = False,
          proxy: InstanceDistribution | dict[str, Any] | None = None, n_envs: int = 1) -> Path:
    """Train ``algo`` for ``timesteps`` environment steps on public proxies of ``env_id`` (default)
    or, with ``private_training``, on its private data; returns the model path.

    On proxies (:class:`dp_gym.envs.ProxyEnv`, instances drawn from ``proxy``) no private data is
    touched: the controller's deployment is then its only private episode. With
    ``private_training`` every training episode is a private one, and ``run.json`` reports their
    composed epsilon (:func:`private_training_privacy`), which every later deployment carries.

    Writes TensorBoard logs (``out/tb``), atomic checkpoints (``out/checkpoints/step_<n>``: the
    model, the replay buffer, the episode in progress and every generator, see
    :mod:`agents.checkpointing`), the evaluation callback's log (``out/eval``), ``out/model.zip`` and
    ``out/run.json``. With ``resume=DIR`` the newest readable checkpoint in ``DIR/checkpoints``
    continues the same run, episode in progress included, for the remaining steps; with the same
    secret key (``secret_key`` or ``$DP_GYM_SECRET_KEY``) it is the run an uninterrupted one would
    have been (with ``n_envs > 1`` the episodes in progress restart). ``n_envs`` environments run
    in parallel processes, one torch thread each. ``actor_init="zero"`` starts the policy at action
    0 with exploration std ``actor_init_std`` (:func:`start_at_action_zero`). ``callbacks`` run after
    dp-gym's own.
    """
    if timesteps <= 0:
        raise ValueError(f"timesteps must be > 0, got {timesteps}")
    if actor_init not in ACTOR_INITS:
        raise ValueError(f"actor_init must be one of {list(ACTOR_INITS)}, got {actor_init!r}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    env_id = dp_gym.resolve_env_id(env_id)
    config = dp_gym.config_of(env_id, **(env_overrides or {}))
    distribution = proxy if isinstance(proxy, InstanceDistribution) else InstanceDistribution.from_dict(proxy)
    cls = algorithm(algo)
    kwargs, zoo = load_hyperparams(algo, env_id)
    kwargs.update(checked_hyperparams(cls, hyperparams or {}))
    out = Path(out)
    if resume is None and any((out / "checkpoints").glob("step_*")):  # never mix two runs' checkpoints
        raise FileExistsError(f"{out / 'checkpoints'} holds an earlier run's checkpoints: continue it with "
                              f"--resume {out}, or train into another --out")
    env_overrides = dict(env_overrides or {})
    stream = f"train/{algo}/seed={seed}"
    make_env = EnvFactory(env_id, env_overrides, secret_key, None if private_training else distribution,
                          threads=1 if n_envs > 1 else None, monitor=n_envs == 1, noise_stream=stream)
    make_eval_env = EnvFactory(env_id, env_overrides, secret_key, None if private_training else distribution,
                               threads=1 if n_envs > 1 else None, monitor=n_envs == 1, noise_stream=f"{stream}/eval")
    threads_before = torch.get_num_threads()
    if n_envs > 1:
        configure_threads(1)  # the learner's share of the cores while the environments compute
        env = VecMonitor(SubprocVecEnv([make_env] * n_envs))
        eval_env = VecMonitor(DummyVecEnv([make_eval_env]))
    else:
        env = make_env()
        eval_env = make_eval_env()  # built before the generators are seeded or restored: it draws from them
    done_steps = 0
    if resume is not None:
        model, done_steps = load_latest(cls, Path(resume) / "checkpoints", env, report=report,
                                        tensorboard_log=str(out / "tb"))
    else:
        model = cls(zoo.get("policy", "MlpPolicy"), env, seed=seed, verbose=0, tensorboard_log=str(out / "tb"),
                    **kwargs)
        if actor_init == "zero":
            start_at_action_zero(model, actor_init_std)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    first_eval = eval_env.envs[0] if hasattr(eval_env, "envs") else eval_env
    group_names = first_eval.unwrapped.group_names
    logger = DPInfoLogger(group_names, out / EPISODES_CSV)
    checkpoints = AtomicCheckpoints(out / "checkpoints", checkpoint_every)
    checkpoints._saved_at = done_steps if resume is not None else None
    eval_freq = max(1, eval_every // n_envs) if eval_every else max(timesteps, 1) + 1
    evaluation = EvalCallback(eval_env, n_eval_episodes=1, eval_freq=eval_freq, log_path=str(out / "eval"),
                              best_model_save_path=str(out / "best"), deterministic=True)
    if resume is None:
        (out / "private_use.json").unlink(missing_ok=True)  # a new run starts from nothing
        (out / EPISODES_CSV).unlink(missing_ok=True)
    else:
        if Path(resume).resolve() != out.resolve() and (Path(resume) / "private_use.json").exists():
            shutil.copyfile(Path(resume) / "private_use.json", out / "private_use.json")
        _continue_learning_curve(Path(resume) / EPISODES_CSV, out / EPISODES_CSV, done_steps)
    use = PrivateUse(out / "private_use.json", evaluation)
    callback = CallbackList([logger, checkpoints, evaluation, use, *(callbacks or [])])
    remaining = max(timesteps - done_steps, 0)
    try:
        if remaining:
            model.learn(total_timesteps=remaining, callback=callback, progress_bar=progress_bar,
                        reset_num_timesteps=resume is None, tb_log_name=algo)
    finally:
        configure_threads(threads_before)
    model_path = out / "model.zip"
    model.save(model_path)
    privacy = (private_training_privacy(config, use.steps, use.evaluations) if private_training
               else proxy_training_privacy(config))
    if private_training and not config.privacy_valid:
        privacy = privacy.invalidated()
    write_json({
        "env_id": env_id, "algo": algo, "timesteps": timesteps, "seed": seed, "env_overrides": env_overrides,
        "training_data": "private" if private_training else "public proxies",
        "proxy": None if private_training else distribution.to_dict(), "n_envs": n_envs,
        "hyperparams": {k: v for k, v in kwargs.items() if k != "policy_kwargs"},
        "actor_init": actor_init, "actor_init_std": actor_init_std if actor_init == "zero" else None,
        "privacy_valid": privacy.privacy_valid, "epsilon_scope": privacy.epsilon_scope,
        "privacy": privacy.to_dict(),  # with its history or Renyi bound: deployments compose it
        "training_episodes": logger.episodes if resume is None else None,
        "secret_key": "supplied" if first_eval.unwrapped.run.secret_key is not None else "none (fresh OS entropy)",
        "resumed_from_steps": done_steps if resume is not None else None}, out / "run.json")
    env.close()
    eval_env.close()
    return model_path


class EnvFactory:
    """A picklable environment maker (for ``SubprocVecEnv``): the private env, or its public proxy."""

    def __init__(self, env_id: str, overrides: dict[str, Any], secret_key, proxy: InstanceDistribution | None,
                 threads: int | None = None, monitor: bool = True, noise_stream: str = ""):
        self.env_id, self.overrides, self.secret_key, self.proxy = env_id, overrides, secret_key, proxy
        self.threads, self.monitor, self.noise_stream = threads, monitor, noise_stream

    def __call__(self):
        if self.threads is not None:
            configure_threads(self.threads)
        if self.proxy is None:
            env = dp_gym.make(self.env_id, secret_key=self.secret_key, noise_stream=self.noise_stream, **self.overrides)
        else:
            env = ProxyEnv(dp_gym.config_of(self.env_id, **self.overrides), self.proxy, secret_key=self.secret_key,
                           noise_stream=self.noise_stream)
        return Monitor(env) if self.monitor else env


def train_job(out: str, **kwargs: Any) -> str:
    """One training run as a sweep job (``dp-gym train --seeds``; :mod:`dp_gym.utils.backends`): the
    keyword arguments of :func:`train`, no progress bar; a folder that already holds a checkpoint
    resumes from its newest. Returns the model's path."""
    resume = out if any((Path(out) / "checkpoints").glob("step_*")) else None
    return str(train(out=out, resume=resume, progress_bar=False, **kwargs))


def training_privacy_of(model_path: str | Path) -> PrivacyReport | None:
    """What a trained controller carries into a deployment, read from the ``run.json`` beside its
    model, or of the run whose checkpoint it is (``RUN/checkpoints/step_<n>/model.zip``: the whole
    run's report, an upper bound for a checkpoint's); None when there is none: then nothing is known
    about how it was trained."""
    folder = Path(model_path).parent
    run = folder / "run.json"
    if not run.exists() and folder.parent.name == "checkpoints":
        run = folder.parent.parent / "run.json"
    if not run.exists():
        return None
    data = json.loads(run.read_text())
    return PrivacyReport.from_dict(data["privacy"]) if "privacy" in data else None


def load_policy(spec: str, env=None) -> BaseAlgorithm:
    """Load ``"algo:PATH"`` (or a bare PATH, read as SAC) as an SB3 model."""
    algo, _, path = spec.partition(":") if ":" in spec else ("sac", "", spec)
    if not Path(path).exists():
        raise FileNotFoundError(f"policy file {path} does not exist")
    return algorithm(algo).load(path, env=env)


__all__ = ["ACTOR_INITS", "DPInfoLogger", "algorithm", "start_at_action_zero", "algorithms", "load_hyperparams", "load_policy", "train"]
