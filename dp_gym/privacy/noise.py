"""Noise multipliers of composed Gaussian releases on one Poisson sample.

Every release dp-gym makes in one DP update is a Gaussian mechanism applied to the *same*
Poisson-sampled batch. Rescaling each release to unit noise turns the whole update into one
sampled Gaussian mechanism whose noise multiplier is given by the functions below; the
accountant then sees exactly one ``(z, q)`` entry per update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _check_positive_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def effective_noise_multiplier(sigmas: Sequence[float]) -> float:
    r"""Noise multiplier of G per-group Gaussian releases of clipped gradient sums.

    Group g releases ``S_g = sum_i clip(g_{i,g}, C_g) + N(0, (sigma_g C_g)^2 I)``. Adding or
    removing one example changes ``S_g`` by at most ``C_g`` in L2. Rescale group g by
    ``1 / (sigma_g C_g)``: its sensitivity becomes ``1 / sigma_g`` and its noise ``N(0, I)``.
    The concatenation of the rescaled groups is then one Gaussian mechanism with unit noise and
    L2 sensitivity ``sqrt(sum_g sigma_g^{-2})``, i.e. noise multiplier

    .. math:: \sigma_{\mathrm{eff}} = \Big(\sum_g \sigma_g^{-2}\Big)^{-1/2}.

    Equal noise ``sigma`` over G groups gives ``sigma / sqrt(G)``: per-group clipping is not free.

    Args:
        sigmas: per-group noise multipliers ``sigma_g``.

    Returns:
        The effective noise multiplier of the whole release.

    Raises:
        ValueError: if ``sigmas`` is empty, or an entry is <= 0, NaN or inf (the entry is named).
    """
    if len(sigmas) == 0:
        raise ValueError("sigmas must hold at least one noise multiplier, got an empty sequence")
    inverse_square_sum = 0.0
    for index, sigma in enumerate(sigmas):
        sigma = _check_positive_finite(f"sigmas[{index}]", sigma)
        inverse_square_sum += sigma**-2
    return inverse_square_sum**-0.5


@dataclass(frozen=True)
class ReleasedStatistics:
    r"""The privatized statistics an update releases next to its gradient sums, on the same sample.

    * ``count_sigma`` (``sigma_b``): noise std of each of the ``groups_counted`` unclipped counts
      ``b_g = sum_i 1[||g_{i,g}|| <= C_g] + N(0, sigma_b^2)``; one example changes each count by at
      most 1, so the L2 sensitivity is ``sqrt(G)`` and the rescaled release adds ``G / sigma_b^2``;
    * ``loss_sigma`` (``sigma_l``): noise multiplier of the clipped loss sum
      ``sum_i min(max(l_i, 0), L) + N(0, (sigma_l L)^2)``; sensitivity ``L``, so it adds
      ``1 / sigma_l^2``.

    ``None`` for a sigma means that statistic is not released.

    Raises:
        ValueError: for a non-positive or non-finite sigma, a negative count, or counts without
            a count noise.
    """

    count_sigma: float | None = None
    groups_counted: int = 0
    loss_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.groups_counted < 0:
            raise ValueError(f"groups_counted must be >= 0, got {self.groups_counted}")
        if self.groups_counted > 0 and self.count_sigma is None:
            raise ValueError("count_sigma is required when groups_counted > 0")
        if self.count_sigma is not None:
            _check_positive_finite("count_sigma", self.count_sigma)
        if self.loss_sigma is not None:
            _check_positive_finite("loss_sigma", self.loss_sigma)

    def inverse_square(self) -> float:
        """``G / sigma_b^2 + 1 / sigma_l^2``: the statistics' share of ``z^{-2}``."""
        total = 0.0
        if self.groups_counted > 0:
            total += self.groups_counted / float(self.count_sigma) ** 2
        if self.loss_sigma is not None:
            total += 1.0 / float(self.loss_sigma) ** 2
        return total


NO_STATISTICS = ReleasedStatistics()


def composed_noise_multiplier(group_sigmas: Sequence[float],
                              statistics: ReleasedStatistics = NO_STATISTICS) -> float:
    r"""Noise multiplier of one DP update that also releases privatized statistics.

    All releases share the Poisson sample, so they compose into one sampled Gaussian mechanism
    (rescale each to unit noise and concatenate) with

    .. math:: z = \Big(\sum_g \sigma_g^{-2} + G/\sigma_b^2 + 1/\sigma_l^2\Big)^{-1/2}

    (:class:`ReleasedStatistics` gives the last two terms). Accounting each release as its own
    sampled mechanism would be wrong (the sample is shared) and is never done.

    Args:
        group_sigmas: per-group gradient noise multipliers ``sigma_g``.
        statistics: the privatized statistics released on the same sample.

    Returns:
        The noise multiplier ``z`` to give the accountant for this update.

    Raises:
        ValueError: for a non-positive or non-finite group sigma (the entry is named).
    """
    inverse_square_sum = effective_noise_multiplier(group_sigmas) ** -2 + statistics.inverse_square()
    return inverse_square_sum**-0.5


def scale_sigmas_to(group_sigmas: Sequence[float], target: float,
                    statistics: ReleasedStatistics = NO_STATISTICS) -> list[float]:
    r"""Scale the per-group sigmas by one factor so the composed multiplier is at least ``target``.

    Only the gradient noises are raised; the statistics' noises are fixed by the configuration.
    With ``s = sum_g sigma_g^{-2}`` and ``r`` the statistics' share we need
    ``s / k^2 + r <= target^{-2}``, i.e. ``k = sqrt(s / (target^{-2} - r))``.

    Returns:
        The scaled sigmas (unchanged when they already reach ``target``).

    Raises:
        ValueError: when the statistics alone already spend more than ``target`` allows.
    """
    grad_part = effective_noise_multiplier(group_sigmas) ** -2
    room = target**-2 - statistics.inverse_square()
    if room <= 0:
        raise ValueError(
            f"the privatized statistics alone need a noise multiplier above {target:.4g}; "
            "raise count_noise / loss_noise"
        )
    # (1 + 1e-9): rounding must never leave the composed multiplier a hair below the target.
    factor = max(1.0, math.sqrt(grad_part / room) * (1.0 + 1e-9))
    return [float(sigma) * factor for sigma in group_sigmas]


def equal_group_sigmas(target: float, n_groups: int,
                       statistics: ReleasedStatistics = NO_STATISTICS) -> list[float]:
    r"""The common per-group sigma ``s`` whose composed multiplier is ``target``.

    Solves ``G / s^2 + r = target^{-2}`` (``r``: the statistics' share), i.e.
    ``s = sqrt(G / (target^{-2} - r))``: the plain DP-SGD calibration when the update also
    releases statistics.

    Raises:
        ValueError: when the statistics alone already spend more than ``target`` allows.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    return scale_sigmas_to([1e-9] * n_groups, target, statistics)
