import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dp_gym.data import clinical_notes, make_canaries, private_train_records, public_paragraphs
from dp_gym.models.tiny_lm import TinyLMConfig, build_tiny_lm, ensure_tiny_lm, train_public_tokenizer
from dp_gym.tasks import TextTask, create_task, perplexity, register_task, registered_tasks, resolve_task
from dp_gym.tasks.base import Task


def test_private_data_is_deterministic_and_disjoint_from_validation():
    assert clinical_notes(20, seed=1) == clinical_notes(20, seed=1)
    assert not set(clinical_notes(200, seed=1000)) & set(clinical_notes(50, seed=2000))


def test_canaries_are_inserted_k_times():
    canaries = make_canaries(2, repeats=7, seed=0)
    records = private_train_records(30, seed=0, canaries=canaries)
    assert len(records) == 30 + 14
    for canary in canaries:
        assert records.count(canary.text) == 7
        assert len(canary.secret) == 6 and canary.secret_space_size == 10**6


def test_public_corpus_ships_with_python():
    paragraphs = public_paragraphs()
    assert len(paragraphs) > 1000 and all(40 <= len(p) <= 400 for p in paragraphs)
    assert not any("Dx:" in p for p in paragraphs)


def test_tiny_lm_is_built_cached_and_loads_with_from_pretrained(tmp_path):
    config = TinyLMConfig(vocab_size=300, n_layer=1, n_embd=16, n_head=2, pretrain_steps=3, pretrain_batch_size=4)
    path = ensure_tiny_lm(config, root=tmp_path)
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
    stamp = (path / "config.json").stat().st_mtime_ns
    assert ensure_tiny_lm(config, root=tmp_path) == path  # cache hit: not rebuilt
    assert (path / "config.json").stat().st_mtime_ns == stamp
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.n_layer == 1


def test_text_task_on_any_saved_causal_lm(tmp_path):
    """The same code path loads a user's checkpoint folder (here: a tiny model saved to disk)."""
    tokenizer = train_public_tokenizer(300)
    model = build_tiny_lm(TinyLMConfig(n_layer=1, n_embd=16, n_head=2), vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    task = TextTask(model=str(tmp_path), n_train=10, n_val=4, max_length=32)
    built = task.build_model()
    batch = task.train_batch(torch.tensor([0, 3, 5]))
    losses = task.per_sample_loss(built, batch)
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    # an untrained model is near-uniform over the vocabulary
    assert task.evaluate(built) == pytest.approx(math.log(len(tokenizer)), rel=0.15)


@pytest.fixture(scope="module")
def default_task():
    return TextTask(n_train=64, n_val=16)


def test_default_tiny_model_is_pretrained_on_public_text(default_task):
    model = default_task.build_model()
    assert 300_000 < sum(p.numel() for p in model.parameters()) < 700_000
    # pre-training beats a uniform guess by a wide margin on the (unseen) private distribution
    assert default_task.evaluate(model) < 0.8 * math.log(model.config.vocab_size)


def test_build_model_resets_to_the_base_weights(default_task):
    first = default_task.build_model()
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.add_(1.0)
    second = default_task.build_model()
    assert default_task.evaluate(second) < default_task.evaluate(first)


def test_per_sample_loss_matches_per_example(default_task):
    model = default_task.build_model()
    batch = default_task.train_batch(torch.arange(4))
    together = default_task.per_sample_loss(model, batch)
    alone = torch.cat([default_task.per_sample_loss(model, default_task.train_batch(torch.tensor([i])))
                       for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_task_registry():
    assert "text" in registered_tasks()
    assert resolve_task("dp_gym.tasks.text:TextTask") is TextTask

    class Mine(TextTask):
        pass

    register_task("mine-test", Mine)
    assert resolve_task("mine-test") is Mine
    with pytest.raises(ValueError, match="already registered"):
        register_task("mine-test", TextTask)
    with pytest.raises(ValueError, match="unknown task 'nope'.*registered"):
        create_task("nope")
    with pytest.raises(ValueError, match="does not import"):
        resolve_task("no_such_module:Thing")
    with pytest.raises(ValueError, match="not a subclass"):
        resolve_task("math:sqrt")


def test_perplexity():
    assert perplexity(0.0) == 1.0 and perplexity(math.log(7)) == pytest.approx(7)
    assert issubclass(TextTask, Task)
