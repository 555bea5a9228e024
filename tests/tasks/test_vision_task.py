import math

import gymnasium as gym
import pytest
import torch
from opacus import GradSampleModule

import dp_gym
from dp_gym import validate_config
from dp_gym.config import ConfigError, EnvConfig
from dp_gym.engine.bookkeeping import BookkeepingGradSampleModule
from dp_gym.engine.grad_samplers import register_transformers_grad_samplers
from dp_gym.models.tiny_lm import TinyLMConfig
from dp_gym.models.tiny_vlm import IMAGE_TOKEN, TinyVLMConfig, ensure_tiny_vlm
from dp_gym.tasks.vision import VisionLanguageTask

MICRO = TinyVLMConfig(
    image_size=32, vision_hidden=32, vision_layers=1, vision_heads=2, pretrain_steps=3, pretrain_images=32, pretrain_batch_size=8,
    lm=TinyLMConfig(vocab_size=320, n_layer=1, n_embd=32, n_head=2, pretrain_steps=3, public_captions=50),
)


@pytest.fixture(scope="module")
def micro_vlm(tmp_path_factory):
    return ensure_tiny_vlm(MICRO, root=tmp_path_factory.mktemp("vlm-cache"))


def micro_task(path, rule="cls_attention", keep=0.5, dataset="scenes", n_select=4):
    return VisionLanguageTask(model=str(path), dataset=dataset, n_train=6, n_val=4, n_select=n_select,
                              token_pruning={"rule": rule, "keep_ratio": keep})


def test_the_saved_model_loads_through_from_pretrained(micro_vlm):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(micro_vlm)
    tokenizer = AutoTokenizer.from_pretrained(micro_vlm)
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id
    assert model.config.vision_config.image_size == 32 and model.config.vision_config.patch_size == 4
    assert ensure_tiny_vlm(MICRO, root=micro_vlm.parent) == micro_vlm  # cached, not rebuilt


def test_only_projector_lm_blocks_and_head_train(micro_vlm):
    from dp_gym.engine import ParameterGroups

    model = micro_task(micro_vlm).build_model()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert not any("vision_tower" in name or "wte" in name or "wpe" in name for name in trainable)
    assert ParameterGroups(model).names == ["projector", "model.language_model.h.0", "head"]


@pytest.mark.parametrize("keep, visual", [(1.0, 64), (0.5, 32), (0.25, 16), (0.1, 7)])
def test_the_language_model_sees_fewer_tokens(micro_vlm, keep, visual):
    task = micro_task(micro_vlm, rule="none" if keep == 1.0 else "cls_attention", keep=keep)
    model = task.build_model()
    batch = task.train_batch(torch.arange(3))
    lengths = []
    hook = model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, output: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    task.per_sample_loss(model, batch)
    hook.remove()
    assert task.visual_tokens == visual
    assert lengths == [visual + batch["input_ids"].shape[1]]


@pytest.mark.parametrize("rule", ["cls_attention", "cls_attention_fuse", "dissimilarity", "none"])
def test_per_sample_gradients_of_the_pruned_model_equal_a_per_example_loop(micro_vlm, rule):
    register_transformers_grad_samplers()
    task = micro_task(micro_vlm, rule=rule, keep=1.0 if rule == "none" else 0.25)
    model = task.build_model()
    batch = task.train_batch(torch.arange(4))
    reference = []
    for i in range(4):
        model.zero_grad()
        task.per_sample_loss(model, {k: v[i : i + 1] for k, v in batch.items()}).sum().backward()
        reference.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    model.zero_grad()
    hooked = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    assert hooked._module is model
    task.per_sample_loss(model, batch).sum().backward()  # the hooks sit on the model's submodules
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        for i in range(4):
            torch.testing.assert_close(parameter.grad_sample[i], reference[i][name], atol=1e-5, rtol=1e-4,
                                       msg=f"{name}, sample {i}")
    hooked.remove_hooks()
    model.zero_grad()
    # book-kept, with the batch gradients of book-kept weights skipped (the engine's pass after its first):
    # the projector reads cached features that need no gradient, so its output is where the pass ends
    bookkept = BookkeepingGradSampleModule(model)
    bookkept.confirm_usage()
    with bookkept.weight_gradients_skipped():
        task.per_sample_loss(model, batch).sum().backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and bookkept.is_bookkept(parameter):
            expected = torch.stack([reference[i][name].reshape(-1).norm() ** 2 for i in range(4)])
            torch.testing.assert_close(bookkept.squared_norms(parameter, 4), expected, rtol=1e-4, atol=1e-9,
                                       msg=name)


