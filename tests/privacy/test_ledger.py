import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from dp_gym.privacy import (
    PrivacyLedger,
    calibrate_noise,
)

DELTA = 1e-5
HETEROGENEOUS = [(1.1, 0.01, 30), (0.8, 0.02, 10), (2.5, 0.01, 50), (1.1, 0.03, 5)]


def opacus_epsilon(cls, history):
    accountant = cls()
    for noise, rate, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
    return accountant.get_epsilon(delta=DELTA), accountant.history


@pytest.mark.parametrize("history", [[(1.0, 0.01, 100)], HETEROGENEOUS], ids=["homogeneous", "heterogeneous"])
def test_rdp_matches_opacus(history):
    ledger = PrivacyLedger(DELTA, "rdp")
    for noise, rate, steps in history:
        ledger.record(noise, rate, steps)
    expected, opacus_history = opacus_epsilon(RDPAccountant, history)
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    assert ledger.history == opacus_history


@pytest.mark.parametrize("history", [[(1.0, 0.01, 100)], HETEROGENEOUS], ids=["homogeneous", "heterogeneous"])
def test_prv_matches_opacus(history):
    ledger = PrivacyLedger(DELTA, "prv")
    for noise, rate, steps in history:
        ledger.record(noise, rate, steps)
    expected, _ = opacus_epsilon(PRVAccountant, history)
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-9)


def test_prv_is_tighter_than_rdp_here():
    rdp, prv = PrivacyLedger(DELTA, "rdp"), PrivacyLedger(DELTA, "prv")
    for ledger in (rdp, prv):
        ledger.record(1.0, 0.02, 200)
    assert prv.epsilon() < rdp.epsilon()


def test_epsilon_if_records_nothing_and_equals_recording():
    ledger = PrivacyLedger(DELTA)
    ledger.record(1.0, 0.02, 10)
    before = ledger.epsilon()
    predicted = ledger.epsilon_if(0.7, 0.02, 5)
    assert ledger.epsilon() == before and ledger.steps == 10
    ledger.record(0.7, 0.02, 5)
    assert ledger.epsilon() == pytest.approx(predicted, rel=1e-12)


def test_free_entries_cost_nothing_and_zero_noise_is_infinite():
    ledger = PrivacyLedger(DELTA)
    ledger.record(1.0, 0.0, 10)
    ledger.record(math.inf, 0.5, 10)
    assert ledger.epsilon() == 0.0
    assert ledger.epsilon_if(0.0, 0.1, 1) == math.inf


@pytest.mark.parametrize("kwargs, field", [({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta"),
                                           ({"delta": 1e-5, "accountant": "gdp"}, "accountant")])
def test_bad_ledger_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PrivacyLedger(**kwargs)


@pytest.mark.parametrize("args, field", [((-1.0, 0.1, 1), "noise_multiplier"), ((1.0, 1.5, 1), "sample_rate"),
                                         ((1.0, 0.1, -2), "steps"), ((float("nan"), 0.1, 1), "noise_multiplier")])
def test_bad_record_arguments(args, field):
    with pytest.raises(ValueError, match=field):
        PrivacyLedger(DELTA).record(*args)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_checkpoint_round_trip(accountant):
    ledger = PrivacyLedger(DELTA, accountant)
    for entry in HETEROGENEOUS:
        ledger.record(*entry)
    restored = PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored.history == ledger.history
    assert restored.epsilon() == ledger.epsilon()
    assert restored.epsilon_if(1.0, 0.01, 3) == ledger.epsilon_if(1.0, 0.01, 3)


@settings(max_examples=25, deadline=None)
@given(sigma=st.floats(0.5, 5.0), rate=st.floats(0.001, 0.2), steps=st.integers(1, 500))
def test_epsilon_monotone(sigma, rate, steps):
    ledger = PrivacyLedger(DELTA)
    base = ledger.epsilon_if(sigma, rate, steps)
    assert ledger.epsilon_if(sigma, rate, steps + 10) >= base
    assert ledger.epsilon_if(sigma, min(1.0, rate * 1.5), steps) >= base
    assert ledger.epsilon_if(sigma * 1.5, rate, steps) <= base


def test_calibrate_noise_spends_the_target():
    sigma = calibrate_noise(3.0, DELTA, 0.02, 200)
    ledger = PrivacyLedger(DELTA)
    ledger.record(sigma, 0.02, 200)
    assert 3.0 - 0.01 <= ledger.epsilon() <= 3.0


@pytest.mark.parametrize("kwargs, field", [({"target_epsilon": 0.0}, "target_epsilon"), ({"delta": 2.0}, "delta"),
                                           ({"steps": 0}, "steps"), ({"sample_rate": 0.0}, "sample_rate")])
def test_calibrate_noise_rejects_bad_input(kwargs, field):
    arguments = {"target_epsilon": 3.0, "delta": DELTA, "sample_rate": 0.02, "steps": 10, **kwargs}
    with pytest.raises(ValueError, match=field):
        calibrate_noise(**arguments)
