import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis import rdp as opacus_rdp

from dp_gym.privacy import PrivacyBudget, PrivacyLedger, ReleasedStatistics
from dp_gym.privacy.rdp import DEFAULT_ORDERS, epsilon_at_order, rdp_budget_at_order

DELTA = 1e-5


def independent_epsilon_at(order: float, history, delta: float = DELTA) -> float:
    """Recompute the filter's epsilon from a history with Opacus alone (no dp-gym code)."""
    total = sum(opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=[order])[0]
                for z, q, steps in history)
    with warnings.catch_warnings():  # one order is both the smallest and the largest: Opacus warns
        warnings.simplefilter("ignore")
        epsilon, _ = opacus_rdp.get_privacy_spent(orders=[order], rdp=[total], delta=delta)
    return float(epsilon)


@pytest.mark.parametrize("epsilon, order", [(0.5, 30.0), (3.0, 5.2), (8.0, 2.5)])
def test_rdp_budget_inverts_the_conversion(epsilon, order):
    assert epsilon_at_order(rdp_budget_at_order(epsilon, order, DELTA), order, DELTA) == pytest.approx(epsilon)


def test_the_filter_order_is_the_calibrated_plans_best_order_and_the_plan_spends_the_budget():
    budget = PrivacyBudget(3.0, DELTA, 0.05, 40, 1)
    plan = [(budget.calibrated_noise_multiplier, 0.05, 40)]
    per_order = [independent_epsilon_at(order, plan) for order in DEFAULT_ORDERS]
    assert budget.filter_order == DEFAULT_ORDERS[int(np.argmin(per_order))] == 5.2
    for _ in range(10):
        fit = budget.fit(budget.calibrated_sigmas(), 4)
        assert fit.feasible and not fit.projected
        budget.record(fit.noise_multiplier, 4)
    assert 2.99 <= budget.epsilon_spent() <= 3.0
    assert budget.epsilon_guarantee() == 3.0 and budget.rule == "rdp-filter@alpha=5.2"


def test_the_issues_history_that_min_over_orders_accepts_is_refused_at_the_pinned_order():
    """[(3.906, 0.05, 24), (0.812, 0.05, 4)]: the minimum over orders (at 4.6) says 2.999 <= 3, so a
    'continue while some order is within budget' rule runs it; at the pinned order 5.2 it is 3.55."""
    history = [(3.906, 0.05, 24), (0.812, 0.05, 4)]
    ledger = PrivacyLedger(DELTA)
    for entry in history:
        ledger.record(*entry)
    assert ledger.epsilon() <= 3.0
    assert independent_epsilon_at(5.2, history) > 3.5

    budget = PrivacyBudget(3.0, DELTA, 0.05, 40, 1)
    budget.record(3.906, 24)
    assert not budget.fits(0.812, 4)
    fit = budget.fit([0.812], 4)
    assert fit.projected and fit.noise_multiplier > 0.812
    budget.record(fit.noise_multiplier, 4)
    assert independent_epsilon_at(5.2, budget.ledger.history) <= 3.0
    with pytest.raises(RuntimeError, match="exceed the budget"):
        budget.record(0.812, 4)


@settings(max_examples=25, deadline=None)
@given(epsilon=st.sampled_from([0.5, 1.0, 3.0, 8.0]), sample_rate=st.sampled_from([0.01, 0.05, 0.2]),
       intervals=st.lists(st.tuples(st.floats(0.05, 20.0), st.integers(1, 8)), min_size=1, max_size=30),
       project=st.booleans())
def test_a_random_adaptive_policy_never_ends_above_the_budget(epsilon, sample_rate, intervals, project):
    budget = PrivacyBudget(epsilon, DELTA, sample_rate, 60, 3, ReleasedStatistics(50.0, 3, 50.0))
    for sigma, updates in intervals:
        updates = min(updates, 60 - budget.updates)
        if updates <= 0:
            break
        fit = budget.fit([sigma, 2 * sigma, sigma / 2], updates, project=project)
        if not fit.feasible:
            continue
        assert np.all(fit.sigmas >= np.array([sigma, 2 * sigma, sigma / 2]) * (1 - 1e-12))
        budget.record(fit.noise_multiplier, updates)
        assert budget.epsilon_spent() <= epsilon
    # under the filter's own rule, and recomputed independently from the history
    independent = independent_epsilon_at(budget.filter_order, budget.ledger.history) if budget.updates else 0.0
    assert independent <= epsilon + 1e-9
    assert budget.epsilon_spent() == pytest.approx(min(independent, epsilon), rel=1e-9, abs=1e-12)
    assert budget.epsilon_guarantee() == (epsilon if budget.updates else 0.0)


history_entries = st.tuples(st.floats(0.6, 5.0), st.integers(1, 30))


@settings(max_examples=8, deadline=None)
@given(history=st.lists(history_entries, max_size=4), epsilon=st.floats(0.5, 10.0), updates=st.integers(1, 20),
       adaptive=st.booleans())
def test_the_smallest_fitting_noise_fits_and_is_the_smallest(history, epsilon, updates, adaptive):
    budget = PrivacyBudget(epsilon, DELTA, 0.05, 200, 1, adaptive=adaptive)
    for z, steps in history:
        if budget.fits(z, steps):
            budget.record(z, steps)
    z = budget.smallest_noise_multiplier(updates)
    if z is None:
        assert not budget.fits(1e4, updates)
        return
    assert budget.fits(z, updates)
    if z > 1e-3:
        assert not budget.fits(z / 1.01, updates)


