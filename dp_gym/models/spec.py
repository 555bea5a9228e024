"""Which model a task fine-tunes: ``task_kwargs.model`` parsed and validated.

``model`` is either a string (``"tiny"`` or a local checkpoint folder) or a mapping::

    model:
      path: ${DP_GYM_MODEL_PATH}   # "tiny", a local folder, or ${VAR}: read from the environment
      dtype: float32               # float32 | bfloat16 | float16 (the weights' dtype when loaded)
      lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: [c_attn, c_proj]}

Every error names the field (``task_kwargs.model.lora.r``) and, for a path read from the
environment, the variable to set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
#: the environment variable the shipped real-model presets read their checkpoint path from
MODEL_PATH_VARIABLE = "DP_GYM_MODEL_PATH"
_VARIABLE = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter on every targeted linear layer: ``W x + (alpha / r) B A dropout(x)``.

    Args:
        r: rank of ``A`` (``r x d_in``) and ``B`` (``d_out x r``).
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter's input; elementwise, so each example's mask touches that
            example only and per-sample gradients stay per-example.
        target_modules: module-name suffixes to adapt; ``None`` takes peft's default for the
            architecture (GPT-2: ``c_attn``; Llama/Mistral: ``q_proj``, ``v_proj``).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, value: Any, field: str) -> LoraSpec:
        if isinstance(value, LoraSpec):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{field} must be a mapping with r, alpha, dropout, target_modules; got {value!r}")
        unknown = sorted(set(value) - {"r", "alpha", "dropout", "target_modules"})
        if unknown:
            raise ValueError(f"{field} has unknown keys {unknown} (allowed: r, alpha, dropout, target_modules)")
        r = value.get("r", cls.r)
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"{field}.r must be an integer >= 1, got {r!r}")
        alpha = _finite(f"{field}.alpha", value.get("alpha", cls.alpha))
        if alpha <= 0:
            raise ValueError(f"{field}.alpha must be > 0, got {alpha!r}")
        dropout = _finite(f"{field}.dropout", value.get("dropout", cls.dropout))
        if not 0 <= dropout < 1:
            raise ValueError(f"{field}.dropout must be in [0, 1), got {dropout!r}")
        targets = value.get("target_modules")
        if targets is not None:
            if isinstance(targets, str):
                targets = [targets]
            if not (isinstance(targets, Sequence) and targets and all(isinstance(t, str) and t for t in targets)):
                raise ValueError(f"{field}.target_modules must be a non-empty list of module names, got {targets!r}")
            targets = tuple(targets)
        return cls(r=r, alpha=alpha, dropout=dropout, target_modules=targets)


@dataclass(frozen=True)
class ModelSpec:
    """``task_kwargs.model``: where the checkpoint is, its dtype, and an optional LoRA adapter."""

    path: str = "tiny"
    dtype: str = "float32"
    lora: LoraSpec | None = None

    @classmethod
    def parse(cls, value: Any, field: str = "task_kwargs.model") -> ModelSpec:
        """A spec from a string (the path) or a mapping ``{path, dtype, lora}``.

        Raises:
            ValueError: naming the field for a wrong type, an unknown key or an invalid value.
        """
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str | os.PathLike):
            return cls(path=_path(str(value), field))
        if not isinstance(value, Mapping):
            raise ValueError(f"{field} must be 'tiny', a local folder, or a mapping with path, dtype, lora; "
                             f"got {value!r}")
        unknown = sorted(set(value) - {"path", "dtype", "lora"})
        if unknown:
            raise ValueError(f"{field} has unknown keys {unknown} (allowed: path, dtype, lora)")
        if "path" not in value:
            raise ValueError(f"{field}.path is missing (a local checkpoint folder, or 'tiny')")
        path = value["path"]
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise ValueError(f"{field}.path must be a folder name, got {path!r}")
        dtype = value.get("dtype", "float32")
        if dtype not in DTYPES:
            raise ValueError(f"{field}.dtype must be one of {list(DTYPES)}, got {dtype!r}")
        lora = value.get("lora")
        lora = None if lora is None else LoraSpec.parse(lora, f"{field}.lora")
        return cls(path=_path(str(path), f"{field}.path"), dtype=dtype, lora=lora)

    @property
    def is_tiny(self) -> bool:
        return self.path == "tiny"

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def _finite(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    return float(value)


def _path(path: str, field: str) -> str:
    """``path`` with a ``${VAR}`` / ``$VAR`` read from the environment.

    Raises:
        ValueError: naming the variable when it is not set.
    """
    match = _VARIABLE.match(path.strip())
    if not match:
        return path
    variable = match.group(1)
    resolved = os.environ.get(variable, "").strip()
    if not resolved:
        hint = " or pass --model-path" if variable == MODEL_PATH_VARIABLE else ""
        raise ValueError(f"{field} is read from ${variable}, which is not set: export {variable}=/path/to/a/local/"
                         f"checkpoint{hint}")
    return resolved


__all__ = ["DTYPES", "LoraSpec", "MODEL_PATH_VARIABLE", "ModelSpec"]
