"""Generated scenes: small RGB images of one to three coloured shapes on a plain background.

Most of each image is background, so most visual tokens are redundant: the case visual-token
pruning is for. Every scene comes with a caption that names its shapes, their colours and the
background, in a fixed order (left to right), so the caption is a function of the image.

Splits are declared by seed: the environment's private train split, the public validation split
and the public pre-training split of the vision encoder use disjoint seed ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Scene:
    """One image (``H x W x 3`` uint8), its caption and what is drawn, left to right."""

    image: np.ndarray
    caption: str
    background: str
    shapes: tuple[tuple[str, str], ...]  # (colour, shape)


def _mask(shape: str, size: int, image_size: int, top: int, left: int) -> np.ndarray:
    rows, cols = np.mgrid[0:image_size, 0:image_size]
    y, x = rows - top, cols - left
    inside = (y >= 0) & (y < size) & (x >= 0) & (x < size)
    if shape == "square":
        return inside
    if shape == "circle":
        radius = (size - 1) / 2
        return (y - radius) ** 2 + (x - radius) ** 2 <= radius**2 + 0.5
    if shape == "triangle":  # apex up: the row y spans half-width y/2 around the centre
        half = y / 2
        return inside & (np.abs(x - (size - 1) / 2) <= half + 0.5)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def caption_of(background: str, shapes: tuple[tuple[str, str], ...]) -> str:
    """"a red circle and a blue square on a green background." """
    things = [f"{_article(colour)} {colour} {shape}" for colour, shape in shapes]
    listed = things[0] if len(things) == 1 else ", ".join(things[:-1]) + " and " + things[-1]
    return f"{listed} on {_article(background)} {background} background."


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_scene(rng: np.random.Generator, image_size: int = 32) -> Scene:
    names = list(COLOURS)
    background = names[rng.integers(len(names))]
    count = int(rng.integers(1, 4))
    lane = image_size // count  # shapes sit in separate vertical lanes, so left-to-right is well defined
    drawn = []
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = COLOURS[background]
    for index in range(count):
        colour = names[rng.integers(len(names))]
        while colour == background:
            colour = names[rng.integers(len(names))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = int(rng.integers(max(4, lane // 2), max(5, min(lane, image_size // 2)) + 1))
        size = min(size, lane)
        left = index * lane + int(rng.integers(0, lane - size + 1))
        top = int(rng.integers(0, image_size - size + 1))
        image[_mask(shape, size, image_size, top, left)] = COLOURS[colour]
        drawn.append((colour, shape))
    shapes = tuple(drawn)
    return Scene(image=image, caption=caption_of(background, shapes), background=background, shapes=shapes)


def make_scenes(n: int, seed: int, image_size: int = 32) -> list[Scene]:
    """``n`` scenes, deterministic in ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    return [make_scene(rng, image_size) for _ in range(n)]


#: seed offsets of the splits (``seed`` is the task's data seed)
PRIVATE_SEED, PUBLIC_VALIDATION_SEED, PUBLIC_PRETRAINING_SEED = 3000, 4000, 5000
#: the seed offset of the public selection split (which iterate a run returns)
PUBLIC_SELECTION_SEED = 6000
