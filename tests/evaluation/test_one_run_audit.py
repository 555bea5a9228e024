"""The empirical audit on a CI-sized configuration (a larger version: benchmarks/privacy_attacks.py)."""

import math

import pytest

import dp_gym
from dp_gym.evaluation import one_run_audit

# small and fast (about 12 s a run): 128 notes, q = 0.1, 100 updates; no privatized statistics
AUDITED = {"epsilon": 1.0, "task_kwargs": {"n_train": 128, "n_val": 16}, "sample_rate": 0.1, "max_updates": 100,
           "updates_per_step": 10, "count_noise": None, "loss_noise": None}


@pytest.fixture(scope="module")
def audits():
    config = dp_gym.config_of("dp_gym/TinyText-v0", **AUDITED)
    return {broken: one_run_audit(config, n_canaries=256, seed=0, broken=broken) for broken in (None, "no_noise")}


def test_a_correct_configuration_is_not_contradicted(audits):
    honest = audits[None]
    assert math.isfinite(honest.epsilon_lower_bound) and honest.epsilon_lower_bound >= 0
    assert honest.epsilon_lower_bound <= honest.epsilon_reported <= 1.0
    assert not honest.flagged and honest.privacy_valid
    assert honest.canaries == 256 and 0 < honest.included < 256 and honest.guesses > 0


def test_the_broken_configuration_is_flagged(audits):
    broken = audits["no_noise"]
    honest = audits[None]
    # the ledger reports the same epsilon (it was told the same noise), but the noise was never added
    assert broken.epsilon_reported == pytest.approx(honest.epsilon_reported)
    assert broken.epsilon_lower_bound > broken.epsilon_reported
    assert broken.flagged and not broken.privacy_valid and broken.broken == "no_noise"
    assert broken.to_dict()["privacy_valid"] is False


def test_bad_audit_requests_are_refused():
    config = dp_gym.config_of("dp_gym/TinyText-v0", **AUDITED)
    with pytest.raises(ValueError, match="broken must be None or one of"):
        one_run_audit(config, broken="half_noise")
    with pytest.raises(ValueError, match="task must be 'text'"):
        one_run_audit(dp_gym.config_of("dp_gym/TinyVision-v0"))
    with pytest.raises(ValueError, match="remove train_records / n_canaries"):
        one_run_audit(dp_gym.config_of("dp_gym/TinyText-v0", task_kwargs={"n_canaries": 2}))
