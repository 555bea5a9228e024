import pytest
import torch

from dp_gym.data import make_canaries, private_train_records
from dp_gym.evaluation import canary_exposure, loss_attack, privacy_attacks, record_losses
from dp_gym.tasks import TextTask


def train_non_privately(task, steps=300, batch_size=16, seed=0):
    torch.manual_seed(seed)
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = task.train_batch(torch.randint(task.train_size, (batch_size,)))
        loss = task.per_sample_loss(model, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def memorizing_run():
    seen, unseen = make_canaries(2, repeats=32, seed=7)
    records = private_train_records(64, seed=11, canaries=[seen])
    task = TextTask(train_records=records, val_records=records[:8])
    return task, train_non_privately(task), seen, unseen


def test_exposure_is_high_for_a_memorized_canary_and_low_for_an_unseen_one(memorizing_run):
    task, model, seen, unseen = memorizing_run
    high = canary_exposure(model, task.tokenizer, seen, n_candidates=999, seed=0)
    low = canary_exposure(model, task.tokenizer, unseen, n_candidates=999, seed=0)
    assert high.sampled and high.candidates == 999 and high.max_exposure == pytest.approx(9.97, abs=0.01)
    assert high.exposure > 8.0, high
    assert low.exposure < 4.0, low
    base = task.build_model()  # the public base model never saw either
    assert canary_exposure(base, task.tokenizer, seen, n_candidates=999, seed=0).exposure < 4.0


def test_exposure_enumerates_a_small_space_exactly(memorizing_run):
    task, model, seen, _ = memorizing_run
    small = make_canaries(1, repeats=1, seed=3, n_digits=2)[0]
    result = canary_exposure(model, task.tokenizer, small, n_candidates=None)
    assert not result.sampled and result.candidates == 99 and 1 <= result.rank <= 100


def test_membership_inference_is_at_chance_on_two_sets_of_non_members():
    task = TextTask(n_train=64, n_val=8)
    model = task.build_model()
    a, b = task.nonmember_records(400)[:200], task.nonmember_records(400)[200:]
    result = loss_attack(model, task.tokenizer, a, b)
    assert abs(result.auc - 0.5) < 0.1 and result.members == result.nonmembers == 200


def test_membership_inference_finds_members_of_a_memorizing_model(memorizing_run):
    task, model, _, _ = memorizing_run
    members = task.train_records[:64]
    nonmembers = TextTask(n_train=8, n_val=8).nonmember_records(64)
    assert loss_attack(model, task.tokenizer, members, nonmembers).auc > 0.9
    assert record_losses(model, task.tokenizer, members).mean() < record_losses(model, task.tokenizer, nonmembers).mean()


def test_privacy_attacks_report_every_column():
    task = TextTask(n_train=32, n_val=8, n_canaries=2, canary_repeats=2)
    report = privacy_attacks(task.build_model(), task, n_candidates=49, n_records=16)
    assert report["canaries"] == 2 and report["exposure_cap"] == pytest.approx(5.64, abs=0.01)
    assert report["mia_members"] == 16 == report["mia_nonmembers"]
    for column in ("exposure_mean", "exposure_max", "mia_loss_auc", "mia_reference_auc",
                   "mia_reference_tpr_at_1pct_fpr"):
        assert 0 <= report[column] <= max(1.0, report["exposure_cap"]), column
    assert report["mia_reference_auc"] == pytest.approx(0.5, abs=1e-9)  # reference == target: no signal
