"""Controllers for dp-gym: heuristics, SB3 training, evaluation and comparison, online mode."""

from agents.heuristics import (
    AdaptiveQuantileController,
    Controller,
    DecayController,
    DualPrivController,
    RandomController,
    ScheduleController,
    VanillaController,
    make_controller,
    register_controller,
    registered_controllers,
)

__all__ = [
    "AdaptiveQuantileController",
    "Controller",
    "DecayController",
    "ScheduleController",
    "DualPrivController",
    "RandomController",
    "VanillaController",
    "make_controller",
    "register_controller",
    "registered_controllers",
]
