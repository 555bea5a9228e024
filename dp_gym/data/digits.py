"""scikit-learn's bundled hand-written digits (UCI optdigits, 1,797 images of 8x8) as captioned images.

A real data set that ships with a package, so nothing is downloaded. Each image is scaled to
``image_size`` (nearest neighbour) and repeated over three channels; its caption is
"the digit is seven." The split is fixed by ``seed``: a shuffled order whose first ``n_train``
images are the private split and whose last ``n_val`` images are declared public; a public
selection split (:func:`digit_selection`) comes from between the two.
"""

from __future__ import annotations

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_caption(label: int) -> str:
    return f"the digit is {DIGIT_NAMES[label]}."


def _to_rgb(image: np.ndarray, image_size: int) -> np.ndarray:
    scale = image_size // image.shape[0]
    if scale < 1 or image_size % image.shape[0]:
        raise ValueError(f"image_size must be a multiple of {image.shape[0]}, got {image_size}")
    grey = np.kron(image, np.ones((scale, scale))) * (255.0 / 16.0)
    return np.repeat(grey[..., None], 3, axis=2).round().astype(np.uint8)


def digit_splits(n_train: int, n_val: int, seed: int = 0, image_size: int = 32):
    """``(train, val)``: lists of ``(image H x W x 3 uint8, caption)``; disjoint."""
    from sklearn.datasets import load_digits

    data = load_digits()
    if n_train < 1 or n_val < 1 or n_train + n_val > len(data.target):
        raise ValueError(f"need 1 <= n_train, n_val and n_train + n_val <= {len(data.target)}, got {n_train} and {n_val}")
    order = np.random.default_rng(seed).permutation(len(data.target))
    pairs = [(_to_rgb(data.images[i], image_size), digit_caption(int(data.target[i]))) for i in order]
    return pairs[:n_train], pairs[-n_val:]


def digit_selection(n_train: int, n_val: int, n_select: int, seed: int = 0, image_size: int = 32):
    """The ``n_select`` images after the first ``n_train`` of :func:`digit_splits`' order (declared
    public, disjoint from both its splits), fewer when fewer are left between them."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    chosen = order[n_train:max(n_train, len(order) - n_val)][:max(n_select, 0)]
    return [(_to_rgb(data.images[i], image_size), digit_caption(int(data.target[i]))) for i in chosen]