@pytest.mark.parametrize("rule", ["cls_attention", "cls_attention_fuse", "dissimilarity"])
def test_cached_vision_features_give_the_same_losses_and_gradients(micro_vlm, rule):
    cached = micro_task(micro_vlm, rule=rule)
    uncached = VisionLanguageTask(model=str(micro_vlm), n_train=6, n_val=4, cache_vision_features=False,
                                  token_pruning={"rule": rule, "keep_ratio": 0.5})
    assert cached.caches_vision_features and not uncached.caches_vision_features
    assert "vision_features" in cached.train_batch(torch.arange(2)) and "vision_features" not in uncached._train
    gradients = []
    for task in (cached, uncached):
        model = task.build_model()
        task.per_sample_loss(model, task.train_batch(torch.arange(6))).sum().backward()
        gradients.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        gradients.append(task.evaluate(model))
    torch.testing.assert_close(gradients[0], gradients[2], atol=1e-6, rtol=1e-5)
    assert gradients[1] == pytest.approx(gradients[3], rel=1e-6)
    trained_tower = VisionLanguageTask(model=str(micro_vlm), n_train=6, n_val=4, train_vision=True)
    assert not trained_tower.caches_vision_features  # a tower that changes cannot be cached
    other = cached.build_model()
    with torch.no_grad():
        next(other.model.vision_tower.parameters()).add_(0.01)
    with pytest.raises(ValueError, match="vision tower is not the one"):
        cached.evaluate(other)


def test_digits_captions_and_disjoint_splits(micro_vlm):
    task = micro_task(micro_vlm, dataset="digits")
    assert all(c.startswith("the digit is ") for c in task.train_captions + task.val_captions)
    pixels = task._train["pixel_values"]
    assert pixels.shape == (6, 3, 32, 32) and float(pixels.min()) >= -1 and float(pixels.max()) <= 1
    assert math.isfinite(task.evaluate(task.build_model()))


@pytest.mark.parametrize("dataset", ["scenes", "digits", "patterns"])
def test_the_public_selection_split_is_disjoint_from_training_and_validation(micro_vlm, dataset):
    task, plain = micro_task(micro_vlm, dataset=dataset), micro_task(micro_vlm, dataset=dataset, n_select=0)
    assert task.has_selection_split and not plain.has_selection_split
    assert torch.equal(task._train["pixel_values"], plain._train["pixel_values"])  # the same splits as without it
    assert torch.equal(task._val["pixel_values"], plain._val["pixel_values"])
    selection = task._selection["pixel_values"]
    assert selection.shape[0] == 4
    for split in (task._train["pixel_values"], task._val["pixel_values"]):
        assert not any(torch.equal(image, other) for image in selection for other in split) or dataset == "patterns"
    assert math.isfinite(task.evaluate_selection(task.build_model()))
    with pytest.raises(NotImplementedError, match="n_select"):
        plain.evaluate_selection(plain.build_model())


