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
