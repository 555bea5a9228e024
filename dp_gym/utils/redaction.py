"""Keeping private records out of anything written to a file.

:func:`public_config` redacts every record list of a config before it is written (results files,
``run.json``); :func:`holds_records` says whether a mapping carries records at all (the Ray sweep
runner refuses such job arguments, because Tune writes them into its experiment folder);
:func:`file_safe_error` is the line a results file may hold for an exception, whose message may
quote the data it was processing.
"""

from __future__ import annotations

import sys
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


#: top-level packages whose exception messages dp-gym wrote (they name fields and public values)
OWN_PACKAGES = ("dp_gym", "agents")
#: what a results file says instead of a foreign exception's message
WITHHELD = "(its message is kept out of results files: it may quote data; see stderr)"


class JobError(RuntimeError):
    """A job raised; the message is its :func:`file_safe_error` line (how a Ray trial fails)."""


def _unwrapped(error: BaseException) -> BaseException:
    while getattr(error, "cause", None) is not None:  # Ray wraps a trial's exception
        error = error.cause
    return error


def error_line(error: BaseException) -> str:
    """An exception as one line, ``Type: first line of its message`` (for the console)."""
    cause = _unwrapped(error)
    if isinstance(cause, JobError):
        return str(cause)
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


def file_safe_error(error: BaseException) -> str:
    """The line a results file may hold for ``error``.

    Private records never appear in a results file, and an exception's message may quote the data
    it was processing (a tokenizer's, a user reward's or controller's error). dp-gym's own
    exceptions (:data:`OWN_PACKAGES`) name config fields and public values only, so their line is
    kept; any other exception is named by its type only, and its message goes to the console
    (stderr, see :func:`report_contained`), never to a file.
    """
    cause = _unwrapped(error)
    if type(cause).__module__.split(".")[0] in OWN_PACKAGES:  # JobError too: it carries a safe line
        return error_line(cause)
    return f"{type(cause).__name__} {WITHHELD}"


def report_contained(where: str, error: BaseException) -> str:
    """Print a contained error's full line to stderr; return its :func:`file_safe_error` line."""
    print(f"{where}: raised {error_line(error)}", file=sys.stderr, flush=True)
    return file_safe_error(error)
