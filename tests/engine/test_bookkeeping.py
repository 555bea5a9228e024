"""Book-kept linear layers give the per-sample norms and clipped sums Opacus' per-sample gradients give."""

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule
from torch import nn

from dp_gym.engine import DPUpdater, ParameterGroups, register_transformers_grad_samplers
from dp_gym.engine.bookkeeping import BookkeepingGradSampleModule
from dp_gym.privacy import ReleasedStatistics
from tests.conftest import micro_batch, micro_gpt2
from tests.engine.test_updater import per_sample_loss


class SharedLinearNet(nn.Module):
    """One ``nn.Linear`` applied twice per forward pass, then a 2-D (position-free) head."""

    def __init__(self, width: int = 6, hidden: int = 40):
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.wide = nn.Linear(width, hidden)  # d_in * d_out large: ghost norm
        self.narrow = nn.Linear(hidden, 2)  # d_in * d_out small vs T^2: materialized
        self.head = nn.Linear(2, 1)

    def forward(self, x):  # x: (B, T, width)
        h = torch.tanh(self.inner(torch.tanh(self.inner(x))))
        h = self.narrow(torch.relu(self.wide(h)))
        return self.head(h.mean(dim=1)).squeeze(-1)


def net_loss(model, batch):
    return (model(batch["x"]) - batch["y"]) ** 2


def net_batch(size=6, positions=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(size, positions, 6, generator=generator), "y": torch.randn(size, generator=generator)}


def per_example_gradients(model, loss_fn, batch):
    size = next(iter(batch.values())).shape[0]
    out = []
    for i in range(size):
        model.zero_grad()
        loss_fn(model, {k: v[i : i + 1] for k, v in batch.items()}).sum().backward()
        out.append({id(p): p.grad.detach().clone() for p in model.parameters()})
    model.zero_grad()
    return out


@pytest.mark.parametrize("positions", [1, 9])
def test_norms_and_weighted_sums_equal_a_per_example_loop(positions):
    torch.manual_seed(0)
    model = SharedLinearNet()
    batch = net_batch(positions=positions)
    reference = per_example_gradients(model, net_loss, batch)
    module = BookkeepingGradSampleModule(model)
    assert set(module.bookkept_modules) == {model.inner, model.wide, model.narrow, model.head}
    net_loss(module, batch).sum().backward()
    factors = torch.rand(6, generator=torch.Generator().manual_seed(1))
    for parameter in model.parameters():
        assert module.is_bookkept(parameter)
        expected_norms = torch.stack([r[id(parameter)].reshape(-1).norm() ** 2 for r in reference])
        torch.testing.assert_close(module.squared_norms(parameter, 6), expected_norms, rtol=1e-4, atol=1e-7)
        expected_sum = sum(c * r[id(parameter)].reshape(-1) for c, r in zip(factors, reference, strict=True))
        torch.testing.assert_close(module.weighted_sum(parameter, factors, 6), expected_sum, rtol=1e-4, atol=1e-6)


def test_a_dropped_sample_with_nan_contributes_zero():
    model = SharedLinearNet()
    batch = net_batch()
    batch["x"][2, 0, 0] = float("nan")
    module = BookkeepingGradSampleModule(model)
    net_loss(module, batch).masked_fill(torch.arange(6) == 2, 0.0).sum().backward()
    drop = torch.arange(6) == 2
    for parameter in model.parameters():
        norms = module.squared_norms(parameter, 6)
        assert torch.isfinite(norms[~drop]).all()
        assert torch.isfinite(module.weighted_sum(parameter, torch.ones(6), 6, drop)).all()


def repeated_token_batch(size=5, length=12, vocab=50, seed=0):
    batch = micro_batch(size, length, seed)
    batch["input_ids"][:, 6] = batch["input_ids"][:, 1]  # every record repeats a token
    batch["input_ids"][0, 2:5] = 7  # and one record repeats one three times
    return batch


def loop_reference(model, batch):
    size = batch["input_ids"].shape[0]
    grads = []
    for i in range(size):
        model.zero_grad()
        per_sample_loss(model, {k: v[i : i + 1] for k, v in batch.items()}).sum().backward()
        grads.append({id(p): p.grad.detach().clone() for p in model.parameters() if p.grad is not None})
    model.zero_grad()
    return grads


