"""Public corpora a proxy task trains on, by name: none of them is the private data or its generator.

``public_notes``: clinical-like records from other templates and vocabularies
(:mod:`dp_gym.data.public_notes`); ``python_docs``: paragraphs of CPython's help topics (shipped with
every Python); ``scene_captions``: captions of publicly generated scenes. Register more with
``PROXY_CORPORA.register(name, fn)``, ``fn(n, seed) -> list[str]``.
"""

from __future__ import annotations

import random

from dp_gym.data.public_corpus import public_paragraphs
from dp_gym.data.public_notes import public_notes
from dp_gym.utils.registry import Registry

PROXY_CORPORA: Registry = Registry("proxy corpus", callable_only=True)
#: the seed offset of proxy splits (public data: any seed is public)
PROXY_SEED = 50_000


def python_docs(n: int, seed: int) -> list[str]:
    """``n`` paragraphs of CPython's help topics, in a seeded order (repeated if ``n`` is larger)."""
    paragraphs = public_paragraphs()
    order = list(range(len(paragraphs)))
    random.Random(f"python-docs/{seed}").shuffle(order)
    return [paragraphs[order[i % len(order)]] for i in range(n)]


def scene_captions(n: int, seed: int) -> list[str]:
    """Captions of ``n`` publicly generated scenes."""
    from dp_gym.data.scenes import make_scenes

    return [scene.caption for scene in make_scenes(n, seed=PROXY_SEED + seed, image_size=8)]


PROXY_CORPORA.register("public_notes", public_notes)
PROXY_CORPORA.register("python_docs", python_docs)
PROXY_CORPORA.register("scene_captions", scene_captions)
