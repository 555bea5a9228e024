"""Per-sample gradients of real architectures equal a per-example loop: GPT-2 (``Conv1D``), Llama and
Mistral (``nn.Linear``, ``LlamaRMSNorm``, rotary attention, grouped-query attention), full fine-tuning
and LoRA, in both per-sample modes. Checked through the whole engine: the released clipped sum
``sum_i g_i min(1, C / ||g_i||)`` per group, with no noise, against one backward pass per example."""

import pytest
import torch

from dp_gym.engine import DPUpdater, ParameterGroups
from dp_gym.models.local import load_local
from dp_gym.models.lora import adapter_parameter_names, apply_lora
from dp_gym.models.random_checkpoints import save_random_checkpoint
from dp_gym.models.spec import LoraSpec
from tests.engine.test_updater import per_sample_loss

ARCHITECTURES = ("gpt2", "llama", "mistral")
LORA_TARGETS = {"gpt2": ("c_attn", "c_proj", "c_fc"), "llama": ("q_proj", "v_proj", "gate_proj", "down_proj"),
                "mistral": ("q_proj", "k_proj", "o_proj", "up_proj")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: save_random_checkpoint(arch, root / arch, vocab_size=300, hidden=32, layers=2, heads=4,
                                         kv_heads=2, positions=64) for arch in ARCHITECTURES}


def load(path):
    from transformers import AutoModelForCausalLM

    model = load_local(AutoModelForCausalLM, path).train()
    return model


