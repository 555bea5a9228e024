"""``PrivacyReport``: what a run (or a set of runs) is proven to spend, as written into results."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: the scope of a report made from one run's budget
SCOPE_ONE_EPISODE = "this episode only"


@dataclass(frozen=True)
class PrivacyReport:
    """The privacy of a released result.

    Attributes:
        epsilon: the proven epsilon at ``delta`` of everything in scope (never below what the
            accounting rule proves; see :class:`dp_gym.privacy.PrivacyBudget`).
        delta: the delta of that guarantee.
        epsilon_budget: the budget the run was held to (None for a composition of runs).
        epsilon_spent: progress measure: what the updates spent under the rule (for an adaptive
            run this is not the guarantee; ``epsilon`` is).
        accounting: the rule, e.g. ``rdp-filter@alpha=5.2`` or ``min(rdp, prv)``.
        adaptive: whether the noise was chosen from earlier releases.
        updates: DP updates covered.
        sample_rate: Poisson rate of the updates (None for a mix).
        privacy_valid: False when anything in scope broke the DP contract (oracle observations, a
            deliberately broken configuration).
        epsilon_scope: what ``epsilon`` covers, in words.
        private_episodes: how many episodes touched the private data within that scope.
        history: the accountant's run-length history ``[z, q, steps]``: public (chosen noise).
        filter_order, filter_rdp: for an adaptive run, the Rényi filter's order and budget: the
            run is ``(filter_order, filter_rdp)``-RDP (what :func:`compose` adds up).
    """

    epsilon: float
    delta: float
    epsilon_budget: float | None
    epsilon_spent: float
    accounting: str
    adaptive: bool
    updates: int
    sample_rate: float | None = None
    privacy_valid: bool = True
    epsilon_scope: str = SCOPE_ONE_EPISODE
    private_episodes: int = 1
    history: list[list[float]] = field(default_factory=list)
    filter_order: float | None = None
    filter_rdp: float | None = None

    @classmethod
    def nothing(cls, delta: float, scope: str) -> PrivacyReport:
        """The report of work that touched no private data (public proxies, untuned defaults)."""
        return cls(epsilon=0.0, delta=delta, epsilon_budget=None, epsilon_spent=0.0, accounting="none (no private data)",
                   adaptive=False, updates=0, epsilon_scope=scope, private_episodes=0)

    def with_scope(self, scope: str, private_episodes: int | None = None) -> PrivacyReport:
        return replace(self, epsilon_scope=scope,
                       private_episodes=self.private_episodes if private_episodes is None else private_episodes)

    def invalidated(self) -> PrivacyReport:
        """The same report, marked ``privacy_valid: false``."""
        return replace(self, privacy_valid=False)

    def to_dict(self, history: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not history:
            data.pop("history")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyReport:
        return cls(**data)


def _kind(report: PrivacyReport) -> str:
    """How a report can be composed: ``"history"`` (fixed noise, its history accounts every update),
    ``"filter"`` (a Rényi bound at one order), or ``"opaque"`` (only its (epsilon, delta))."""
    if report.filter_order is not None and report.filter_rdp is not None:
        return "filter"
    if not report.adaptive and report.history and sum(int(entry[2]) for entry in report.history) == report.updates:
        return "history"
    return "opaque"


def compose(reports: list[PrivacyReport], scope: str) -> PrivacyReport:
    """The privacy of several runs on the same private data, released together.

    Valid when the *number* of runs was fixed before the first one ran (a grid, a fixed number of
    episodes); each run may be chosen from the earlier runs' results. Runs on public data
    (``private_episodes == 0``) spend nothing and are left out. Two bounds, the smaller reported:

    * Rényi composition (RDP composes additively under adaptive composition, Mironov 2017,
      Proposition 1): when every run's report is a fixed-noise history that accounts all its updates,
      the merged history over all orders; when the others are such histories and every Rényi-bounded
      run (a filter, or an earlier composition at one order) shares one order ``alpha``, the sum of
      their bounds at ``alpha``; converted at ``delta`` as in :mod:`dp_gym.privacy.rdp`;
    * basic composition: epsilons and deltas add (Dwork et al. 2006), valid for any mix, and the
      only one used when a report carries neither a complete history nor a Rényi bound.

    The result can be composed again (it keeps the merged history, or the bound at ``alpha``).

    Reports of different deltas (an earlier basic composition, say) compose by basic composition.

    Raises:
        ValueError: for an empty list.
    """
    from dp_gym.privacy.ledger import PrivacyLedger
    from dp_gym.privacy.rdp import epsilon_at_order, sampled_gaussian_rdp

    if not reports:
        raise ValueError("compose needs at least one report")
    private = [r for r in reports if r.private_episodes > 0]
    if not private:
        nothing = PrivacyReport.nothing(reports[0].delta, scope)
        return nothing if all(r.privacy_valid for r in reports) else nothing.invalidated()
    reports = [r for r in private if r.updates > 0 or r.epsilon > 0]  # runs on public data spend nothing
    basic = compose_basic(private, scope)
    if len({r.delta for r in private}) != 1:  # the Rényi bounds convert at one delta
        return basic
    delta = private[0].delta
    kinds = [_kind(r) for r in reports]
    orders = {r.filter_order for r, kind in zip(reports, kinds, strict=True) if kind == "filter"}
    history: list[list[float]] = []
    candidate = rule = order = rdp_total = None
    if reports and "opaque" not in kinds and not orders:
        ledger = PrivacyLedger(delta)
        for report in reports:
            for noise, rate, steps in report.history:
                ledger.record(noise, rate, int(steps))
        candidate, rule, history = ledger.epsilon(), "rdp composition", [list(e) for e in ledger.history]
    elif reports and "opaque" not in kinds and len(orders) == 1:
        (order,) = orders
        rdp_total = sum(r.filter_rdp for r, kind in zip(reports, kinds, strict=True) if kind == "filter")
        rdp_total += sum(float(sampled_gaussian_rdp(noise, rate, [order])[0]) * steps
                         for r, kind in zip(reports, kinds, strict=True) if kind == "history"
                         for noise, rate, steps in r.history)
        candidate, rule = epsilon_at_order(rdp_total, order, delta), f"rdp composition at alpha={order:g}"
    if candidate is None or candidate >= basic.epsilon:
        return basic
    return PrivacyReport(
        epsilon=float(candidate), delta=delta, epsilon_budget=None, epsilon_spent=basic.epsilon_spent,
        accounting=rule, adaptive=order is not None, updates=basic.updates, sample_rate=basic.sample_rate,
        privacy_valid=basic.privacy_valid, epsilon_scope=scope, private_episodes=basic.private_episodes,
        history=history, filter_order=order, filter_rdp=rdp_total)


def compose_basic(reports: list[PrivacyReport], scope: str) -> PrivacyReport:
    """Basic composition of several released runs on the same private data: epsilons and deltas add
    (Dwork et al. 2006; valid for any adaptively chosen sequence of DP runs).

    Raises:
        ValueError: for an empty list.
    """
    if not reports:
        raise ValueError("compose_basic needs at least one report")
    epsilon = math.fsum(r.epsilon for r in reports)
    return PrivacyReport(
        epsilon=epsilon, delta=math.fsum(r.delta for r in reports), epsilon_budget=None,
        epsilon_spent=math.fsum(r.epsilon_spent for r in reports),
        accounting="basic composition of " + ", ".join(sorted({r.accounting for r in reports})),
        adaptive=any(r.adaptive for r in reports), updates=sum(r.updates for r in reports),
        sample_rate=reports[0].sample_rate if len({r.sample_rate for r in reports}) == 1 else None,
        privacy_valid=all(r.privacy_valid for r in reports), epsilon_scope=scope,
        private_episodes=sum(r.private_episodes for r in reports))
