"""Deterministic corpora: the private clinical notes (with canaries) and the public corpus."""

from dp_gym.data.clinical_notes import (
    Canary,
    clinical_notes,
    make_canaries,
    private_train_records,
)
from dp_gym.data.public_corpus import public_paragraphs

__all__ = ["Canary", "clinical_notes", "make_canaries", "private_train_records", "public_paragraphs"]
