import pytest
import torch

from dp_gym.engine import ParameterGroups
from tests.conftest import micro_gpt2


def test_per_block_groups_gpt2():
    model = micro_gpt2()
    groups = ParameterGroups(model, "per_block")
    assert groups.names == ["embeddings", "transformer.h.0", "head"]
    assert groups.parameter_names("embeddings") == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert groups.parameter_names("head") == ["transformer.ln_f.weight", "transformer.ln_f.bias"]


def test_every_trainable_parameter_in_exactly_one_group():
    model = micro_gpt2(tied=False)
    model.transformer.wpe.weight.requires_grad_(False)
    for strategy in ("per_block", "per_layer", "global", ["wte|wpe|lm_head", r"\.h\.", "ln_f"]):
        groups = ParameterGroups(model, strategy)
        seen = [id(p) for g in groups for p in groups.parameters(g)]
        trainable = [id(p) for p in model.parameters() if p.requires_grad]
        assert sorted(seen) == sorted(trainable), strategy
        assert id(model.transformer.wpe.weight) not in seen


def test_untied_head_joins_the_head_group():
    groups = ParameterGroups(micro_gpt2(tied=False))
    assert "lm_head.weight" in groups.parameter_names("head")


def test_named_patterns_and_counts():
    groups = ParameterGroups(micro_gpt2(), {"emb": "wte|wpe", "rest": "."})
    assert groups.names == ["emb", "rest"] and len(groups) == 2
    assert groups.numel("emb") + groups.numel("rest") == sum(p.numel() for p in micro_gpt2().parameters())


@pytest.mark.parametrize("strategy, message", [
    ("per_unicorn", "grouping strategy must be one of"),
    (["wte"], "matches none of the grouping patterns"),
    (["wte", "nothing_matches_this", "."], "match no trainable parameter"),
    (["("], "not a valid regex"),
])
def test_bad_strategies(strategy, message):
    with pytest.raises(ValueError, match=message):
        ParameterGroups(micro_gpt2(), strategy)


def test_frozen_model_rejected():
    model = micro_gpt2()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        ParameterGroups(model)


def test_nonfinite_parameters_names_every_tensor_with_a_nan_or_an_inf():
    model = micro_gpt2()
    groups = ParameterGroups(model, "per_block")
    assert groups.nonfinite_parameters() == []
    with torch.no_grad():
        model.transformer.wpe.weight[3, 1] = float("nan")
        model.transformer.ln_f.bias[0] = float("-inf")
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = 3e38  # finite: a norm would overflow, max |w| does not
    assert groups.nonfinite_parameters() == ["transformer.wpe.weight", "transformer.ln_f.bias"]
