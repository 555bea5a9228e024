r"""Rényi DP of the Poisson-subsampled Gaussian mechanism, and its conversion to (epsilon, delta).

The RDP of one update is Opacus' (Mironov, Talwar & Zhang 2019), at the orders Opacus uses by
default. The conversion is Opacus' ``get_privacy_spent`` (Balle et al. 2020, Theorem 21):

.. math:: \epsilon(\alpha) = R(\alpha) - \frac{\log\delta + \log\alpha}{\alpha - 1}
          + \log\frac{\alpha - 1}{\alpha}

for a mechanism that is ``(alpha, R(alpha))``-RDP. :func:`rdp_budget_at_order` inverts it: the
largest ``R`` whose conversion at ``alpha`` is ``epsilon``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

#: Opacus' default RDP orders (1.1 .. 10.9 in steps of 0.1, then 12 .. 63).
DEFAULT_ORDERS: tuple[float, ...] = tuple(float(order) for order in RDPAccountant.DEFAULT_ALPHAS)


def sampled_gaussian_rdp(noise_multiplier: float, sample_rate: float,
                         orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP of one Poisson-sampled Gaussian update at each order (inf without noise, 0 without cost)."""
    orders = np.asarray(orders, dtype=float)
    if sample_rate == 0.0 or math.isinf(noise_multiplier):
        return np.zeros_like(orders)
    if noise_multiplier == 0.0:
        return np.full_like(orders, np.inf)
    return np.asarray(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                               orders=orders), dtype=float)


def epsilon_at_orders(rdp: np.ndarray, orders: Sequence[float], delta: float) -> np.ndarray:
    """The (epsilon, delta) conversion of ``(alpha, rdp[alpha])``-RDP at every order (no minimum taken)."""
    orders = np.asarray(orders, dtype=float)
    rdp = np.asarray(rdp, dtype=float)
    return rdp - (math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)


def epsilon_at_order(rdp: float, order: float, delta: float) -> float:
    """Opacus' conversion at one order; 0 for a mechanism that has released nothing (``rdp == 0``)."""
    if rdp == 0.0:
        return 0.0
    if math.isinf(rdp):
        return math.inf
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=[order], rdp=[rdp], delta=delta)
    return float(epsilon)


def rdp_budget_at_order(epsilon: float, order: float, delta: float) -> float:
    """The largest RDP ``R`` at ``order`` whose conversion is at most ``epsilon`` (the inverse of
    :func:`epsilon_at_order`): ``R = epsilon + (log delta + log alpha)/(alpha - 1) - log((alpha-1)/alpha)``.

    Raises:
        ValueError: when no positive RDP budget converts to ``epsilon`` at this order.
    """
    budget = epsilon + (math.log(delta) + math.log(order)) / (order - 1) - math.log((order - 1) / order)
    if budget <= 0:
        raise ValueError(f"epsilon {epsilon:g} at delta {delta:g} leaves no RDP budget at order {order:g}")
    return budget
