import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dp_gym.models.token_pruning import (
    cls_attention_scores,
    prune_visual_tokens,
    registered_rules,
    select_visual_tokens,
    tokens_kept,
)

PRUNING_RULES = ["cls_attention", "dissimilarity", "random"]


def batch(size=4, n=16, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, n, dim, generator=generator), torch.rand(size, n, generator=generator).softmax(dim=1)


def test_the_documented_rules_are_registered():
    assert set(PRUNING_RULES + ["none"]) <= set(registered_rules())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 80), keep=st.floats(0.01, 1.0), rule=st.sampled_from(PRUNING_RULES))
def test_each_rule_keeps_exactly_ceil_of_the_ratio(n, keep, rule):
    features, attention = batch(size=3, n=n)
    indices = select_visual_tokens(features, rule, keep, attention, torch.Generator().manual_seed(1))
    expected = max(1, math.ceil(keep * n - 1e-9))
    assert indices.shape == (3, expected) == (3, tokens_kept(n, keep))
    for row in indices:  # distinct, ascending (raster order kept), in range
        assert torch.all(row[1:] > row[:-1]) and 0 <= int(row.min()) and int(row.max()) < n
    assert prune_visual_tokens(features, rule, keep, attention, torch.Generator().manual_seed(1)).shape == (3, expected, 8)


@pytest.mark.parametrize("rule", PRUNING_RULES)
def test_selection_depends_only_on_the_example_itself(rule):
    features, attention = batch()
    chosen = select_visual_tokens(features, rule, 0.25, attention, torch.Generator().manual_seed(3))
    other_features, other_attention = features.clone(), attention.clone()
    other_features[1:] = torch.randn_like(other_features[1:])
    other_attention[1:] = torch.rand_like(other_attention[1:])
    again = select_visual_tokens(other_features, rule, 0.25, other_attention, torch.Generator().manual_seed(3))
    torch.testing.assert_close(chosen[0], again[0])
    if rule != "random":  # and only on it: alone, the example gets the same tokens
        alone = select_visual_tokens(features[:1], rule, 0.25, attention[:1])
        torch.testing.assert_close(chosen[0], alone[0])


def test_cls_attention_keeps_the_most_attended_patches():
    features, _ = batch(size=2, n=10)
    attention = torch.tensor([[0.0, 9, 1, 8, 2, 7, 3, 6, 4, 5], [5, 4, 3, 2, 1, 0, 9, 8, 7, 6]]) / 45
    kept = select_visual_tokens(features, "cls_attention", 0.3, attention)
    assert kept.tolist() == [[1, 3, 5], [6, 7, 8]]


def test_cls_attention_scores_read_the_cls_row_averaged_over_heads():
    probabilities = torch.zeros(1, 2, 4, 4)
    probabilities[0, 0, 0] = torch.tensor([0.1, 0.6, 0.2, 0.1])
    probabilities[0, 1, 0] = torch.tensor([0.1, 0.2, 0.2, 0.5])
    torch.testing.assert_close(cls_attention_scores(probabilities), torch.tensor([[0.4, 0.2, 0.3]]))


def test_dissimilarity_keeps_one_background_and_every_distinct_patch():
    background = torch.tensor([1.0, 0.0, 0.0, 0.0])
    features = background.repeat(1, 12, 1) + 0.01 * torch.randn(1, 12, 4, generator=torch.Generator().manual_seed(0))
    distinct = {3: [0.0, 1, 0, 0], 7: [0.0, 0, 1, 0], 10: [0.0, 0, 0, 1]}
    for index, vector in distinct.items():
        features[0, index] = torch.tensor(vector)
    kept = select_visual_tokens(features, "dissimilarity", 4 / 12).tolist()[0]
    assert set(distinct) <= set(kept) and len(kept) == 4


def test_none_keeps_everything_and_refuses_a_ratio():
    features, _ = batch()
    assert select_visual_tokens(features, "none", 1.0).tolist() == [list(range(16))] * 4
    with pytest.raises(ValueError, match="keep_ratio must be 1"):
        select_visual_tokens(features, "none", 0.5)


@pytest.mark.parametrize("keep", [0, -0.5, 1.01, float("nan"), float("inf"), "half", True])
def test_bad_keep_ratios_are_rejected(keep):
    features, attention = batch()
    with pytest.raises(ValueError, match="keep_ratio"):
        select_visual_tokens(features, "cls_attention", keep, attention)


def test_unknown_rule_is_rejected_with_the_list():
    features, _ = batch()
    with pytest.raises(ValueError, match=r"rule must be one of .*'cls_attention'.*got 'biggest'"):
        select_visual_tokens(features, "biggest", 0.5)


def test_cls_attention_fuse_keeps_the_top_patches_and_fuses_the_rest_into_centres():
    # 8 patches, keep 4: 3 by attention, 1 fused token (centre: the 4th by attention; members: the other 4)
    features = torch.zeros(1, 8, 2)
    features[0, :, 0] = torch.arange(8.0)
    features[0, :, 1] = 1.0
    attention = torch.tensor([[0.30, 0.25, 0.20, 0.10, 0.05, 0.04, 0.03, 0.03]])
    tokens = prune_visual_tokens(features, "cls_attention_fuse", 0.5, attention)
    assert tokens.shape == (1, 4, 2)
    torch.testing.assert_close(tokens[0, :3], features[0, :3])
    members = features[0, 4:].mean(dim=0)
    torch.testing.assert_close(tokens[0, 3], features[0, 3] + members)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), keep=st.floats(0.01, 1.0))
def test_cls_attention_fuse_gives_ceil_of_the_ratio_tokens_per_example(n, keep):
    features, attention = batch(size=3, n=n)
    tokens = prune_visual_tokens(features, "cls_attention_fuse", keep, attention)
    assert tokens.shape == (3, tokens_kept(n, keep), 8)
    if tokens_kept(n, keep) == n:  # nothing to fuse: every patch, in raster order
        torch.testing.assert_close(tokens, features)
    alone = prune_visual_tokens(features[1:2], "cls_attention_fuse", keep, attention[1:2])
    torch.testing.assert_close(tokens[1:2], alone)  # a function of the example alone


def test_a_fusing_rule_selects_no_indices():
    features, attention = batch()
    with pytest.raises(ValueError, match="fuses tokens"):
        select_visual_tokens(features, "cls_attention_fuse", 0.5, attention)
    assert "cls_attention_fuse" in registered_rules()
