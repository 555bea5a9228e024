import copy
import math

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule

from dp_gym.engine import (
    DPUpdater,
    ParameterGroups,
    PoissonBatches,
    prune_smallest,
    register_transformers_grad_samplers,
)
from dp_gym.privacy import ReleasedStatistics
from dp_gym.tasks.text import per_token_losses
from tests.conftest import micro_batch, micro_gpt2


def per_sample_loss(model, batch):
    losses = per_token_losses(model, batch["input_ids"], batch["attention_mask"])
    return losses.sum(dim=1) / batch["attention_mask"][:, 1:].sum(dim=1).clamp(min=1)


def loop_gradients(model, batch):
    """Reference: one backward pass per example."""
    grads = []
    for i in range(batch["input_ids"].shape[0]):
        model.zero_grad()
        single = {k: v[i : i + 1] for k, v in batch.items()}
        per_sample_loss(model, single).sum().backward()
        grads.append({name: p.grad.detach().clone() for name, p in model.named_parameters()})
    model.zero_grad()
    return grads


def make_updater(model, lr=1.0, optimizer="sgd", expected=5.0, **kwargs):
    optimizer = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(model.parameters(), lr=lr)
    groups = ParameterGroups(model)
    return DPUpdater(model, optimizer, groups, expected, sample_rate=0.1, loss_fn=per_sample_loss, **kwargs), groups


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_per_sample_gradients_equal_a_per_example_loop(tied):
    register_transformers_grad_samplers()
    model = micro_gpt2(tied=tied)
    batch = micro_batch()
    reference = loop_gradients(model, batch)
    module = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    per_sample_loss(module, batch).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad_sample.shape[0] == 5, name
        for i in range(5):
            torch.testing.assert_close(parameter.grad_sample[i], reference[i][name], atol=1e-5, rtol=1e-4,
                                       msg=f"{name}, sample {i}")


def test_broadcast_position_ids_are_caught():
    """Opacus issue #841: without expanded position_ids, wpe gets a batch-1 'per-sample' gradient."""
    def broadcasting_loss(model, batch):
        logits = model(input_ids=batch["input_ids"]).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:],
                                                 reduction="none").mean(1)
    model = micro_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    updater = DPUpdater(model, optimizer, ParameterGroups(model), 5, sample_rate=0.1, loss_fn=broadcasting_loss)
    with pytest.raises(RuntimeError, match="#841"):
        updater.step(micro_batch(), clip=1.0, noise=1.0)


def group_delta(groups, before, model_after_params):
    return {g: torch.cat([(a.detach() - b).reshape(-1) for a, b in zip(model_after_params(g), before[g], strict=True)])
            for g in groups}


def snapshot(groups):
    return {g: [p.detach().clone() for p in groups.parameters(g)] for g in groups}


