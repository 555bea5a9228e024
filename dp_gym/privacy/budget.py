r"""The privacy budget of one run: the one owner of the noise that an interval may use.

A :class:`PrivacyBudget` composes the per-update noise multiplier, paces the remaining budget,
fits an asked-for interval into it (raising the noise when it would overspend), records what ran,
and decides when the run must stop. Nothing else in dp-gym composes or calibrates noise.

**Two regimes.**

*Noise fixed in advance* (``adaptive=False``: the noise comes from the configuration, never from
what the run has released). The privacy parameters of every update are then known before the run,
so standard composition applies: the run is ``(epsilon, delta)``-DP for the epsilon of the realized
history, taken from Opacus' RDP accountant (minimum over orders) or PRV accountant, and the report
gives the tighter of the two.

*Adaptive noise* (``adaptive=True``: a controller picks the noise after seeing earlier releases).
This is fully adaptive composition, where neither the min-over-orders RDP bound nor PRV is known
to be valid as a stopping rule. dp-gym uses a **Rényi filter at one order fixed before the run**
(Feldman & Zrnic, "Individual Privacy Accounting via a Rényi Filter", NeurIPS 2021, Theorem 3.1
in arXiv:2008.11193v4): if every update ``t`` is ``(alpha, rho_t)``-RDP with ``rho_t`` chosen from the
past releases, and the run halts before ``sum_t rho_t`` would exceed a budget ``B`` fixed in advance,
then the whole interaction is ``(alpha, B)``-RDP. Any RDP conversion then applies; dp-gym uses
Opacus' (Balle et al. 2020, Theorem 21), so the run is ``(epsilon, delta)``-DP with

.. math:: B = \epsilon + \frac{\log\delta + \log\alpha}{\alpha - 1} - \log\frac{\alpha - 1}{\alpha}.

The order ``alpha*`` is pinned when the budget is made: the order at which plain DP-SGD, calibrated
to spend the budget in ``max_updates`` updates, has its smallest epsilon. So the calibrated plan
loses nothing to the pinning; a controller that departs from it pays the (small) price of an order
that is not optimal for its own schedule. A multi-order rule ("go on while some order is within
budget") needs a union bound over the orders (delta times their number): not used.

The guarantee of an adaptive run is the filter's, ``epsilon`` itself, whatever the run spent: the
spent amount depends on the data through the controller's choices, so reporting it would be an
odometer claim no theorem here covers. ``epsilon_spent`` is shown for progress only.

Every update releases one Poisson-sampled Gaussian mechanism with the composed multiplier
``z = (sum_g sigma_g^-2 + G/sigma_b^2 + 1/sigma_l^2)^(-1/2)``
(:func:`dp_gym.privacy.composed_noise_multiplier`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dp_gym.privacy.calibration import MAX_NOISE_MULTIPLIER, BudgetExhaustedError, calibrate_noise
from dp_gym.privacy.ledger import ACCOUNTANTS, PrivacyLedger
from dp_gym.privacy.noise import (
    NO_STATISTICS,
    ReleasedStatistics,
    composed_noise_multiplier,
    equal_group_sigmas,
    scale_sigmas_to,
)
from dp_gym.privacy.rdp import (
    DEFAULT_ORDERS,
    epsilon_at_order,
    epsilon_at_orders,
    rdp_budget_at_order,
    sampled_gaussian_rdp,
)
from dp_gym.privacy.report import PrivacyReport

#: the smallest noise multiplier the budget's searches consider
MIN_NOISE_MULTIPLIER = 1e-3


@functools.lru_cache(maxsize=256)
def best_order(noise_multiplier: float, sample_rate: float, updates: int, delta: float) -> float:
    """The RDP order at which ``updates`` homogeneous updates ``(z, q)`` have their smallest epsilon."""
    plan = sampled_gaussian_rdp(noise_multiplier, sample_rate) * updates
    return DEFAULT_ORDERS[int(np.argmin(epsilon_at_orders(plan, DEFAULT_ORDERS, delta)))]


@dataclass(frozen=True)
class Fit:
    """What the budget allows for an asked-for interval.

    ``sigmas``: the per-group noise to apply (the asked noise, or all of it raised by one factor);
    ``noise_multiplier``: their composed ``z``; ``projected``: the noise was raised to fit;
    ``feasible``: False when the interval cannot run at all (then nothing may run).
    """

    sigmas: np.ndarray
    noise_multiplier: float
    projected: bool
    feasible: bool


class PrivacyBudget:
    """Epsilon, delta, sample rate and the released statistics of a run, with its ledger and filter.

    Args:
        epsilon: the budget's epsilon, finite and > 0.
        delta: the budget's delta, in (0, 1).
        sample_rate: Poisson rate ``q`` of every update.
        max_updates: the most updates the run may make (plans the filter order and the calibration).
        n_groups: parameter groups, each with its own noise.
        statistics: the privatized statistics released with every update.
        accountant: ``"rdp"`` or ``"prv"`` (``"prv"`` only with ``adaptive=False``).
        adaptive: whether the noise may depend on earlier releases (see the module docstring).

    Raises:
        ValueError: naming the argument, for any invalid value, for ``prv`` with adaptive noise,
            or when the statistics alone would spend more than the calibrated plan allows.
    """

    def __init__(self, epsilon: float, delta: float, sample_rate: float, max_updates: int, n_groups: int,
                 statistics: ReleasedStatistics = NO_STATISTICS, accountant: str = "rdp", adaptive: bool = True):
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
        if not (0 < delta < 1):
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        if not (0 < sample_rate <= 1):
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if int(max_updates) != max_updates or max_updates < 1:
            raise ValueError(f"max_updates must be an integer >= 1, got {max_updates!r}")
        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups!r}")
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {list(ACCOUNTANTS)}, got {accountant!r}")
        if adaptive and accountant != "rdp":
            raise ValueError(f"accountant {accountant!r} has no known privacy filter for noise chosen from earlier "
                             "releases (fully adaptive composition); use accountant 'rdp', or fix the noise in the config")
        self.epsilon, self.delta, self.sample_rate = float(epsilon), float(delta), float(sample_rate)
        self.max_updates, self.n_groups = int(max_updates), int(n_groups)
        self.statistics, self.accountant, self.adaptive = statistics, accountant, bool(adaptive)
        self.ledger = PrivacyLedger(self.delta, accountant)
        #: plain DP-SGD's composed multiplier: spends the budget in exactly max_updates updates
        self.calibrated_noise_multiplier = calibrate_noise(self.epsilon, self.delta, self.sample_rate,
                                                           self.max_updates, accountant)
        self._calibrated_sigmas = self.equal_sigmas(self.calibrated_noise_multiplier)  # checks the statistics
        self.filter_order: float | None = None
        self.filter_budget: float | None = None
        self._filter_spent = 0.0  # sum over the recorded updates of their RDP at the filter order
        self._step_rdp_cache: dict[float, float] = {}
        if self.adaptive:
            self.filter_order = best_order(self.calibrated_noise_multiplier, self.sample_rate, self.max_updates,
                                           self.delta)
            self.filter_budget = rdp_budget_at_order(self.epsilon, self.filter_order, self.delta)

    # ------------------------------------------------------------------ noise
    def composed_noise_multiplier(self, group_sigmas: Sequence[float]) -> float:
        """``z`` of one update with these per-group sigmas and the budget's statistics (0: no noise)."""
        sigmas = np.asarray(group_sigmas, dtype=float)
        if sigmas.shape != (self.n_groups,):
            raise ValueError(f"expected {self.n_groups} group sigmas, got shape {sigmas.shape}")
        if np.any(sigmas == 0):
            return 0.0
        return composed_noise_multiplier(sigmas.tolist(), self.statistics)

    def equal_sigmas(self, noise_multiplier: float) -> np.ndarray:
        """The equal per-group sigma whose composed multiplier (statistics included) is ``z``."""
        return np.array(equal_group_sigmas(noise_multiplier, self.n_groups, self.statistics))

    def calibrated_sigmas(self) -> np.ndarray:
        """Plain DP-SGD: equal per-group noise that spends the budget in exactly ``max_updates``."""
        return self._calibrated_sigmas.copy()

    def pace(self, remaining_updates: int) -> np.ndarray:
        """Equal per-group noise that spends what is left of the budget evenly over
        ``remaining_updates`` updates (a function of the ledger only: it costs no privacy).
        Before the first update it is exactly :meth:`calibrated_sigmas`.

        Raises:
            BudgetExhaustedError: when even the largest noise cannot pay for those updates.
        """
        if self.ledger.steps == 0 and remaining_updates == self.max_updates:
            return self.calibrated_sigmas()
        z = self.smallest_noise_multiplier(max(int(remaining_updates), 1))
        try:
            if z is not None:
                return self.equal_sigmas(z)
        except ValueError:  # the statistics alone already spend more than z allows
            pass
        raise BudgetExhaustedError(f"no noise up to multiplier {MAX_NOISE_MULTIPLIER:g} pays for {remaining_updates} "
                                   f"more update(s) (spent {self.epsilon_spent():.4g} of {self.epsilon:g})")

    # ------------------------------------------------------------------ the filter
    def fits(self, noise_multiplier: float, updates: int) -> bool:
        """Whether ``updates`` more updates at composed ``z`` stay within the budget under the rule."""
        if updates <= 0:
            return True
        if noise_multiplier == 0.0:
            return False
        if self.adaptive:
            return self._filter_spent + updates * self._filter_step_rdp(noise_multiplier) <= self.filter_budget
        return self.ledger.epsilon_if(noise_multiplier, self.sample_rate, updates) <= self.epsilon

    def smallest_noise_multiplier(self, updates: int, rel_tol: float = 1e-4, above: float = 0.0) -> float | None:
        """The smallest ``z`` (within ``rel_tol``, always on the feasible side) for which ``updates``
        more updates fit; None when even ``MAX_NOISE_MULTIPLIER`` does not fit. ``above``: a ``z``
        known not to fit, where the search starts (PRV's numerics blow up at tiny ``z``)."""
        if not self.fits(MAX_NOISE_MULTIPLIER, updates):
            return None
        low, high = max(MIN_NOISE_MULTIPLIER, above), MAX_NOISE_MULTIPLIER
        if self.fits(low, updates):
            return low
        while high / low > 1.0 + rel_tol:  # invariant: fits(high) and not fits(low); epsilon falls with z
            middle = math.sqrt(low * high)
            if self.fits(middle, updates):
                high = middle
            else:
                low = middle
        return high

    def fit(self, group_sigmas: Sequence[float], updates: int, project: bool = True) -> Fit:
        """Fit ``updates`` updates with the asked per-group noise into the budget.

        When they fit, the asked noise is returned unchanged. Otherwise, with ``project``, every
        group's noise is raised by one common factor to the smallest composed ``z`` that fits;
        without it (or when nothing fits) the interval is infeasible and must not run.
        """
        sigmas = np.asarray(group_sigmas, dtype=float).copy()
        z = self.composed_noise_multiplier(sigmas)
        if self.fits(z, updates):
            return Fit(sigmas, z, projected=False, feasible=True)
        target = self.smallest_noise_multiplier(updates, above=z) if project else None
        if target is None:
            return Fit(sigmas, z, projected=False, feasible=False)
        if z == 0.0:  # no noise asked: start from equal noise
            sigmas = np.ones_like(sigmas)
        try:
            raised = np.array(scale_sigmas_to(sigmas.tolist(), target, self.statistics))
        except ValueError:  # the statistics alone cannot fit: nothing may run
            return Fit(sigmas, z, projected=False, feasible=False)
        return Fit(raised, self.composed_noise_multiplier(raised), projected=True, feasible=True)

    # ------------------------------------------------------------------ recording
    def record(self, noise_multiplier: float, updates: int = 1) -> None:
        """Record ``updates`` updates that ran at composed ``z``.

        Raises:
            RuntimeError: if they do not fit: the budget is never overspent, whatever the caller does.
        """
        if not self.fits(noise_multiplier, updates):
            raise RuntimeError(f"recording {updates} update(s) at noise multiplier {noise_multiplier:.4g} would "
                               f"exceed the budget (epsilon {self.epsilon:g}, rule {self.rule})")
        self.ledger.record(noise_multiplier, self.sample_rate, updates)
        if self.adaptive:
            self._filter_spent += updates * self._filter_step_rdp(noise_multiplier)

    @property
    def updates(self) -> int:
        return self.ledger.steps

    # ------------------------------------------------------------------ reading
    @property
    def rule(self) -> str:
        """The accounting rule, as written into every result."""
        if self.adaptive:
            return f"rdp-filter@alpha={self.filter_order:g}"
        return "rdp" if self.accountant == "rdp" else "min(rdp, prv)"

    def epsilon_spent(self) -> float:
        """Progress: the epsilon of the updates so far (at the filter's order for adaptive runs)."""
        if self.adaptive:
            return min(epsilon_at_order(self._filter_spent, self.filter_order, self.delta), self.epsilon)
        return self.ledger.epsilon()

    def epsilon_guarantee(self) -> float:
        """The epsilon the run is proven to satisfy at ``delta``.

        Adaptive: the filter's ``epsilon`` once anything ran (0 before). Fixed noise: the realized
        history's epsilon, the tighter of RDP and (when it computes) PRV.
        """
        if self.ledger.steps == 0:
            return 0.0
        if self.adaptive:
            return self.epsilon
        history = self.ledger.to_dict()
        missing = self.max_updates - self.ledger.steps
        if missing > 0:
            # a run that stopped early may have stopped because of its data (a NaN): account the
            # planned schedule (the last noise to the end), never more than the budget it kept to
            noise, rate, _ = self.ledger.history[-1]
            history = {**history, "history": history["history"] + [[noise, rate, missing]]}
        candidates = [PrivacyLedger.from_dict({**history, "accountant": "rdp"}).epsilon()]
        try:
            candidates.append(PrivacyLedger.from_dict({**history, "accountant": "prv"}).epsilon())
        except Exception:  # noqa: BLE001 - PRV's numerics can fail at extreme parameters; RDP stays valid
            pass
        return float(min([*candidates, self.epsilon] if missing > 0 else candidates))

    def fraction_spent(self) -> float:
        """The share of the budget spent, in [0, 1]: of the filter's RDP budget for adaptive noise
        (linear in the updates, unlike the converted epsilon, which starts at a large offset), of
        epsilon otherwise."""
        if self.adaptive:
            return min(self._filter_spent / self.filter_budget, 1.0)
        return min(self.ledger.epsilon() / self.epsilon, 1.0)

    def report(self) -> PrivacyReport:
        """The run's privacy, for results files (scope: this one run)."""
        guarantee = self.epsilon_guarantee()
        # with fixed noise, what the updates spent is what the run is proven to satisfy
        spent = self.epsilon_spent() if self.adaptive else guarantee
        return PrivacyReport(
            epsilon=guarantee, delta=self.delta, epsilon_budget=self.epsilon,
            epsilon_spent=spent, accounting=self.rule, adaptive=self.adaptive,
            updates=self.ledger.steps, sample_rate=self.sample_rate, history=self._planned_history(),
            filter_order=self.filter_order, filter_rdp=self.filter_budget)

    def _planned_history(self) -> list[list[float]]:
        """The history, padded to ``max_updates`` with the last noise for a fixed-noise run that
        stopped early (as :meth:`epsilon_guarantee` accounts it); such a report then no longer
        adds up to its updates, so :func:`dp_gym.privacy.compose` only composes its epsilon."""
        history = [list(entry) for entry in self.ledger.history]
        missing = self.max_updates - self.ledger.steps
        if not self.adaptive and history and missing > 0:
            history.append([history[-1][0], history[-1][1], missing])
        return history

    def _filter_step_rdp(self, noise_multiplier: float) -> float:
        """RDP of one update at the filter order (cached: searches ask for the same z repeatedly)."""
        cached = self._step_rdp_cache.get(noise_multiplier)
        if cached is None:
            cached = float(sampled_gaussian_rdp(noise_multiplier, self.sample_rate, [self.filter_order])[0])
            if len(self._step_rdp_cache) > 4096:
                self._step_rdp_cache.clear()
            self._step_rdp_cache[noise_multiplier] = cached
        return cached

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The ledger's history with the settings a restore must match."""
        return {"epsilon": self.epsilon, "delta": self.delta, "sample_rate": self.sample_rate,
                "accountant": self.accountant, "filter_order": self.filter_order,
                "history": [list(entry) for entry in self.ledger.history]}

    def load_state_dict(self, state: dict[str, Any], updates: int) -> None:
        """Restore the ledger, refusing a state that does not belong to this budget.

        Args:
            state: from :meth:`state_dict`.
            updates: the updates the run says it made; the history must account every one of them.

        Raises:
            ValueError: naming the field that does not match (an edited checkpoint cannot reset the
                budget: the history must hold exactly ``updates`` steps at this budget's settings).
        """
        for name in ("epsilon", "delta", "sample_rate", "accountant", "filter_order"):
            if state.get(name) != getattr(self, name):
                raise ValueError(f"checkpoint field budget.{name} is {state.get(name)!r}, but this run's is "
                                 f"{getattr(self, name)!r}")
        ledger, filter_spent = PrivacyLedger(self.delta, self.accountant), 0.0
        for entry in state.get("history", []):
            noise, rate, steps = entry
            if rate != self.sample_rate:
                raise ValueError(f"checkpoint field budget.history has sample rate {rate!r}, but this run's is "
                                 f"{self.sample_rate!r}")
            ledger.record(noise, rate, steps)
            if self.adaptive:
                filter_spent += steps * self._filter_step_rdp(noise)
        if ledger.steps != updates:
            raise ValueError(f"checkpoint field budget.history accounts {ledger.steps} update(s), but the run "
                             f"made {updates}: refusing a ledger that does not cover every update")
        within = filter_spent <= self.filter_budget if self.adaptive else ledger.epsilon() <= self.epsilon
        if not within:
            raise ValueError(f"checkpoint field budget.history spends more than epsilon {self.epsilon:g}")
        self.ledger, self._filter_spent = ledger, filter_spent