def batch_with_repeats(vocab: int, size: int = 4, length: int = 10, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab, (size, length), generator=generator)
    input_ids[:, 5] = input_ids[:, 2]  # a token repeated within each record
    input_ids[1, 3] = 0  # the padding id inside a record (a padding_idx row gets no gradient)
    attention_mask = torch.ones(size, length, dtype=torch.long)
    attention_mask[2, 7:] = 0  # right padding
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def randomize_lora_b(model):
    """peft starts lora_B at zero (so lora_A's gradient is zero): make every gradient non-trivial."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def engine_clipped_sums(model, batch, clip: float, per_sample: str):
    groups = ParameterGroups(model, "per_layer")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    updater = DPUpdater(model, optimizer, groups, 1.0, sample_rate=0.1, loss_fn=per_sample_loss,
                        per_sample=per_sample)
    first = updater.step(batch, clip=clip, noise=0.0)  # lr 0: the weights stay; this pass checks usage
    report = updater.step(batch, clip=clip, noise=0.0)  # book-kept weights get no .grad from here on
    for group in groups:
        torch.testing.assert_close(report.noisy_update[group], first.noisy_update[group])
    updater.module.remove_hooks()
    return {group: report.noisy_update[group] for group in groups}, groups


def loop_clipped_sums(model, batch, groups, clip: float):
    size = batch["input_ids"].shape[0]
    sums = {group: torch.zeros(groups.numel(group)) for group in groups}
    for i in range(size):
        model.zero_grad()
        per_sample_loss(model, {k: v[i : i + 1] for k, v in batch.items()}).sum().backward()
        for group in groups:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                              for p in groups.parameters(group)])
            sums[group] += flat * min(1.0, clip / (float(flat.norm()) + 1e-6))
    model.zero_grad()
    return sums


def assert_engine_equals_loop(model, batch, per_sample, clip=0.05):
    reference_model = model
    released, groups = engine_clipped_sums(model, batch, clip, per_sample)
    expected = loop_clipped_sums(reference_model, batch, groups, clip)
    for group in groups:
        assert float(expected[group].norm()) > 0, group
        torch.testing.assert_close(released[group], expected[group], rtol=2e-4, atol=2e-6, msg=group)


@pytest.mark.parametrize("per_sample", ["bookkeeping", "opacus"])
@pytest.mark.parametrize("architecture", ["llama", "mistral"])
def test_full_fine_tuning_of_rmsnorm_rotary_models_equals_a_per_example_loop(checkpoints, architecture, per_sample):
    model = load(checkpoints[architecture])
    names = [name for name, _ in model.named_parameters()]
    assert any("norm" in name for name in names) and not model.config.tie_word_embeddings
    # the embedding's padding row (token 0) has no gradient in the loop: the engine must agree
    frozen_embedding = model.get_input_embeddings()
    assert frozen_embedding.padding_idx == 0
    assert_engine_equals_loop(model, batch_with_repeats(model.config.vocab_size), per_sample)


@pytest.mark.parametrize("per_sample", ["bookkeeping", "opacus"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_per_sample_gradients_equal_a_per_example_loop(checkpoints, architecture, per_sample):
    model = apply_lora(load(checkpoints[architecture]), LoraSpec(r=4, alpha=8, target_modules=LORA_TARGETS[architecture]))
    randomize_lora_b(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and trainable == adapter_parameter_names(model)
    assert_engine_equals_loop(model, batch_with_repeats(model.config.vocab_size), per_sample)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_every_adapter_weight_moves_and_no_frozen_weight_does(checkpoints, architecture):
    model = apply_lora(load(checkpoints[architecture]), LoraSpec(r=4, dropout=0.1, target_modules=LORA_TARGETS[architecture]))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = ParameterGroups(model, "per_adapter")
    assert all(".lora_" not in group for group in groups) and len(groups) == len(adapter_parameter_names(model)) // 2
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    updater = DPUpdater(model, optimizer, groups, 4.0, sample_rate=0.1, loss_fn=per_sample_loss)
    batch = batch_with_repeats(model.config.vocab_size)
    for _ in range(2):  # lora_B starts at 0, so lora_A's first gradient is 0; the noise moves it anyway
        updater.step(batch, clip=1.0, noise=0.5)
    for name, parameter in model.named_parameters():
        moved = not torch.equal(parameter.detach(), before[name])
        assert moved == (".lora_" in name), name


def test_lora_dropout_keeps_examples_apart(checkpoints):
    """With dropout on, changing one record changes no other record's per-sample gradient (same masks)."""
    model = apply_lora(load(checkpoints["gpt2"]), LoraSpec(r=4, dropout=0.5, target_modules=("c_attn",)))
    randomize_lora_b(model)
    batch = batch_with_repeats(model.config.vocab_size)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][3, :4] = torch.tensor([7, 8, 9, 10])
    sums = []
    for data in (batch, changed):
        per_example = []
        for i in range(4):  # one example's clipped sum at a time, the masks drawn for the whole batch
            torch.manual_seed(11)
            groups = ParameterGroups(model, "global")
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
            updater = DPUpdater(model, optimizer, groups, 1.0, sample_rate=0.1,
                                loss_fn=lambda m, b, i=i: per_sample_loss(m, b) * (torch.arange(4) == i))
            per_example.append(updater.step(data, clip=1e6, noise=0.0).noisy_update["all"])
            updater.module.remove_hooks()
        sums.append(per_example)
    for i in range(3):
        torch.testing.assert_close(sums[0][i], sums[1][i])
    assert not torch.allclose(sums[0][3], sums[1][3])


def test_a_dropout_that_could_mix_examples_is_refused(checkpoints):
    from dp_gym.models.lora import check_per_example_dropout

    model = apply_lora(load(checkpoints["gpt2"]), LoraSpec(r=2, dropout=0.1, target_modules=("c_attn",)))
    model.transformer.h[0].attn.c_attn.lora_dropout["default"] = torch.nn.Dropout1d(0.1)
    with pytest.raises(ValueError, match="lora_dropout.default is Dropout1d"):
        check_per_example_dropout(model)


def test_unknown_target_modules_name_the_field(checkpoints):
    with pytest.raises(ValueError, match=r"task_kwargs.model.lora.target_modules \['nope'\] match no layer"):
        apply_lora(load(checkpoints["llama"]), LoraSpec(target_modules=("nope",)))


def test_peft_default_targets_are_used_when_none_are_given(checkpoints):
    model = apply_lora(load(checkpoints["llama"]), LoraSpec(r=2))
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in adapter_parameter_names(model)}
    assert adapted == {"q_proj", "v_proj"}
