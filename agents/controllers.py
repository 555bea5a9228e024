"""Controllers named by a spec string, as the command line and the sweeps give them, and the
deployment episode of one as a sweep job.

A spec is a heuristic's name with optional parameters (``"vanilla:clip=0.3"``), a heuristic by
import path (``"package.module:Factory"``) or a trained policy (``"sac:PATH"``, ``"sac:pretrained"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dp_gym.privacy import PrivacyReport


def resolve_selected(spec: str) -> str:
    """``"selected:RUN"`` -> the spec that ``RUN/selection.json`` chose (``dp-gym select``); any
    other spec unchanged."""
    name, _, rest = spec.partition(":")
    if name != "selected":
        return spec
    if not rest:
        raise ValueError("controller 'selected' needs a training run folder: selected:runs/train")
    from agents.selection import selected_spec

    return selected_spec(rest)


def _policy_path(algo: str, rest: str, env_id: str | None) -> str:
    """The model file of ``algo:rest``: a path, or ``pretrained`` (the one shipped for ``env_id``)."""
    if rest == "pretrained":
        from agents.pretrained import pretrained_model

        return str(pretrained_model(algo, env_id))
    return rest


def controller_factory(spec: str, env_id: str | None = None):
    """``"vanilla"``, ``"adaptive_quantile:initial_clip=0.3"``, ``"schedule:clip_knots=2/1/0.5"`` (a list
    of numbers separated by ``/``), ``"sac:PATH"``, ``"sac:pretrained"``,
    ``"selected:RUN"`` (what ``dp-gym select`` chose for a training run) -> factory(env)."""
    from agents.heuristics import CONTROLLERS, make_controller, registered_controllers
    from agents.rl import algorithms, load_policy

    spec = resolve_selected(spec)
    name, _, rest = spec.partition(":")
    if name in algorithms():
        if not rest:
            raise ValueError(f"controller {spec!r}: give the model file, e.g. {name}:runs/train/model.zip, or "
                             f"{name}:pretrained")
        rest = _policy_path(name, rest, env_id)
        if not Path(rest).exists():
            raise FileNotFoundError(f"controller {spec!r}: policy file {rest} does not exist")
        return lambda env: load_policy(f"{name}:{rest}")
    if name not in registered_controllers():
        if ":" in spec:  # a heuristic by import path, "package.module:Factory"
            CONTROLLERS.get(spec)  # fails here, with the allowed names, if it does not import
            return lambda env: make_controller(spec, env)
        raise ValueError(f"unknown controller {name!r}; heuristics: {registered_controllers()} or "
                         f"'module:Factory', RL: {[a + ':PATH' for a in sorted(algorithms())]}")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            numbers = [float(part) for part in value.split("/")]
        except ValueError:
            raise ValueError(f"controller {spec!r}: {key}={value!r} is not a number (or numbers separated by /)") from None
        kwargs[key] = numbers if "/" in value else numbers[0]
    return lambda env: make_controller(name, env, **kwargs)


def noise_stream(command: str, spec: str, env_id: str | None = None) -> str:
    """The noise stream of a deployment of controller ``spec`` by ``command``: with a secret key,
    two runs share noise only when they share the stream, so it names everything that decides the
    actions: the spec and, for a trained model, a digest of its file (a retrained model at the same
    path is another controller)."""
    import hashlib

    from agents.rl import algorithms

    spec = resolve_selected(spec)
    name, _, rest = spec.partition(":")
    if name in algorithms() and rest:
        digest = hashlib.sha256(Path(_policy_path(name, rest, env_id)).read_bytes()).hexdigest()[:16]
        return f"{command}/{spec}@{digest}"
    return f"{command}/{spec}"


def controller_prior(spec: str, delta: float, env_id: str | None = None):
    """What the controller ``spec`` carries into a deployment: a trained model's ``run.json`` report,
    nothing for a heuristic with its default parameters, None (unknown) for a heuristic whose
    parameters came from elsewhere (they may have been tuned on the private data)."""
    from agents.rl import algorithms, training_privacy_of

    spec = resolve_selected(spec)  # the selection itself ran on public proxies only
    name, _, rest = spec.partition(":")
    if name in algorithms():
        return training_privacy_of(_policy_path(name, rest, env_id))
    if not rest:
        return PrivacyReport.nothing(delta, "a heuristic with its default parameters: no private data before")
    return None


def deploy_episode(env_id: str, spec: str, name: str, seed: int, stream: str | None,
                   overrides: dict[str, Any]) -> dict[str, Any]:
    """One deployment of controller ``spec`` on ``env_id`` (with config ``overrides``) from public seed
    ``seed`` on noise stream ``stream``, as a sweep job (:mod:`dp_gym.utils.backends`): the
    :class:`dp_gym.evaluation.EpisodeResult` as a dict. The same episode as :func:`dp_gym.evaluation.compare`
    runs, in a fresh environment."""
    import dp_gym
    from dp_gym.evaluation import run_episode

    env = dp_gym.make(env_id, **overrides)
    try:
        return run_episode(controller_factory(spec, env_id)(env), env, seed, name, stream=stream).to_dict()
    finally:
        env.close()


def crashed_deployment(name: str, seed: int, error: str, env_id: str, overrides: dict[str, Any]):
    """The result of a deployment job that raised (see :func:`dp_gym.evaluation.crashed_episode`); a
    configuration that does not even build touched no data."""
    import dp_gym
    from dp_gym.evaluation import crashed_episode

    try:
        config = dp_gym.config_of(env_id, **overrides)
    except Exception:  # nothing was built, so nothing was released
        config = None
    return crashed_episode(name, seed, error, config)


def deploy(backend, env_id: str, specs: dict[str, str], seeds: Sequence[int], overrides: dict[str, Any],
           overrides_of: dict[str, dict[str, Any]] | None = None, streams: dict[str, str] | None = None,
           imports: Sequence[str] = (), progress: Callable[[str], None] | None = None) -> list:
    """Every controller (``name -> spec``) once per seed, each deployment one job of ``backend`` (a
    :mod:`dp_gym.utils.backends` backend), each with ``overrides`` plus its own ``overrides_of[name]``
    and its noise stream ``streams[name]`` (default: its name). A deployment that raised comes back
    as :func:`crashed_deployment`. Results in the order of ``specs``, then ``seeds``."""
    from dp_gym.evaluation import EpisodeResult
    from dp_gym.utils.backends import Job

    jobs, where = [], []
    for name, spec in specs.items():
        merged = {**overrides, **(overrides_of or {}).get(name, {})}
        for seed in seeds:
            jobs.append(Job(f"{name}/seed={seed}", "agents.controllers:deploy_episode",
                            {"env_id": env_id, "spec": spec, "name": name, "seed": int(seed),
                             "stream": (streams or {}).get(name), "overrides": merged}, tuple(imports)))
            where.append((name, int(seed), merged))
    outcomes = backend.run(jobs, progress=progress)
    return [crashed_deployment(name, seed, outcome.error, env_id, merged) if outcome.failed
            else EpisodeResult.from_dict(outcome.value)
            for outcome, (name, seed, merged) in zip(outcomes, where, strict=True)]