@pytest.mark.parametrize("pruning, field", [
    ({"rule": "cls_attention", "keep_ratio": 0}, "token_pruning.keep_ratio"),
    ({"rule": "cls_attention", "keep_ratio": 1.5}, "token_pruning.keep_ratio"),
    ({"rule": "cls_attention", "keep_ratio": float("nan")}, "token_pruning.keep_ratio"),
    ({"rule": "biggest", "keep_ratio": 0.5}, "token_pruning.rule"),
    ({"rule": "none", "keep_ratio": 0.5}, "token_pruning.keep_ratio"),
    ({"rule": "random", "ratio": 0.5}, "unknown keys"),
    ("half", "token_pruning must be a mapping"),
])
def test_bad_token_pruning_is_rejected_by_field(pruning, field):
    with pytest.raises(ConfigError, match=field):  # the shape by EnvConfig, the rule name by validate_config
        validate_config(EnvConfig(task="vision", token_pruning=pruning))


def test_token_pruning_on_a_text_task_is_rejected():
    with pytest.raises(ConfigError, match="token_pruning: task 'text' has no visual tokens"):
        validate_config(EnvConfig(task="text", token_pruning={"rule": "random", "keep_ratio": 0.5}))


@pytest.mark.parametrize("env_id", ["dp_gym/TinyVision-v0", "dp_gym/TinyDigits-v0"])
def test_vision_episode_stays_within_budget(env_id):
    dataset = "scenes" if "Vision" in env_id else "digits"
    env = dp_gym.make(env_id, max_updates=8, updates_per_step=4, epsilon=1.0,
                      task_kwargs={"dataset": dataset, "n_train": 64, "n_val": 8})
    assert env.unwrapped.task.describe()["token_pruning"] == {"rule": "cls_attention", "keep_ratio": 0.5}
    env.action_space.seed(0)
    observation, info = env.reset(seed=0)
    done = False
    while not done:
        observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(observation) and math.isfinite(reward)
        done = terminated or truncated
    assert 0 < info["epsilon"] <= 1.0 and info["privacy_valid"]
    assert isinstance(env, gym.Env)


def test_too_many_tokens_for_the_language_model_is_a_clear_error(micro_vlm):
    with pytest.raises(ValueError, match="64 visual tokens \\+ max_text_length 100 exceed the language model's 128"):
        VisionLanguageTask(model=str(micro_vlm), n_train=4, n_val=2, max_text_length=100)


@pytest.fixture(scope="module")
def llava_576(tmp_path_factory):
    from dp_gym.models.random_checkpoints import save_random_checkpoint

    return save_random_checkpoint("llava", tmp_path_factory.mktemp("llava") / "llava", hidden=32, layers=1,
                                  positions=640)


@pytest.mark.parametrize(("keep", "visual"), [(1.0, 576), (0.25, 144)])
def test_a_llava_1_5_layout_with_lora_prunes_576_patch_tokens_and_trains_only_lm_adapters(llava_576, keep, visual):
    rule = "none" if keep == 1.0 else "cls_attention_fuse"
    task = VisionLanguageTask(model={"path": str(llava_576), "lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]}},
                              n_train=3, n_val=2, max_text_length=16, token_pruning={"rule": rule, "keep_ratio": keep})
    assert task.image_size == 336 and task.visual_tokens == visual
    model = task.build_model()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in name and "language_model" in name for name in trainable)
    module = BookkeepingGradSampleModule(model)
    batch = task.train_batch(torch.arange(3))
    losses = task.per_sample_loss(model, batch)
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    losses.sum().backward()
    assert all(module.squared_norms(p, 3).shape == (3,) for p in model.parameters() if p.requires_grad)


def test_evaluating_never_draws_the_training_updates_random_pruning(micro_vlm):
    """The ``random`` rule's draws of training forwards do not depend on how often a run is
    evaluated (``returned_model: best_public`` evaluates a selection split too), and a split
    scores one model the same every time."""
    task = micro_task(micro_vlm, rule="random")
    model = task.build_model()
    assert task.evaluate(model) == task.evaluate(model)
    before = task._random.get_state()
    task.evaluate_selection(model)
    task.evaluate(model)
    assert torch.equal(task._random.get_state(), before)
