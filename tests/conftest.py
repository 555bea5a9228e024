import pytest
import torch

from dp_gym.models.tiny_lm import TinyLMConfig, build_tiny_lm


def micro_gpt2(tied: bool = True, seed: int = 0):
    """A 1-block GPT-2 with random weights: small enough for per-example loops."""
    config = TinyLMConfig(vocab_size=50, n_layer=1, n_embd=16, n_head=2, n_positions=16,
                          tie_word_embeddings=tied, seed=seed)
    model = build_tiny_lm(config)
    model.train()
    return model


def micro_batch(size: int = 5, length: int = 12, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 50, (size, length), generator=generator)
    attention_mask = torch.ones(size, length, dtype=torch.long)
    for row in range(size):  # ragged: right padding of varying length
        attention_mask[row, length - row:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture
def micro_model():
    return micro_gpt2()


#: presets whose checkpoint path comes from $DP_GYM_MODEL_PATH, and the architecture tests give them
REAL_MODEL_PRESETS = {"dp_gym/GPT2LoRA-v0": "gpt2", "dp_gym/LlamaLoRA-v0": "llama"}


@pytest.fixture(scope="session")
def local_checkpoints(tmp_path_factory):
    """Locally built checkpoints of the real architectures: GPT-2 is the cached tiny default (a
    publicly pre-trained GPT2LMHeadModel), Llama a small random-init one with a public tokenizer."""
    from dp_gym.models.random_checkpoints import save_random_checkpoint
    from dp_gym.models.tiny_lm import ensure_tiny_lm

    root = tmp_path_factory.mktemp("local-checkpoints")
    return {"gpt2": ensure_tiny_lm(), "llama": save_random_checkpoint("llama", root / "llama", hidden=32, layers=2)}


@pytest.fixture
def model_path_for(local_checkpoints, monkeypatch):
    """``model_path_for(env_id)`` sets $DP_GYM_MODEL_PATH for a real-model preset (no-op for others)."""
    from dp_gym.models.spec import MODEL_PATH_VARIABLE

    def point(env_id: str) -> None:
        if env_id in REAL_MODEL_PRESETS:
            monkeypatch.setenv(MODEL_PATH_VARIABLE, str(local_checkpoints[REAL_MODEL_PRESETS[env_id]]))

    return point
