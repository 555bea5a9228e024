"""Generated textile patterns: a public image-caption corpus for the vision task's proxies.

Stripes, checks, dots and gradients in two colours, captioned with their own words ("narrow
vertical stripes of teal and beige.", "a checked weave of navy and pink."). Another generator, another
palette and other caption templates than the scenes of :mod:`dp_gym.data.scenes` (the private data
of ``dp_gym/TinyVision-v0``), as real public data would differ from a private set: a proxy that
trains on them never reads a private image or caption.
"""

from __future__ import annotations

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "teal": (0, 128, 128),
    "beige": (225, 210, 170),
    "navy": (20, 30, 100),
    "pink": (240, 150, 190),
    "olive": (120, 120, 30),
    "grey": (130, 130, 130),
    "maroon": (120, 20, 40),
    "mint": (170, 230, 190),
}
PATTERNS = ("stripes", "checks", "dots", "gradient")
#: the seed offset of the pattern corpus (public: any seed is public)
PATTERN_SEED = 70_000


def _pattern(kind: str, first: np.ndarray, second: np.ndarray, size: int, period: int, vertical: bool) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size]
    if kind == "stripes":
        choose = ((cols if vertical else rows) // period) % 2 == 0
    elif kind == "checks":
        choose = ((rows // period) + (cols // period)) % 2 == 0
    elif kind == "dots":
        centre = (period - 1) / 2
        choose = ((rows % period - centre) ** 2 + (cols % period - centre) ** 2) > (period / 3) ** 2
    elif kind == "gradient":
        weight = (cols if vertical else rows) / max(size - 1, 1)
        return (first[None, None] * (1 - weight[..., None]) + second[None, None] * weight[..., None]).round()
    else:
        raise ValueError(f"unknown pattern {kind!r}; known: {PATTERNS}")
    return np.where(choose[..., None], first[None, None], second[None, None])


def _caption(kind: str, first: str, second: str, period: int, vertical: bool) -> str:
    width = "narrow" if period <= 2 else "wide"
    direction = "vertical" if vertical else "horizontal"
    if kind == "stripes":
        return f"{width} {direction} stripes of {first} and {second}."
    if kind == "checks":
        return f"a {'fine' if period <= 2 else 'bold'} checked weave of {first} and {second}."
    if kind == "dots":
        return f"{second} dots on a {first} ground."
    return f"a {direction} fade from {first} to {second}."


def make_patterns(n: int, seed: int, image_size: int = 32) -> list[tuple[np.ndarray, str]]:
    """``n`` ``(image H x W x 3 uint8, caption)`` pairs, deterministic in ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(PATTERN_SEED + seed)
    names = list(PALETTE)
    pairs = []
    for _ in range(n):
        kind = PATTERNS[rng.integers(len(PATTERNS))]
        first, second = rng.choice(len(names), size=2, replace=False)
        period = int(rng.choice([2, max(3, image_size // 8)]))
        vertical = bool(rng.integers(2))
        image = _pattern(kind, np.array(PALETTE[names[first]], dtype=float), np.array(PALETTE[names[second]], dtype=float),
                         image_size, period, vertical).astype(np.uint8)
        pairs.append((image, _caption(kind, names[first], names[second], period, vertical)))
    return pairs
