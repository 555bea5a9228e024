"""Poisson sampling of private training examples (Opacus' sampler, seeded)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler


class PoissonBatches:
    """Infinite stream of Poisson-sampled index batches over ``num_samples`` examples.

    Each example joins each batch independently with probability ``sample_rate`` (Opacus'
    ``UniformWithReplacementSampler``), which is what the sampled-Gaussian accountants assume.
    Batches can be empty. The generator state is checkpointable.
    """

    def __init__(self, num_samples: int, sample_rate: float, seed: int = 0):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not (0 < sample_rate <= 1):
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.generator = torch.Generator().manual_seed(seed)
        self._sampler = UniformWithReplacementSampler(
            num_samples=num_samples, sample_rate=sample_rate, generator=self.generator, steps=1
        )

    @property
    def expected_batch_size(self) -> float:
        return self.num_samples * self.sample_rate

    def next(self) -> torch.Tensor:
        """One batch of indices (possibly empty)."""
        (indices,) = list(iter(self._sampler))
        return torch.as_tensor(indices, dtype=torch.long)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
