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
    """Maps ``[-1, 1]`` action vectors to per-group controls and back.

    With ``noise_allocation: shares`` (paced noise only) the noise block is one **pace factor**
    ``f`` (log-mapped onto ``noise_range``) followed by one **share** entry per group (none with one
    group): the gradient part of the composed multiplier is ``f`` times the pace's, and it is split
    over the groups by shares ``w_g`` proportional to ``(C_g^2 / sum_k C_k^2) * share_range^{a_g}``:

    .. math:: \\sigma_g = \frac{1}{\\sqrt{S\\, w_g}}, \\qquad S = \frac{1}{f^2} \\sum_g s_g^{-2}

    (``s_g``: the pace's per-group noise). The zero action (``f = 1``, all ``a_g = 0``) is then
    per-layer clipping with **one** noise: every coordinate gets the same noise std
    ``sigma_g C_g``, the allocation Opacus' per-layer clipping uses, at plain DP-SGD's pace. Per-group
    control is never a handicap there: any other allocation is a move away from it.
    """

    def __init__(self, config: EnvConfig, group_names: list[str]):
        self.config = config
        self.group_names = list(group_names)
        self.controlled = config.controlled
        if not self.controlled:
            raise ConfigError("controls: at least one of clip / noise / prune must be 'control'")
        self.shares = "noise" in self.controlled and config.noise_allocation == "shares"
        self.blocks = [(control, self._entries(control)) for control in self.controlled]
        self.layout = [name for _, names in self.blocks for name in names]
        self.space = spaces.Box(-1.0, 1.0, shape=(len(self.layout),), dtype=np.float32)

    def _entries(self, control: str) -> list[str]:
        if control == "noise" and self.shares:
            return ["noise/pace"] + ([f"noise/share/{g}" for g in self.group_names] if len(self.group_names) > 1 else [])
        return [f"{control}/{group}" for group in self.group_names]

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
        values = self._blocks(action)
        cfg, n = self.config, len(self.group_names)
        unit = {control: (block + 1.0) / 2.0 for control, block in values.items()}
        clip = self._log_map(unit["clip"], cfg.clip_range) if "clip" in unit else np.full(n, cfg.controls["clip"])
        if self.shares:
            noise = self._shared_noise(values["noise"], clip, self._reference(noise_reference))
        elif "noise" in unit and cfg.noise_scale == "paced":
            noise = self._reference(noise_reference) * self._log_map(unit["noise"], cfg.noise_range)
        elif "noise" in unit:
            noise = self._log_map(unit["noise"], cfg.noise_range)
        elif cfg.controls["noise"] == "calibrated":
            noise = self._reference(noise_reference).copy()
        else:
            noise = np.full(n, float(cfg.controls["noise"]))
        prune = unit["prune"] * cfg.prune_max if "prune" in unit else np.full(n, float(cfg.controls["prune"]))
        return DecodedAction(clip=clip, noise=noise, prune=prune)

    def pace_factor(self, action) -> float:
        """The pace factor ``f`` of ``action`` (``noise_allocation: shares`` only). Under
        ``pace_unit: budget`` the environment turns it into the reference noise it then passes to
        :meth:`decode` (the pace for ``remaining * f^2`` updates), and decoding applies it no more."""
        if not self.shares:
            raise ValueError("pace_factor needs noise_allocation 'shares' (one pace factor for every group)")
        return float(self._log_map((self._blocks(action)["noise"][:1] + 1.0) / 2.0, self.config.noise_range)[0])

    def _blocks(self, action) -> dict[str, np.ndarray]:
        """The action's entries per control, checked (shape, finite) and clipped to [-1, 1]."""
        vector = np.asarray(action, dtype=np.float64).reshape(-1)
        if vector.shape != (len(self.layout),):
            raise ValueError(f"action must have shape ({len(self.layout)},), got {np.shape(action)}")
        bad = np.flatnonzero(~np.isfinite(vector))
        if bad.size:
            raise ValueError(f"action entry {self.layout[bad[0]]!r} (index {bad[0]}) is {vector[bad[0]]}; "
                             "actions must be finite")
        vector = np.clip(vector, -1.0, 1.0)
        values, offset = {}, 0
        for control, names in self.blocks:
            values[control] = vector[offset : offset + len(names)]
            offset += len(names)
        return values

    def _shared_noise(self, block: np.ndarray, clip: np.ndarray, pace: np.ndarray) -> np.ndarray:
        cfg = self.config
        # under pace_unit 'budget' the reference is already the pace that spends f^-2 even shares
        factor = 1.0 if cfg.pace_unit == "budget" else float(self._log_map((block[:1] + 1.0) / 2.0, cfg.noise_range)[0])
        logits = block[1:] if len(block) > 1 else np.zeros(1)
        weights = clip**2 / np.sum(clip**2) * np.exp(logits * np.log(cfg.share_range))
        weights = weights / weights.sum()
        total = np.sum(pace**-2.0) / factor**2
        return 1.0 / np.sqrt(total * weights)

    def encode(self, clip=None, noise=None, prune=None, noise_reference: np.ndarray | None = None) -> np.ndarray:
        """The action that decodes to the given per-group controls (for heuristics); clipped to range.
        ``noise_reference``: the pace, for ``noise_scale: paced``. Under ``pace_unit: budget`` a
        noise of ``c`` times the pace encodes as pace factor ``c``: the step then spends ``c^-2``
        even shares, what that noise would cost where RDP is ``~1/z^2``."""
        cfg, n = self.config, len(self.group_names)
        given = {"clip": clip, "noise": noise, "prune": prune}
        parts = []
        for control, _ in self.blocks:
            value = np.broadcast_to(np.asarray(given[control], dtype=np.float64), (n,))
            if control == "prune":
                unit = value / cfg.prune_max if cfg.prune_max > 0 else np.zeros_like(value)
            elif control == "noise" and self.shares:
                clips = np.broadcast_to(np.asarray(clip if clip is not None else cfg.controls["clip"], float), (n,))
                parts.append(self._encode_shares(value, clips, self._reference(noise_reference)))
                continue
            else:
                low, high = cfg.clip_range if control == "clip" else cfg.noise_range
                if control == "noise" and cfg.noise_scale == "paced":
                    value = value / self._reference(noise_reference)
                unit = (np.log(value) - np.log(low)) / max(np.log(high) - np.log(low), 1e-12)
            parts.append(np.clip(2.0 * unit - 1.0, -1.0, 1.0))
        return np.concatenate(parts).astype(np.float32)

    def _encode_shares(self, noise: np.ndarray, clip: np.ndarray, pace: np.ndarray) -> np.ndarray:
        cfg = self.config
        total = np.sum(noise**-2.0)
        factor = np.sqrt(np.sum(pace**-2.0) / total)
        low, high = np.log(cfg.noise_range[0]), np.log(cfg.noise_range[1])
        pace_entry = 2.0 * (np.log(factor) - low) / max(high - low, 1e-12) - 1.0
        if len(self.group_names) == 1:
            return np.clip(np.array([pace_entry]), -1.0, 1.0)
        logits = np.log((noise**-2.0 / total) / (clip**2 / np.sum(clip**2))) / np.log(cfg.share_range)
        # shares are invariant to a common shift of the entries: centre them on their mid-range, which
        # keeps every entry in [-1, 1] whenever any shift can
        return np.clip(np.concatenate([[pace_entry], logits - (logits.max() + logits.min()) / 2]), -1.0, 1.0)

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