@pytest.mark.parametrize("per_sample", ["bookkeeping", "opacus"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_per_group_clipping_equals_a_clipped_loop(per_sample, tied):
    model = micro_gpt2(tied=tied)
    batch = micro_batch()
    reference = loop_gradients(copy.deepcopy(model), batch)
    updater, groups = make_updater(model, expected=5.0, per_sample=per_sample)
    clip = np.array([0.05, 0.2, 0.01])
    before = snapshot(groups)
    updater.step(batch, clip=clip, noise=0.0)
    delta = group_delta(groups, before, groups.parameters)
    names = dict(model.named_parameters())
    inverse = {id(p): n for n, p in names.items()}
    for g_index, group in enumerate(groups):
        expected = torch.zeros_like(delta[group])
        for sample in reference:
            flat = torch.cat([sample[inverse[id(p)]].reshape(-1) for p in groups.parameters(group)])
            expected += flat * min(1.0, clip[g_index] / (float(flat.norm()) + 1e-6))
        torch.testing.assert_close(delta[group], -expected / 5.0, atol=1e-6, rtol=1e-4, msg=group)


def test_clipped_norm_never_exceeds_the_threshold():
    """One example, tiny C: its clipped group gradient has norm C (<= C), so the SGD step has norm C/m."""
    model = micro_gpt2()
    updater, groups = make_updater(model, expected=2.0)
    report = updater.step(micro_batch(size=1), clip=[1e-3, 2e-3, 5e-4], noise=0.0)
    assert np.all(report.update_norm <= np.array([1e-3, 2e-3, 5e-4]) / 2.0 * (1 + 1e-5))
    np.testing.assert_allclose(report.update_norm, np.array([1e-3, 2e-3, 5e-4]) / 2.0, rtol=1e-3)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_std_matches_sigma_times_clip_over_batch():
    model = micro_gpt2()
    updater, groups = make_updater(model, expected=4.0)
    before = snapshot(groups)
    empty = {k: v[:0] for k, v in micro_batch().items()}
    updater.step(empty, clip=[0.5, 2.0, 1.0], noise=[2.0, 0.5, 3.0])
    delta = group_delta(groups, before, groups.parameters)
    for group, expected_std in zip(groups, [0.25, 0.25, 0.75], strict=True):
        observed = float(delta[group].std())
        tolerance = 4 * expected_std / math.sqrt(2 * delta[group].numel())  # 4 standard errors
        assert abs(observed - expected_std) < tolerance, group


def test_every_draw_comes_from_the_generator_passed_and_none_means_fresh_entropy():
    statistics = ReleasedStatistics(2.0, 3, 2.0)
    reports = []
    for seed in (11, 11, 12, None, None):
        updater, _ = make_updater(micro_gpt2())
        reports.append(updater.step(micro_batch(), clip=1.0, noise=1.0, statistics=statistics,
                                    generator=None if seed is None else generator(seed)))
    same, other, fresh_a, fresh_b = reports[1], reports[2], reports[3], reports[4]
    np.testing.assert_array_equal(reports[0].noisy_grad_norm, same.noisy_grad_norm)
    assert reports[0].train_loss == same.train_loss
    np.testing.assert_array_equal(reports[0].unclipped_fraction, same.unclipped_fraction)
    assert not np.array_equal(reports[0].noisy_grad_norm, other.noisy_grad_norm)
    assert not np.array_equal(fresh_a.noisy_grad_norm, fresh_b.noisy_grad_norm)
    assert not hasattr(updater, "generator")  # the updater keeps no noise state of its own


def test_prune_smallest_keeps_exact_count_and_largest():
    update = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for ratio in (0.0, 0.1, 0.337, 0.5, 0.999, 1.0):
        pruned, dropped = prune_smallest(update, ratio)
        assert dropped == math.floor(ratio * 1000)
        assert int((pruned != 0).sum()) == 1000 - dropped
        kept = update.abs()[pruned != 0]
        gone = update.abs()[pruned == 0]
        if len(kept) and len(gone):
            assert float(kept.min()) >= float(gone.max())
        torch.testing.assert_close(pruned[pruned != 0], update[pruned != 0])


def test_pruning_inside_the_update_counts():
    model = micro_gpt2()
    updater, groups = make_updater(model)
    before = snapshot(groups)
    report = updater.step(micro_batch(), clip=1.0, noise=1.0, prune=[0.25, 0.5, 0.0])
    delta = group_delta(groups, before, groups.parameters)
    for group, ratio in zip(groups, [0.25, 0.5, 0.0], strict=True):
        assert int((delta[group] == 0).sum()) == math.floor(ratio * groups.numel(group))
    total = sum(groups.numel(g) for g in groups)
    expected = (math.floor(0.25 * groups.numel("embeddings")) + math.floor(0.5 * groups.numel("transformer.h.0"))) / total
    assert report.pruned_fraction == pytest.approx(expected)


def test_fully_pruned_group_does_not_move_even_with_adam_momentum():
    model = micro_gpt2()
    updater, groups = make_updater(model, lr=0.01, optimizer="adam")
    updater.step(micro_batch(), clip=1.0, noise=1.0)  # builds momentum everywhere
    before = snapshot(groups)
    report = updater.step(micro_batch(seed=1), clip=1.0, noise=1.0, prune=[0.0, 1.0, 0.0])
    delta = group_delta(groups, before, groups.parameters)
    assert float(delta["transformer.h.0"].abs().max()) == 0.0
    assert report.update_norm[1] == 0.0 and report.update_norm[0] > 0


def test_zero_noise_and_huge_clip_is_non_private_sgd():
    model = micro_gpt2()
    reference = copy.deepcopy(model)
    batch = micro_batch()
    updater, groups = make_updater(model, lr=0.1, expected=5.0)
    updater.step(batch, clip=1e9, noise=0.0)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    per_sample_loss(reference, batch).mean().backward()
    optimizer.step()
    for (name, expected), actual in zip(reference.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("per_sample", ["bookkeeping", "opacus"])
def test_nonfinite_sample_contributes_zero(per_sample):
    batch = micro_batch()

    def poisoned(model, batch):
        losses = per_sample_loss(model, batch)
        return torch.cat([losses[:1] * float("nan"), losses[1:]])

    model_a, model_b = micro_gpt2(), micro_gpt2()
    updater_a, groups_a = make_updater(model_a, per_sample=per_sample)
    updater_a.loss_fn = poisoned
    updater_b, _ = make_updater(model_b, per_sample=per_sample)
    report = updater_a.step(batch, clip=0.1, noise=0.0, statistics=ReleasedStatistics(loss_sigma=1e-6))
    updater_b.step({k: v[1:] for k, v in batch.items()}, clip=0.1, noise=0.0)
    assert updater_a.nonfinite_samples == 1
    assert math.isfinite(report.train_loss)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("field, kwargs", [
    ("clip", {"clip": [1.0, float("nan"), 1.0], "noise": 1.0}),
    ("clip", {"clip": [1.0, -1.0, 1.0], "noise": 1.0}),
    ("noise", {"clip": 1.0, "noise": [1.0, float("inf"), 1.0]}),
    ("prune", {"clip": 1.0, "noise": 1.0, "prune": [0.0, 1.5, 0.0]}),
])
def test_bad_controls_name_the_group(field, kwargs):
    updater, _ = make_updater(micro_gpt2())
    with pytest.raises(ValueError, match=rf"{field} for group 'transformer.h.0'"):
        updater.step(micro_batch(), **kwargs)


def test_released_statistics_track_the_truth():
    model = micro_gpt2()
    updater, groups = make_updater(model, expected=5.0)
    batch = micro_batch()
    with torch.no_grad():
        true_loss = float(per_sample_loss(model, batch).clamp(0, 10).mean())
    report = updater.step(batch, clip=[1e9, 1e-9, 1e9], noise=[1.0, 2.0, 3.0],
                          statistics=ReleasedStatistics(1e-4, 3, 1e-5))
    np.testing.assert_allclose(report.unclipped_fraction, [1.0, 0.0, 1.0], atol=1e-3)
    assert report.train_loss == pytest.approx(true_loss, abs=1e-3)
    assert report.oracle is None and not hasattr(report, "batch_size")
    with pytest.raises(ValueError, match="groups_counted must be 0 or 3"):
        updater.step(batch, clip=1.0, noise=1.0, statistics=ReleasedStatistics(1.0, 2))


def test_oracle_statistics_only_when_asked():
    updater, _ = make_updater(micro_gpt2(), oracle=True)
    report = updater.step(micro_batch(), clip=1.0, noise=1.0)
    assert report.oracle["per_sample_norm_quantiles"].shape == (3, 3)


def test_poisson_batches_come_from_the_generator_given_and_can_be_empty():
    sampler = PoissonBatches(50, 0.01)
    sizes = [len(sampler.sample(generator(t))) for t in range(200)]
    assert sizes == [len(sampler.sample(generator(t))) for t in range(200)]
    assert 0 in sizes and np.mean(sizes) == pytest.approx(0.5, abs=0.2)
    assert not hasattr(sampler, "generator")


def test_empty_batch_update_runs():
    updater, _ = make_updater(micro_gpt2())
    report = updater.step({k: v[:0] for k, v in micro_batch().items()}, clip=1.0, noise=1.0,
                          statistics=ReleasedStatistics(5.0, 3, 5.0))
    assert np.all(np.isfinite(report.noisy_grad_norm)) and math.isfinite(report.train_loss)


def test_secure_mode_noise_has_the_same_std():
    """Opacus' secure sampler (sum of 4 draws / 2) keeps std sigma*C/m."""
    model = micro_gpt2()
    updater, groups = make_updater(model, expected=2.0, secure_mode=True)
    before = snapshot(groups)
    updater.step({k: v[:0] for k, v in micro_batch().items()}, clip=1.0, noise=[3.0, 3.0, 3.0])
    delta = group_delta(groups, before, groups.parameters)["transformer.h.0"]
    expected = 1.5
    assert abs(float(delta.std()) - expected) < 4 * expected / math.sqrt(2 * delta.numel())


def test_prune_smallest_breaks_ties_by_index():
    pruned, dropped = prune_smallest(torch.tensor([-2.0, 2.0, 1.0, 2.0]), 0.5)
    assert dropped == 2 and pruned.tolist() == [0.0, 2.0, 0.0, 2.0]  # 1, then the first of the tied 2s
    pruned, _ = prune_smallest(torch.ones(5), 0.6)
    assert pruned.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_prune_smallest_zeroes_infinite_coordinates_without_making_nan():
    pruned, dropped = prune_smallest(torch.tensor([math.inf, -math.inf, math.inf, 1.0]), 0.5)
    assert dropped == 2 and pruned.tolist() == [0.0, -math.inf, math.inf, 0.0]
    pruned, _ = prune_smallest(torch.tensor([2.0, math.nan, -3.0, 0.5]), 0.25)
    assert pruned[3] == 0 and math.isnan(pruned[1]) and pruned[[0, 2]].tolist() == [2.0, -3.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_kth_smallest_matches_a_sort_in_every_dtype(dtype):
    from dp_gym.engine.updater import kth_smallest

    values = torch.randn(5000, generator=torch.Generator().manual_seed(1)).abs().to(dtype)
    for k in (1, 17, 2500, 5000):
        assert float(kth_smallest(values, k)) == float(torch.sort(values).values[k - 1])


@pytest.mark.parametrize("k", [1, 700_000, 1_250_000, 2_000_000])
def test_kth_smallest_is_exact_on_large_inputs_with_ties(k):
    from dp_gym.engine.updater import kth_smallest

    values = (torch.randn(2_000_000, generator=torch.Generator().manual_seed(4)).abs() * 100).round()  # many ties
    assert float(kth_smallest(values, k)) == float(torch.sort(values).values[k - 1])
    pruned, dropped = prune_smallest(values, k / 2_000_000)
    assert dropped == k and int((pruned == 0).sum()) >= k


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=0.01),
    lambda params: torch.optim.AdamW(params, lr=0.01, amsgrad=True),
], ids=["sgd-nesterov", "adam", "adamw-amsgrad"])
def test_stepping_one_parameter_at_a_time_is_the_joint_step_bit_for_bit(make_optimizer):
    """What the updater's memory saving rests on: torch's optimizers keep state per parameter and
    skip a parameter without .grad, so per-parameter steps equal one step of all parameters."""
    model, reference = micro_gpt2(), micro_gpt2()
    updater = DPUpdater(model, make_optimizer(model.parameters()), ParameterGroups(model), 5.0, sample_rate=0.1,
                        loss_fn=per_sample_loss)
    joint = make_optimizer(reference.parameters())
    same = dict(zip(model.parameters(), reference.parameters(), strict=True))  # model's -> reference's
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        noisy = {group: torch.randn(updater.groups.numel(group), generator=generator) for group in updater.group_names}
        before = {p: p.detach().clone() for p in reference.parameters()}
        for group in updater.group_names:  # the joint step on the same updates
            offset = 0
            for parameter in updater.groups.parameters(group):
                same[parameter].grad = noisy[group][offset : offset + parameter.numel()].view_as(parameter).clone()
                offset += parameter.numel()
        joint.step()
        joint.zero_grad(set_to_none=True)
        norms = updater._apply(noisy, frozen=set())
        for (name, expected), actual in zip(reference.named_parameters(), model.parameters(), strict=True):
            assert torch.equal(actual, expected), (step, name)
        expected_norms = [float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
            [before[same[p]] - same[p].detach() for p in updater.groups.parameters(group)]))))
            for group in updater.group_names]
        assert norms.tolist() == expected_norms
