"""Local-only loading: dp-gym never reaches a model hub.

Every model, configuration and tokenizer dp-gym loads goes through here: the path must be a local
``save_pretrained`` folder, and ``from_pretrained`` runs with ``local_files_only=True``, so a bare
name such as ``gpt2`` is refused at once instead of being looked up on a hub. Each failure is one
line naming the path and what is missing there (:class:`ModelPathError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: files of which a loadable tokenizer folder has at least one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


class ModelPathError(FileNotFoundError):
    """A model path that is not a loadable local folder (the message names the path and what is missing)."""


def local_model_folder(path: str | Path) -> Path:
    """``path`` as a local ``save_pretrained`` folder (one with a ``config.json``).

    Raises:
        ModelPathError: when ``path`` is not a local folder, or has no ``config.json``.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelPathError(f"model path {str(path)!r} is not a local folder (dp-gym loads only local "
                             "save_pretrained folders and never downloads from a model hub)")
    if not (folder / "config.json").is_file():
        raise ModelPathError(f"model folder {folder} has no config.json (not a save_pretrained folder)")
    return folder


def load_local(loader: Any, path: str | Path, **kwargs: Any):
    """``loader.from_pretrained(path, local_files_only=True, **kwargs)`` on a checked local folder
    (``loader``: ``AutoModelForCausalLM``, ``AutoConfig``, ``LlavaForConditionalGeneration``, ...)."""
    return loader.from_pretrained(local_model_folder(path), local_files_only=True, **kwargs)


def load_local_tokenizer(path: str | Path):
    """The tokenizer saved in the local folder ``path``.

    Raises:
        ModelPathError: as :func:`local_model_folder`, or when the folder holds no tokenizer files.
    """
    from transformers import AutoTokenizer

    folder = local_model_folder(path)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelPathError(f"model folder {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


__all__ = ["ModelPathError", "TOKENIZER_FILES", "load_local", "load_local_tokenizer", "local_model_folder"]