@pytest.mark.parametrize("head_way", ["ghost", "materialized"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_embeddings_tied_or_not_are_bookkept_exactly(monkeypatch, tied, head_way):
    """No B x V x d tensor on the ghost way: ||E_i + H_i||^2 with the cross term, against a loop."""
    import dp_gym.engine.bookkeeping as bookkeeping

    monkeypatch.setattr(bookkeeping, "GHOST_COST_RATIO", 1e9 if head_way == "ghost" else 0)
    register_transformers_grad_samplers()
    model = micro_gpt2(tied=tied)
    batch = repeated_token_batch()
    reference = loop_reference(model, batch)
    module = BookkeepingGradSampleModule(model)
    wte, wpe, head = model.transformer.wte, model.transformer.wpe, model.lm_head
    assert {wte, wpe, head} <= set(module.bookkept_modules)
    assert (head.weight is wte.weight) == tied
    per_sample_loss(module, batch).sum().backward()
    factors = torch.rand(5, generator=torch.Generator().manual_seed(2))
    drop = torch.arange(5) == 3
    for parameter in (wte.weight, wpe.weight, head.weight):
        assert module.is_bookkept(parameter) and getattr(parameter, "grad_sample", None) is None
        expected_norms = torch.stack([r[id(parameter)].reshape(-1).norm() ** 2 for r in reference])
        torch.testing.assert_close(module.squared_norms(parameter, 5), expected_norms, rtol=1e-4, atol=1e-8)
    for parameter in dict.fromkeys((wte.weight, wpe.weight, head.weight)):  # a tied weight is summed once
        expected_sum = sum(0 if d else c * r[id(parameter)].reshape(-1)
                           for c, d, r in zip(factors, drop, reference, strict=True))
        torch.testing.assert_close(module.weighted_sum(parameter, factors, 5, drop), expected_sum, rtol=1e-4, atol=1e-7)


def test_an_embedding_with_a_padding_row_matches_autograd_in_both_modes():
    """Opacus 1.6's embedding rule gives the padding row a per-sample gradient; autograd gives none."""
    register_transformers_grad_samplers()
    embedding = nn.Embedding(20, 4, padding_idx=0)
    ids = torch.tensor([[0, 3, 3, 5], [0, 0, 1, 2]])
    for wrapper in (GradSampleModule, BookkeepingGradSampleModule):
        module = wrapper(nn.Sequential(embedding), batch_first=True, loss_reduction="sum")
        module(ids).pow(2).sum().backward()
        if wrapper is GradSampleModule:
            norms = embedding.weight.grad_sample.reshape(2, -1).norm(dim=1) ** 2
            assert float(embedding.weight.grad_sample[:, 0].abs().sum()) == 0.0
        else:
            norms = module.squared_norms(embedding.weight, 2)
        # example i's gradient of row u is 2 * count_i(u) * weight[u]; the padding row 0 gets none
        expected = []
        for row in ids:
            counts = torch.bincount(row[row != 0], minlength=20).float()
            expected.append(float(((2 * counts).unsqueeze(1) * embedding.weight.detach()).pow(2).sum()))
        torch.testing.assert_close(norms.detach(), torch.tensor(expected), rtol=1e-5, atol=1e-7)
        module.remove_hooks()
        embedding.weight.grad = None
        embedding.weight.grad_sample = None


def test_a_weight_shared_beyond_one_embedding_and_one_head_stays_with_opacus():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.other = nn.Linear(4, 10, bias=False)
            self.head.weight = self.other.weight = self.embed.weight

        def forward(self, ids):
            hidden = self.embed(ids)
            return (self.head(hidden) + self.other(hidden)).sum(dim=(1, 2))

    module = BookkeepingGradSampleModule(TwoHeads())
    assert not module.is_bookkept(module._module.embed.weight)
    module(torch.tensor([[1, 2], [3, 3]])).sum().backward()
    assert module._module.embed.weight.grad_sample.shape == (2, 10, 4)


def test_the_two_per_sample_modes_release_the_same_update():
    batch = micro_batch()
    reports = []
    for mode in ("bookkeeping", "opacus"):
        model = micro_gpt2(tied=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        updater = DPUpdater(model, optimizer, ParameterGroups(model), 5.0, sample_rate=0.1, loss_fn=per_sample_loss,
                            per_sample=mode, oracle=True)
        reports.append(updater.step(batch, clip=[0.05, 0.2, 0.01], noise=1.5, statistics=ReleasedStatistics(4.0, 3),
                                    generator=torch.Generator().manual_seed(3)))
    bookkept, opacus = reports
    np.testing.assert_allclose(bookkept.oracle["per_sample_norm_quantiles"], opacus.oracle["per_sample_norm_quantiles"],
                               rtol=1e-4)
    np.testing.assert_allclose(bookkept.unclipped_fraction, opacus.unclipped_fraction, rtol=1e-6)
    for group in bookkept.noisy_update:
        torch.testing.assert_close(bookkept.noisy_update[group], opacus.noisy_update[group], rtol=1e-4, atol=1e-6)


def test_unknown_per_sample_mode_is_rejected():
    model = micro_gpt2()
    with pytest.raises(ValueError, match="per_sample"):
        DPUpdater(model, torch.optim.SGD(model.parameters(), lr=1.0), ParameterGroups(model), 5.0, sample_rate=0.1,
                  loss_fn=per_sample_loss, per_sample="ghost")


def test_plain_opacus_module_is_still_accepted():
    model = micro_gpt2()
    module = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    updater = DPUpdater(module, torch.optim.SGD(model.parameters(), lr=1.0), ParameterGroups(model), 5.0,
                        sample_rate=0.1, loss_fn=per_sample_loss)
    assert updater.per_sample == "opacus"
    updater.step(micro_batch(), clip=0.1, noise=1.0)


class BypassingNet(nn.Module):
    """Uses ``head.weight`` through ``F.linear`` without calling ``head``: no hook sees it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return torch.nn.functional.linear(self.body(x), self.head.weight).sum(dim=(1, 2))


@pytest.mark.parametrize("per_sample", ["bookkeeping", "opacus"])
def test_a_parameter_used_outside_its_module_is_an_error_not_a_silent_zero(per_sample):
    model = BypassingNet()
    updater = DPUpdater(model, torch.optim.SGD(model.parameters(), lr=0.1), ParameterGroups(model, strategy="per_layer"),
                        4.0, sample_rate=0.1, loss_fn=lambda m, b: m(b["x"]), per_sample=per_sample)
    with pytest.raises(RuntimeError, match="outside"):
        updater.step({"x": torch.randn(4, 3, 4)}, clip=1.0, noise=1.0)


class UnusedBranchNet(nn.Module):
    """``side`` runs in the forward pass but its output never reaches the loss."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 1)
        self.side = nn.Linear(4, 3)

    def forward(self, x):
        self.side(x)
        return self.body(x).sum(dim=(1, 2))


def test_a_layer_whose_output_misses_the_loss_contributes_zero():
    model = UnusedBranchNet()
    module = BookkeepingGradSampleModule(model)
    module(torch.randn(5, 2, 4)).sum().backward()
    for parameter in model.side.parameters():
        assert torch.equal(module.squared_norms(parameter, 5), torch.zeros(5))
        assert torch.equal(module.weighted_sum(parameter, torch.ones(5), 5), torch.zeros(parameter.numel()))
    assert bool((module.squared_norms(model.body.weight, 5) > 0).all())


def test_after_the_first_pass_book_kept_weights_get_no_batch_gradient_and_the_same_samples():
    """The second weight-gradient product per layer is skipped; norms and sums are unchanged, and
    the first layer (token ids in) still receives its output gradient."""
    register_transformers_grad_samplers()
    model = micro_gpt2(tied=True)
    batch = repeated_token_batch()
    reference = loop_reference(model, batch)
    module = BookkeepingGradSampleModule(model)
    module.confirm_usage()
    with module.weight_gradients_skipped():
        per_sample_loss(module, batch).sum().backward()
    bookkept = [p for p in model.parameters() if module.is_bookkept(p)]
    assert bookkept and all(p.grad is None and p.requires_grad for p in bookkept)
    assert all(p.grad is not None for p in model.parameters() if not module.is_bookkept(p))  # layer norms
    for parameter in bookkept:
        expected = torch.stack([r[id(parameter)].reshape(-1).norm() ** 2 for r in reference])
        torch.testing.assert_close(module.squared_norms(parameter, 5), expected, rtol=1e-4, atol=1e-8)
