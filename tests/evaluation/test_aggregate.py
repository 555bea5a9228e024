import numpy as np
import pytest

from dp_gym.evaluation.aggregate import iqm, probability_of_improvement, stratified_bootstrap


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.array([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -100.0])) == pytest.approx(3.5)


def test_the_interval_covers_the_point_and_narrows_with_more_runs():
    rng = np.random.default_rng(1)
    few = {"a": rng.normal(0, 1, 5), "b": rng.normal(1, 1, 5)}
    many = {"a": rng.normal(0, 1, 200), "b": rng.normal(1, 1, 200)}
    point, low, high = stratified_bootstrap(few, reps=500)
    assert low <= point <= high
    _, low_many, high_many = stratified_bootstrap(many, reps=500)
    assert high_many - low_many < high - low
    with pytest.raises(ValueError, match="at least one run"):
        stratified_bootstrap({"a": np.array([])})


def test_probability_of_improvement():
    lower = {"t": np.array([1.0, 2.0])}
    assert probability_of_improvement(lower, {"t": np.array([3.0, 4.0])}) == 1.0
    assert probability_of_improvement(lower, {"t": np.array([1.0, 2.0])}) == 0.5
    assert probability_of_improvement({"t": np.array([5.0])}, {"t": np.array([3.0]), "u": np.array([1.0])}) == 0.0


def test_a_performance_profile_is_the_fraction_of_runs_at_or_below_each_threshold():
    from dp_gym.evaluation.plots import performance_profile

    profile = performance_profile(np.array([30.0, 40.0, 50.0, 60.0]), np.array([20.0, 40.0, 45.0, 60.0, 70.0]))
    np.testing.assert_allclose(profile, [0.0, 0.5, 0.5, 1.0, 1.0])


def test_a_diverged_run_widens_the_interval_instead_of_breaking_it():
    point, low, high = stratified_bootstrap({"env": np.array([30.0, 31.0, np.inf, 33.0])}, reps=200)
    assert point == pytest.approx(32.0) and low == 30.0 and high == np.inf


def test_learning_curves_smooth_and_plot_runs_that_do_not_overlap(tmp_path):
    from dp_gym.evaluation.plots import plot_learning_curves, smoothed

    np.testing.assert_allclose(smoothed(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    runs = {"a": [(np.array([1.0, 2.0, 3.0]), np.array([50.0, 40.0, 30.0])),
                  (np.array([1.5, 2.5, 3.5]), np.array([55.0, 45.0, 35.0]))],
            "b": [(np.array([1.0, 2.0]), np.array([60.0, 50.0])), (np.array([5.0, 6.0]), np.array([40.0, 30.0]))]}
    path = plot_learning_curves(runs, tmp_path / "curves.png", window=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
