"""One DP update: per-sample grads -> per-group clip -> per-group noise -> prune -> optimizer."""

from dp_gym.engine.grad_samplers import register_transformers_grad_samplers
from dp_gym.engine.parameter_groups import STRATEGIES, ParameterGroups
from dp_gym.engine.sampling import PoissonBatches
from dp_gym.engine.updater import DPUpdater, StepReport, prune_smallest

__all__ = [
    "STRATEGIES",
    "DPUpdater",
    "ParameterGroups",
    "PoissonBatches",
    "StepReport",
    "prune_smallest",
    "register_transformers_grad_samplers",
]
