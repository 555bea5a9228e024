"""Which torch device a run uses: ``auto`` (CUDA when torch sees one, else CPU), ``cpu``, ``cuda[:N]``."""

from __future__ import annotations

import re

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = ("fp32", "bf16")


def check_device(name: object, field: str = "device") -> str:
    """``name`` when it is a device spec; a ValueError naming ``field`` otherwise (no CUDA needed)."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise ValueError(f"{field} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return name


def resolve_device(name: str, field: str = "device") -> torch.device:
    """The device ``name`` stands for on this machine.

    Raises:
        ValueError: naming ``field`` for a bad spec, or for CUDA when torch sees none.
    """
    check_device(name, field)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{field} is {name!r} but torch sees no CUDA device here; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{field} is {name!r} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


__all__ = ["PRECISIONS", "check_device", "resolve_device"]
