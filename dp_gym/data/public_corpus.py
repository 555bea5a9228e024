"""A public English corpus that ships with every CPython: the ``pydoc_data`` help topics.

It is written by people (the Python documentation), is not the private distribution, and is on
every machine, so the tiny default model can be pre-trained on it without a download.
"""

from __future__ import annotations

import re


def public_paragraphs(min_chars: int = 40, max_chars: int = 400) -> list[str]:
    """Paragraphs of the Python help topics, whitespace-normalized, in a fixed order."""
    from pydoc_data.topics import topics

    paragraphs: list[str] = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(block.split())
            if len(text) < min_chars:
                continue
            while len(text) > max_chars:
                cut = text.rfind(" ", 0, max_chars)
                cut = cut if cut > min_chars else max_chars
                paragraphs.append(text[:cut])
                text = text[cut:].lstrip()
            if len(text) >= min_chars:
                paragraphs.append(text)
    return paragraphs
