"""Per-record scores of a causal LM: the quantities every attack here ranks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dp_gym.tasks.text import per_token_losses


@torch.no_grad()
def record_log_likelihoods(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 64,
                           max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``(log_likelihood, tokens)`` per text: ``sum_t log p(x_{t+1} | x_{<=t})`` in nats, and the
    number of predicted tokens. The first token is not predicted (there is no BOS)."""
    was_training = model.training
    model.eval()
    totals, counts = [], []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start : start + batch_size], max_length=max_length, truncation=True,
                            padding="longest", return_tensors="pt")
        losses = per_token_losses(model, encoded["input_ids"], encoded["attention_mask"])
        totals.append(-losses.sum(dim=1).double().numpy())
        counts.append(encoded["attention_mask"][:, 1:].sum(dim=1).numpy())
    model.train(was_training)
    if not totals:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(totals), np.concatenate(counts)


def record_losses(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean next-token loss of each text (nats per token): the loss-threshold attack's score."""
    log_likelihood, tokens = record_log_likelihoods(model, tokenizer, texts, batch_size)
    return -log_likelihood / np.maximum(tokens, 1)
