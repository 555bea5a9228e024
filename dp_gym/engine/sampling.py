"""Poisson sampling of private training examples (Opacus' sampler, on a secret generator)."""

from __future__ import annotations

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler


class PoissonBatches:
    """Poisson-sampled index batches over ``num_samples`` examples.

    Each example joins each batch independently with probability ``sample_rate`` (Opacus'
    ``UniformWithReplacementSampler``), which is what the sampled-Gaussian accountants assume.
    Batches can be empty. The generator of each batch comes from the caller: it must be secret
    (:class:`dp_gym.engine.randomness.EpisodeRandomness`), since a batch an adversary can rebuild
    removes the amplification by sampling that the accountant counts on.
    """

    def __init__(self, num_samples: int, sample_rate: float):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not (0 < sample_rate <= 1):
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.num_samples = num_samples
        self.sample_rate = sample_rate

    @property
    def expected_batch_size(self) -> float:
        return self.num_samples * self.sample_rate

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One batch of indices (possibly empty), drawn with ``generator``."""
        sampler = UniformWithReplacementSampler(num_samples=self.num_samples, sample_rate=self.sample_rate,
                                                generator=generator, steps=1)
        (indices,) = list(iter(sampler))
        return torch.as_tensor(indices, dtype=torch.long)
