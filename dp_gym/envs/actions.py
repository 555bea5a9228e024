"""The action vector: ``[clip_0..clip_{G-1}, noise_0.., prune_0..]`` in ``[-1, 1]``.

Clip and noise map log-linearly onto their ranges, prune linearly onto ``[0, prune_max]``:

    C_g     = exp(log lo_C + (a + 1)/2 * (log hi_C - log lo_C))
    sigma_g = exp(log lo_s + (a + 1)/2 * (log hi_s - log lo_s))
    p_g     = (a + 1)/2 * prune_max

With ``noise_scale: paced`` the noise entry is a factor on the pace ``s_g`` (the noise that spends
the remaining budget evenly, computed by the environment's privacy budget before every step):
``sigma_g = s_g * exp(log lo_s + (a + 1)/2 * (log hi_s - log lo_s))``.

Controls fixed by the config are not in the vector. The codec is pure: the noise it scales or
uses (``noise: calibrated``) is an argument, never state it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from dp_gym.config import CONTROLS, ConfigError, EnvConfig


@dataclass
class DecodedAction:
    """Per-group controls."""

    clip: np.ndarray
    noise: np.ndarray
    prune: np.ndarray

    def as_dict(self, group_names: list[str]) -> dict[str, dict[str, float]]:
        return {
            name: {
                "clip": float(self.clip[i]),
                "noise": float(self.noise[i]),
                "prune": float(self.prune[i]),
            }
            for i, name in enumerate(group_names)
        }


class ActionCodec:
    """Maps ``[-1, 1]`` action vectors to per-group controls and back."""

    def __init__(self, config: EnvConfig, group_names: list[str]):
        self.config = config
        self.group_names = list(group_names)
        self.controlled = config.controlled
        if not self.controlled:
            raise ConfigError("controls: at least one of clip / noise / prune must be 'control'")
        self.layout = [f"{control}/{group}" for control in self.controlled for group in self.group_names]
        self.space = spaces.Box(-1.0, 1.0, shape=(len(self.layout),), dtype=np.float32)

    @property
    def needs_noise_reference(self) -> bool:
        """Whether decoding needs the budget's noise (``noise: calibrated`` or ``noise_scale: paced``)."""
        return self.config.controls["noise"] == "calibrated" or (
            "noise" in self.controlled and self.config.noise_scale == "paced")

    def decode(self, action, noise_reference: np.ndarray | None = None) -> DecodedAction:
        """The per-group controls of ``action``.

        Args:
            action: the action vector; out-of-range entries are clipped to [-1, 1].
            noise_reference: per-group noise from the budget: the calibrated noise for
                ``noise: calibrated``, the pace for ``noise_scale: paced`` (else unused).

        Raises:
            ValueError: for a wrong shape, or a NaN/inf entry (named).
        """
        vector = np.asarray(action, dtype=np.float64).reshape(-1)
        if vector.shape != (len(self.layout),):
            raise ValueError(f"action must have shape ({len(self.layout)},), got {np.shape(action)}")
        bad = np.flatnonzero(~np.isfinite(vector))
        if bad.size:
            raise ValueError(f"action entry {self.layout[bad[0]]!r} (index {bad[0]}) is {vector[bad[0]]}; "
                             "actions must be finite")
        vector = np.clip(vector, -1.0, 1.0)
        unit = (vector + 1.0) / 2.0
        n = len(self.group_names)
        values = {}
        for index, control in enumerate(self.controlled):
            values[control] = unit[index * n : (index + 1) * n]
        cfg = self.config
        clip = self._log_map(values["clip"], cfg.clip_range) if "clip" in values else np.full(n, cfg.controls["clip"])
        if "noise" in values and cfg.noise_scale == "paced":
            noise = self._reference(noise_reference) * self._log_map(values["noise"], cfg.noise_range)
        elif "noise" in values:
            noise = self._log_map(values["noise"], cfg.noise_range)
        elif cfg.controls["noise"] == "calibrated":
            noise = self._reference(noise_reference).copy()
        else:
            noise = np.full(n, float(cfg.controls["noise"]))
        prune = values["prune"] * cfg.prune_max if "prune" in values else np.full(n, float(cfg.controls["prune"]))
        return DecodedAction(clip=clip, noise=noise, prune=prune)

    def encode(self, clip=None, noise=None, prune=None, noise_reference: np.ndarray | None = None) -> np.ndarray:
        """The action that decodes to the given per-group controls (for heuristics); clipped to range.
        ``noise_reference``: the pace, for ``noise_scale: paced``."""
        cfg = self.config
        given = {"clip": clip, "noise": noise, "prune": prune}
        parts = []
        for control in self.controlled:
            value = np.broadcast_to(np.asarray(given[control], dtype=np.float64), (len(self.group_names),))
            if control == "prune":
                unit = value / cfg.prune_max if cfg.prune_max > 0 else np.zeros_like(value)
            else:
                low, high = cfg.clip_range if control == "clip" else cfg.noise_range
                if control == "noise" and cfg.noise_scale == "paced":
                    value = value / self._reference(noise_reference)
                unit = (np.log(value) - np.log(low)) / max(np.log(high) - np.log(low), 1e-12)
            parts.append(np.clip(2.0 * unit - 1.0, -1.0, 1.0))
        return np.concatenate(parts).astype(np.float32)

    def _reference(self, noise_reference: np.ndarray | None) -> np.ndarray:
        if noise_reference is None:
            raise ValueError("this action layout scales the budget's noise (noise: calibrated or noise_scale: paced): "
                             "pass noise_reference")
        reference = np.asarray(noise_reference, dtype=np.float64)
        if reference.shape != (len(self.group_names),):
            raise ValueError(f"noise_reference must have shape ({len(self.group_names)},), got {reference.shape}")
        return reference

    @staticmethod
    def _log_map(unit: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
        low, high = np.log(bounds[0]), np.log(bounds[1])
        return np.exp(low + unit * (high - low))


__all__ = ["CONTROLS", "ActionCodec", "DecodedAction"]
