"""Secret randomness: the DP noise and the Poisson sampling.

The randomness that protects privacy must be unknown to the adversary. If it were a function of
anything public (a config, a seed passed to ``reset``, a file dp-gym writes), anyone could
regenerate the batch and the noise of every update, subtract the noise from the released sums
and recover the exact clipped sums: the effective epsilon would be infinite.

So every episode gets a fresh 256-bit secret from the operating system's CSPRNG (``secrets``),
held in memory only: never logged, never pickled into a checkpoint. A reproducible run is possible
only through a **secret key** that the user supplies and keeps (``secret_key=`` or the
``DP_GYM_SECRET_KEY`` environment variable): the episode secret is then
``HMAC-SHA256(key, "episode/<context>/<public seed>/<stream>")``, where the context is a digest of the
run's whole configuration (so runs of other configs never share noise) and the stream names what
runs the episode (the command, the controller, the grid point). Results record that a key was used,
never the key. Whoever holds the key and the public seed can regenerate the noise, so keep the key
as you keep the data; and never release two runs that share key, configuration, seed and stream
but not their actions: their releases would share noise.

From the episode secret, each update ``t`` and each use (``"sampling"``, ``"noise"``) gets its own
generator, seeded with 64 bits of ``HMAC-SHA256(secret, "<use>/<t>")``: streams never overlap,
and resuming at update ``t`` needs no generator state (with a key it re-derives the same streams;
without one it draws fresh secret noise, which is just as private).

``secure_mode`` seeds every generator with 64 fresh bits from ``os.urandom`` and draws Gaussian
noise with Opacus' floating-point-attack-resistant sampler (Opacus' ``secure_mode``; its own
secure generator needs ``torchcsprng``, which no longer builds for current PyTorch). It cannot be
combined with a key: like Opacus, it refuses reproducibility.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

import torch

#: the environment variable a secret key may come from
SECRET_KEY_ENV = "DP_GYM_SECRET_KEY"
#: ``model``: the model's own randomness in a training forward pass (LoRA dropout): not what protects
#: privacy, but drawn from the episode's streams so a keyed episode reproduces and the process's
#: global RNG (which an RL agent in the same process uses) is left as it was
STREAMS = ("sampling", "noise", "model")


class SecretKey:
    """A user's secret key; its value never appears in a repr, a log or a results file.

    Args:
        value: the key, as bytes or text (at least 16 bytes or characters: a short key could be
            guessed, and then so could the noise).

    Raises:
        ValueError: for a key that is too short.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes | str):
        raw = value.encode() if isinstance(value, str) else bytes(value)
        if len(raw) < 16:
            raise ValueError(f"a secret key must have at least 16 bytes, got {len(raw)}: a short key can be guessed")
        self._value = raw

    def derive(self, label: str) -> bytes:
        return hmac.new(self._value, label.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "SecretKey(<hidden>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self.derive("hash"))


def resolve_secret_key(key: SecretKey | bytes | str | None = None) -> SecretKey | None:
    """The key given, else the one in ``$DP_GYM_SECRET_KEY``, else None (fresh OS entropy)."""
    if isinstance(key, SecretKey):
        return key
    if key is not None:
        return SecretKey(key)
    from_environment = os.environ.get(SECRET_KEY_ENV)
    return SecretKey(from_environment) if from_environment else None


def _seed_from(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


class EpisodeRandomness:
    """The secret randomness of one episode: independent generators per (use, update).

    Args:
        key: the user's secret key, or None for fresh OS entropy (not reproducible).
        public_seed: the episode's public seed (used only together with a key).
        stream: a label that tells apart episodes run with the same key and seed on the same data
            (the controllers of a comparison, the points of a grid): two episodes must never share
            noise, or their difference cancels it.
        context: a digest of the run's configuration (see the module docstring).
        secure_mode: fresh OS entropy for every generator (see the module docstring).
        device: where the noise generators live (the noise is drawn on the model's device); the
            sampling generators stay on the CPU, where the Poisson sampler draws.

    Raises:
        ValueError: for ``secure_mode`` with a key.
    """

    def __init__(self, key: SecretKey | None = None, public_seed: int | None = None, stream: str = "",
                 secure_mode: bool = False, device: torch.device | str = "cpu", context: str = ""):
        if secure_mode and key is not None:
            raise ValueError("secure_mode draws from the OS CSPRNG and cannot be reproduced: drop the secret key "
                             f"(secret_key / ${SECRET_KEY_ENV}) or secure_mode")
        self.secure_mode = secure_mode
        self.device = torch.device(device)
        #: True when a key and a public seed make this episode's noise reproducible
        self.reproducible = key is not None and public_seed is not None
        if self.reproducible:
            self._secret = key.derive(f"episode/{context}/{int(public_seed)}/{stream}")
        else:
            self._secret = secrets.token_bytes(32)

    def seed(self, use: str, update: int) -> int:
        """The secret seed of ``use`` (``"sampling"``, ``"noise"`` or ``"model"``) at update ``update``."""
        if use not in STREAMS:
            raise ValueError(f"use must be one of {list(STREAMS)}, got {use!r}")
        if self.secure_mode:
            return _seed_from(os.urandom(8))
        return _seed_from(hmac.new(self._secret, f"{use}/{int(update)}".encode(), hashlib.sha256).digest())

    def generator(self, use: str, update: int) -> torch.Generator:
        """A fresh generator for ``use`` at update ``update`` (seeded by :meth:`seed`)."""
        device = self.device if use == "noise" else torch.device("cpu")
        return torch.Generator(device=device).manual_seed(self.seed(use, update))

    def __repr__(self) -> str:
        return f"EpisodeRandomness(reproducible={self.reproducible}, secure_mode={self.secure_mode})"

    def __getstate__(self):
        raise TypeError("EpisodeRandomness holds the episode's secret and is never pickled or checkpointed")


def fresh_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from OS entropy (for callers that supply none)."""
    return torch.Generator(device=torch.device(device)).manual_seed(_seed_from(secrets.token_bytes(8)))


#: tensors at least this large get their CPU noise drawn in parallel chunks (smaller ones in one draw)
PARALLEL_NOISE_MIN = 1 << 22
#: elements per chunk of a parallel draw (a chunk's buffer is all the extra memory a draw needs)
NOISE_CHUNK = 1 << 20


def add_gaussian_noise_(total: torch.Tensor, std: float, generator: torch.Generator,
                        secure_mode: bool = False) -> torch.Tensor:
    """``total += N(0, std^2 I)`` in place, every draw from ``generator`` (the update's secret noise
    generator); returns ``total``.

    Why not Opacus' ``_generate_noise`` alone: it draws the whole tensor from one generator, on one
    core, into a second tensor of the same size. Drawing 124M Gaussians that way (GPT-2-small, full
    fine-tuning) costs about a third of a non-private step on 2 CPU cores, and the extra tensor is
    the size of the group. So a large CPU tensor is drawn in chunks of ``NOISE_CHUNK`` elements, on
    torch's intra-op threads, each chunk from its own generator whose 63-bit seed is drawn from
    ``generator``: the chunk seeds are as secret as ``generator`` is, and the chunks are
    independent streams, so the sum is the same Gaussian mechanism. Small tensors, other devices and
    ``secure_mode`` (Opacus' floating-point-attack-resistant sampler) take Opacus' path unchanged.
    """
    threads = torch.get_num_threads()
    if secure_mode or total.device.type != "cpu" or threads < 2 or total.numel() < PARALLEL_NOISE_MIN \
            or not total.is_contiguous():
        from opacus.optimizers.optimizer import _generate_noise

        return total.add_(_generate_noise(std, total, generator, secure_mode))
    flat = total.view(-1)
    starts = range(0, flat.numel(), NOISE_CHUNK)
    seeds = torch.randint(0, 2**63 - 1, (len(starts),), generator=generator).tolist()

    def draw(job: tuple[int, int]) -> None:
        start, seed = job
        part = flat[start : start + NOISE_CHUNK]
        noise = torch.empty_like(part).normal_(0.0, std, generator=torch.Generator().manual_seed(seed))
        part.add_(noise)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(draw, zip(starts, seeds, strict=True)))
    return total
