"""Controllers that ship with dp-gym, the way RL Zoo ships trained agents: ``sac:pretrained``.

Each one lives at ``agents/pretrained/<algo>/<env name>/`` as ``model.zip`` (the SB3 model) and the
``run.json`` its training wrote (what it was trained on, its privacy report: public proxies only, so
nothing is carried into a deployment). ``make pretrained`` reproduces the shipped SAC with one
command and a fixed seed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _root() -> Path:
    return Path(str(resources.files(__name__)))


def available() -> dict[str, list[str]]:
    """``{algo: [env ids]}`` of the shipped controllers."""
    found: dict[str, list[str]] = {}
    for model in sorted(_root().glob("*/*/model.zip")):
        found.setdefault(model.parent.parent.name, []).append(f"dp_gym/{model.parent.name}")
    return found


def pretrained_model(algo: str, env_id: str | None) -> Path:
    """The shipped ``model.zip`` of ``algo`` for ``env_id``.

    Raises:
        FileNotFoundError: one line naming the environment and what does ship.
    """
    name = (env_id or "").split("/")[-1]
    path = _root() / algo / name / "model.zip"
    if not name or not path.exists():
        raise FileNotFoundError(f"no pretrained {algo} controller for {env_id!r}; shipped: {available() or 'none'} "
                                f"(train one: dp-gym train --env ...)")
    return path


__all__ = ["available", "pretrained_model"]
