"""Every model load is local-only: a wrong path is one line naming it, and nothing reaches a hub."""

import json
import socket
import time

import pytest

from dp_gym.cli import main
from dp_gym.models.local import ModelPathError, load_local_tokenizer
from dp_gym.tasks import create_task


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("dp-gym tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("task", ["text", "vision"])
def test_an_absolute_path_that_does_not_exist_is_named(task, no_network):
    with pytest.raises(ModelPathError, match="model path '/no/such/model' is not a local folder"):
        create_task(task, model="/no/such/model")


def test_a_bare_hub_name_is_refused_at_once_without_the_network(no_network):
    started = time.perf_counter()
    with pytest.raises(ModelPathError, match="model path 'gpt2' is not a local folder.*never downloads"):
        create_task("text", model="gpt2")
    assert time.perf_counter() - started < 5.0  # no lookup, no retries


def test_an_empty_folder_says_what_is_missing(tmp_path, no_network):
    with pytest.raises(ModelPathError, match=f"model folder {tmp_path} has no config.json"):
        create_task("text", model=str(tmp_path))


def test_a_model_folder_without_a_tokenizer_says_so(tmp_path, no_network):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelPathError, match="has no tokenizer"):
        load_local_tokenizer(tmp_path)


def test_the_cli_prints_one_line_for_a_wrong_model_path(capsys, no_network):
    overrides = json.dumps({"task_kwargs": {"model": "/no/such/model"}})
    code = main(["compare", "--controllers", "vanilla", "--seeds", "1", "--env-overrides", overrides])
    stderr = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(stderr) == 1
    assert "model path '/no/such/model' is not a local folder" in stderr[0]
