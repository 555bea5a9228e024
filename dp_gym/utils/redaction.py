"""Keeping private records out of anything written to a file.

:func:`public_config` redacts every record list of a config before it is written (results files,
``run.json``); :func:`holds_records` says whether a mapping carries records at all (the Ray sweep
runner refuses such job arguments, because Tune writes them into its experiment folder).
"""

from __future__ import annotations

from typing import Any

#: task_kwargs keys that hold records (never written to a results file)
RECORD_KEYS_SUFFIX = "_records"


def public_config(data: Any) -> Any:
    """A copy of a config mapping (or overrides) that is safe to write into a shared file.

    Every ``*_records`` list (``train_records``, ``val_records``, ...) becomes
    ``{"count": n, "redacted": true}``: records are never written out. No fingerprint of the records
    is written either: under the adversary of DP (who knows every record but one), a deterministic
    hash of the data set tells which candidate the last record is. A run is identified by its
    results file, not by a hash of its data.
    """
    if isinstance(data, dict):
        clean = {}
        for key, value in data.items():
            if isinstance(key, str) and key.endswith(RECORD_KEYS_SUFFIX) and isinstance(value, (list, tuple)):
                clean[key] = {"count": len(value), "redacted": True}
            else:
                clean[key] = public_config(value)
        return clean
    if isinstance(data, (list, tuple)):
        return [public_config(item) for item in data]
    return data


def holds_records(data: Any) -> bool:
    """Whether ``data`` (a mapping, list or value) has a ``*_records`` list anywhere inside."""
    if isinstance(data, dict):
        return any((isinstance(key, str) and key.endswith(RECORD_KEYS_SUFFIX) and isinstance(value, (list, tuple)))
                   or holds_records(value) for key, value in data.items())
    if isinstance(data, (list, tuple)):
        return any(holds_records(item) for item in data)
    return False
