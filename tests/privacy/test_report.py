import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp_gym.privacy import PrivacyBudget, PrivacyReport, compose, compose_basic

DELTA = 1e-5


@functools.cache
def episode(kind: str, epsilon: float = 3.0) -> PrivacyReport:
    budget = PrivacyBudget(epsilon, DELTA, 0.05, 40, 1, adaptive=kind == "adaptive")
    budget.record(budget.calibrated_noise_multiplier, 40)
    report = budget.report()
    if kind == "opaque":  # only its (epsilon, delta) is known
        report = PrivacyReport(epsilon=epsilon, delta=DELTA, epsilon_budget=epsilon, epsilon_spent=epsilon,
                               accounting="budget", adaptive=False, updates=40)
    return report


@pytest.mark.parametrize("kinds", [["opaque"] * 5, ["fixed"] * 5, ["adaptive"] * 5, ["fixed", "adaptive", "opaque"],
                                   ["adaptive", "fixed", "fixed"]])
def test_a_composition_never_reports_less_than_its_costliest_part_nor_more_than_basic(kinds):
    reports = [episode(kind) for kind in kinds]
    composed = compose(reports, "test")
    assert max(r.epsilon for r in reports) <= composed.epsilon <= compose_basic(reports, "test").epsilon + 1e-9
    assert composed.private_episodes == len(kinds)


def test_opaque_reports_compose_by_their_epsilons():
    assert compose([episode("opaque")] * 50, "test").epsilon == pytest.approx(150.0)


@settings(max_examples=10, deadline=None)
@given(first=st.lists(st.sampled_from(["fixed", "adaptive", "opaque"]), min_size=1, max_size=3),
       second=st.lists(st.sampled_from(["fixed", "adaptive", "opaque"]), min_size=1, max_size=3))
def test_a_composition_composes_again_without_losing_anything(first, second):
    prior = compose([episode(kind) for kind in first], "prior")
    deployments = [episode(kind) for kind in second]
    again = compose([prior, *deployments], "end to end")
    assert again.epsilon >= max(prior.epsilon, *(d.epsilon for d in deployments)) - 1e-9
    assert again.private_episodes == len(first) + len(second)


def test_public_reports_cost_nothing():
    nothing = PrivacyReport.nothing(DELTA, "public")
    assert compose([nothing, nothing], "x").epsilon == 0.0
    assert compose([nothing, episode("fixed")], "x").epsilon == episode("fixed").epsilon
