"""device / precision: validated with the field named, resolved on this machine, and bf16 autocast keeps
the DP arithmetic (norms, clipping, sums, noise) in fp32."""

import pytest
import torch

import dp_gym
from dp_gym.config import ConfigError, EnvConfig
from dp_gym.engine import DPUpdater, ParameterGroups
from dp_gym.utils.devices import resolve_device
from tests.conftest import micro_batch, micro_gpt2
from tests.engine.test_updater import per_sample_loss


@pytest.mark.parametrize(("field", "value", "message"), [
    ("device", "gpu", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ("device", 0, "device must be"),
    ("precision", "fp16", r"precision must be one of \['fp32', 'bf16'\]"),
])
def test_device_and_precision_are_validated_with_the_field_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        EnvConfig(**{field: value})


def test_auto_is_cuda_only_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="device is 'cuda' but torch sees no CUDA device"):
        resolve_device("cuda")


def run_updates(autocast: bool, clip: float = 0.05):
    model = micro_gpt2(tied=True)
    groups = ParameterGroups(model)
    updater = DPUpdater(model, torch.optim.SGD(model.parameters(), lr=1.0), groups, 5.0, sample_rate=0.1,
                        loss_fn=per_sample_loss, autocast=autocast, oracle=True)
    report = updater.step(micro_batch(), clip=clip, noise=0.0)
    return report


def test_bf16_autocast_keeps_the_dp_arithmetic_in_fp32():
    exact, autocast = run_updates(False), run_updates(True)
    for group in exact.noisy_update:
        assert autocast.noisy_update[group].dtype == torch.float32
        # clipped to the same C: every per-sample contribution is at most C, forward precision aside
        torch.testing.assert_close(autocast.noisy_update[group], exact.noisy_update[group], rtol=0.1, atol=2e-3)
    assert autocast.oracle["per_sample_norm_quantiles"].dtype.kind == "f"


def test_an_env_runs_with_an_explicit_cpu_device_and_bf16():
    env = dp_gym.make("dp_gym/TinyText-v0", task_kwargs={"n_train": 32, "n_val": 8}, max_updates=2, updates_per_step=1,
                      device="cpu", precision="bf16")
    env.reset(seed=0)
    _, reward, *_ = env.step(env.action_space.sample())
    assert reward == reward and env.unwrapped.run.device == torch.device("cpu")