def test_pace_starts_at_the_calibration_and_rises_after_overspending():
    budget = PrivacyBudget(3.0, DELTA, 0.05, 40, 2)
    np.testing.assert_array_equal(budget.pace(40), budget.calibrated_sigmas())
    budget.record(budget.composed_noise_multiplier(0.9 * budget.calibrated_sigmas()), 10)
    assert np.all(budget.pace(30) > budget.calibrated_sigmas())
    budget.record(budget.composed_noise_multiplier(budget.pace(30)), 30)  # the pace spends exactly what is left
    assert budget.epsilon_spent() == pytest.approx(3.0, abs=2e-3)


def test_fixed_noise_reports_the_tighter_of_rdp_and_prv():
    budget = PrivacyBudget(3.0, DELTA, 0.05, 200, 1, adaptive=False)
    budget.record(budget.calibrated_noise_multiplier, 200)
    rdp = budget.ledger.epsilon()
    assert budget.rule == "rdp" and budget.filter_order is None
    assert budget.epsilon_guarantee() < rdp <= 3.0  # PRV is tighter here, and valid for a fixed schedule


def test_prv_with_adaptive_noise_is_refused():
    with pytest.raises(ValueError, match="no known privacy filter"):
        PrivacyBudget(3.0, DELTA, 0.05, 200, 1, accountant="prv", adaptive=True)
    assert PrivacyBudget(3.0, DELTA, 0.05, 200, 1, accountant="prv", adaptive=False).rule == "min(rdp, prv)"


def test_a_checkpointed_budget_restores_and_an_edited_one_is_refused():
    budget = PrivacyBudget(3.0, DELTA, 0.05, 40, 1)
    budget.record(1.5, 8)
    state = budget.state_dict()
    restored = PrivacyBudget(3.0, DELTA, 0.05, 40, 1)
    restored.load_state_dict(state, updates=8)
    assert restored.ledger.history == budget.ledger.history and restored.epsilon_spent() == budget.epsilon_spent()
    with pytest.raises(ValueError, match="budget.history accounts 0 update"):
        PrivacyBudget(3.0, DELTA, 0.05, 40, 1).load_state_dict({**state, "history": []}, updates=8)
    with pytest.raises(ValueError, match="budget.delta"):
        PrivacyBudget(3.0, DELTA, 0.05, 40, 1).load_state_dict({**state, "delta": 1e-3}, updates=8)
    with pytest.raises(ValueError, match="budget.filter_order"):
        PrivacyBudget(3.0, DELTA, 0.05, 200, 1).load_state_dict(state, updates=8)
    with pytest.raises(ValueError, match="spends more than epsilon"):
        PrivacyBudget(3.0, DELTA, 0.05, 40, 1).load_state_dict({**state, "history": [[0.3, 0.05, 8]]}, updates=8)


@pytest.mark.parametrize("bad, message", [
    ({"epsilon": math.inf}, "epsilon must be a finite number"),
    ({"delta": 1.0}, "delta must be in"),
    ({"sample_rate": 0.0}, "sample_rate must be in"),
    ({"max_updates": 0}, "max_updates must be an integer"),
    ({"n_groups": 0}, "n_groups must be"),
    ({"statistics": ReleasedStatistics(0.1, 1, 0.1)}, "statistics alone"),
])
def test_bad_budget_arguments_are_named(bad, message):
    arguments = {"epsilon": 3.0, "delta": DELTA, "sample_rate": 0.05, "max_updates": 40, "n_groups": 1, **bad}
    with pytest.raises(ValueError, match=message):
        PrivacyBudget(**arguments)


def test_projecting_fixed_noise_under_prv_starts_from_the_asked_noise():
    budget = PrivacyBudget(3.0, DELTA, 0.05, 40, 1, accountant="prv", adaptive=False)
    fit = budget.fit([0.5], 40)  # far too little noise: projected upward, never searched from z = 1e-3
    assert fit.projected and fit.feasible and fit.noise_multiplier > 0.5
    assert budget.ledger.epsilon_if(fit.noise_multiplier, 0.05, 40) <= 3.0


def test_a_fixed_noise_run_that_stopped_early_is_accounted_by_its_planned_schedule():
    budget = PrivacyBudget(3.0, DELTA, 0.05, 40, 1, adaptive=False)
    budget.record(budget.calibrated_noise_multiplier, 10)  # it stopped (say, a NaN) after 10 of 40 updates
    realized = budget.ledger.epsilon()
    assert realized < budget.epsilon_guarantee() <= 3.0
    report = budget.report()
    assert sum(steps for *_, steps in report.history) == 40 and report.updates == 10


def test_the_share_of_the_budget_spent_grows_with_the_updates_from_zero():
    budget = PrivacyBudget(3.0, DELTA, 0.05, 200, 1)
    budget.record(budget.calibrated_noise_multiplier, 1)
    assert budget.fraction_spent() == pytest.approx(1 / 200, rel=0.05)
    assert budget.epsilon_spent() > 1.0  # the converted epsilon starts at a large offset: not a progress measure
