import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp_gym.evaluation import attack_metrics, audit_bound_from_scores, audit_p_value, epsilon_lower_bound
from dp_gym.evaluation.audit import guess_counts


def test_all_correct_guesses_match_the_closed_form_for_pure_dp():
    # delta = 0 and v = r: p(eps) = q^r, so the bound solves q = alpha^(1/r), eps = log(q / (1 - q))
    r, alpha = 40, 0.05
    q = alpha ** (1 / r)
    assert epsilon_lower_bound(1000, r, r, 0.0, alpha) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def test_chance_level_guessing_gives_no_bound():
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 100, 55, 1e-5) == 0.0


def test_delta_only_weakens_the_bound():
    assert epsilon_lower_bound(1000, 100, 95, 1e-3) < epsilon_lower_bound(1000, 100, 95, 0.0)


@settings(max_examples=60, deadline=None)
@given(r=st.integers(1, 200), fraction=st.floats(0, 1), eps=st.floats(0, 5))
def test_p_value_is_a_probability_increasing_in_epsilon(r, fraction, eps):
    v = round(fraction * r)
    low, high = audit_p_value(2 * r, r, v, eps, 1e-5), audit_p_value(2 * r, r, v, eps + 0.5, 1e-5)
    assert 0 <= low <= high + 1e-12 <= 1 + 1e-12


def test_p_value_rejects_impossible_counts():
    with pytest.raises(ValueError, match="v <= r <= m"):
        audit_p_value(10, 5, 6, 1.0, 0.0)


def test_guess_counts_and_a_perfect_score_ordering():
    included = np.array([True, False, True, False, True, False, True, False])
    scores = np.where(included, 1.0, -1.0) + np.linspace(0, 0.1, 8)
    assert guess_counts(scores, included, 2, 2) == (4, 4)
    assert guess_counts(-scores, included, 2, 2) == (4, 0)
    bound, r, v, k = audit_bound_from_scores(np.where(np.arange(400) % 2 == 0, 1.0, -1.0), np.arange(400) % 2 == 0, 1e-5)
    assert v == r == 2 * k and bound > 2.0


def test_random_scores_do_not_bound_epsilon():
    rng = np.random.default_rng(0)
    bound, *_ = audit_bound_from_scores(rng.normal(size=1000), rng.random(1000) < 0.5, 1e-5)
    assert bound < 0.5


def test_attack_metrics_separate_and_chance():
    rng = np.random.default_rng(1)
    auc, tpr = attack_metrics(rng.normal(3, 1, 500), rng.normal(0, 1, 500))
    assert auc > 0.95 and tpr > 0.3
    auc, tpr = attack_metrics(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000))
    assert abs(auc - 0.5) < 0.05 and tpr < 0.05
    with pytest.raises(ValueError, match="at least one member"):
        attack_metrics([], [1.0])
