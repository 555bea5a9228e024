"""Controllers that ship with dp-gym, the way RL Zoo ships trained agents: ``sac:pretrained``.

Each one lives at ``agents/pretrained/<algo>/<env name>/`` as ``model.zip`` (the SB3 model) and the
``run.json`` its training wrote (what it was trained on, its privacy report: public proxies only, so
nothing is carried into a deployment). ``make pretrained`` reproduces the shipped SAC with one
command and a fixed seed.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


def _root() -> Path:
    return Path(str(resources.files(__name__)))


def _shipped() -> dict[tuple[str, str], Path]:
    """``(algo, env id) -> model.zip``; the env id is the one the model was trained for (its run.json)."""
    return {(model.parent.parent.name, json.loads((model.parent / "run.json").read_text())["env_id"]): model
            for model in sorted(_root().glob("*/*/model.zip"))}


def available() -> dict[str, list[str]]:
    """``{algo: [env ids]}`` of the shipped controllers."""
    found: dict[str, list[str]] = {}
    for algo, env_id in _shipped():
        found.setdefault(algo, []).append(env_id)
    return found


def pretrained_model(algo: str, env_id: str | None) -> Path:
    """The shipped ``model.zip`` of ``algo`` for ``env_id``.

    Raises:
        FileNotFoundError: one line naming the environment and what does ship.
    """
    path = _shipped().get((algo, env_id or ""))
    if path is None:
        raise FileNotFoundError(f"no pretrained {algo} controller for {env_id!r}; shipped: {available() or 'none'} "
                                f"(train one: dp-gym train --env ...)")
    return path


__all__ = ["available", "pretrained_model"]
