import os

import pytest
import torch

from dp_gym.utils.registry import Registry
from dp_gym.utils.threads import THREADS_ENV, configure_threads


def test_threads_are_set_explicitly_from_the_argument_or_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv(THREADS_ENV, "2")
        assert configure_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv(THREADS_ENV, "many")
        with pytest.raises(ValueError, match=r"\$DP_GYM_THREADS must be a positive integer, got 'many'"):
            configure_threads()
        with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_a_registry_names_what_is_allowed_and_resolves_import_paths():
    registry = Registry("widget", callable_only=True)
    registry.register("square", lambda x: x * x)
    assert registry.get("square")(3) == 9 and registry.get("math:sqrt")(9) == 3.0
    with pytest.raises(ValueError, match=r"unknown widget 'cube'; registered: \['square'\] or 'module:attribute'"):
        registry.get("cube")
    with pytest.raises(ValueError, match="widget 'nope:thing' does not import"):
        registry.get("nope:thing")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("square", lambda x: x)
    with pytest.raises(ValueError, match="must be callable"):
        registry.register("two", 2)


def test_an_atomic_write_gets_the_mode_a_plain_write_would(tmp_path):
    import stat

    from dp_gym.utils import files

    saved = os.umask(0o022)
    files._default_mode.cache_clear()
    try:
        (tmp_path / "plain.json").write_text("{}")
        files.atomic_write_text(tmp_path / "atomic.json", "{}")
    finally:
        os.umask(saved)
        files._default_mode.cache_clear()
    plain, atomic = (stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("plain.json", "atomic.json"))
    assert atomic == plain == 0o644  # mkstemp alone gives 0o600
