import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp_gym.privacy import (
    ReleasedStatistics,
    composed_noise_multiplier,
    effective_noise_multiplier,
    equal_group_sigmas,
    scale_sigmas_to,
)

sigmas = st.floats(min_value=0.05, max_value=50.0)


@given(sigma=sigmas, groups=st.integers(1, 64))
def test_equal_noise_over_groups_is_sigma_over_sqrt_groups(sigma, groups):
    assert effective_noise_multiplier([sigma] * groups) == pytest.approx(sigma / math.sqrt(groups), rel=1e-12)


def test_effective_noise_is_dominated_by_the_least_noisy_group():
    assert effective_noise_multiplier([0.5, 100.0, 100.0]) < 0.5
    assert effective_noise_multiplier([0.5, 100.0, 100.0]) == pytest.approx((0.5**-2 + 2 * 100.0**-2) ** -0.5)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_sigma_is_named(bad):
    with pytest.raises(ValueError, match=r"sigmas\[1\]"):
        effective_noise_multiplier([1.0, bad, 1.0])


def test_empty_sigmas_rejected():
    with pytest.raises(ValueError, match="at least one"):
        effective_noise_multiplier([])


def test_composed_multiplier_formula():
    group, count, loss = [1.0, 2.0], 8.0, 5.0
    expected = (1.0 + 0.25 + 2 / 64 + 1 / 25) ** -0.5
    assert composed_noise_multiplier(group, ReleasedStatistics(count, 2, loss)) == pytest.approx(expected, rel=1e-12)
    assert composed_noise_multiplier(group) == pytest.approx(effective_noise_multiplier(group))


def test_statistics_always_lower_the_multiplier():
    base = composed_noise_multiplier([1.0, 1.0])
    assert composed_noise_multiplier([1.0, 1.0], ReleasedStatistics(10.0, 2)) < base
    assert composed_noise_multiplier([1.0, 1.0], ReleasedStatistics(loss_sigma=10.0)) < base


def test_counts_need_a_noise():
    with pytest.raises(ValueError, match="count_sigma"):
        ReleasedStatistics(None, 3)


@given(st.lists(sigmas, min_size=1, max_size=8), st.floats(0.05, 5.0))
def test_scaled_sigmas_reach_the_target(group_sigmas, target):
    scaled = scale_sigmas_to(group_sigmas, target, ReleasedStatistics(20.0, len(group_sigmas), 30.0))
    z = composed_noise_multiplier(scaled, ReleasedStatistics(20.0, len(group_sigmas), 30.0))
    assert z >= target
    ratios = [a / b for a, b in zip(scaled, group_sigmas, strict=True)]
    assert max(ratios) == pytest.approx(min(ratios))  # one common factor keeps the allocation


def test_scaling_fails_when_statistics_alone_overspend():
    with pytest.raises(ValueError, match="statistics alone"):
        scale_sigmas_to([1.0], target=2.0, statistics=ReleasedStatistics(0.5, 4))


@given(target=st.floats(0.1, 10.0), groups=st.integers(1, 12))
def test_equal_group_sigmas_hit_the_target(target, groups):
    sigmas = equal_group_sigmas(target, groups, ReleasedStatistics(50.0, groups, 50.0))
    assert len(set(sigmas)) == 1
    z = composed_noise_multiplier(sigmas, ReleasedStatistics(50.0, groups, 50.0))
    assert z >= target and z == pytest.approx(target, rel=1e-6)
